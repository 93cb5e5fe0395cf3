"""What a rate-limited answer looks like: 429 with Retry-After and the RateLimit-* headers
(draft-ietf-httpapi-ratelimit-headers), the limit's errorResponse headers and body when it
has them (as in Edge Stack). Pure."""

from __future__ import annotations

from edge.model import RateLimitRule
from edge.ratelimit.algorithm import Decision

DEFAULT_BODY = b"rate limited\n"


def limit_headers(decision: Decision) -> bytes:
    return (b"ratelimit-limit: %d\r\nratelimit-remaining: %d\r\nratelimit-reset: %d\r\n"
            % (decision.limit, decision.remaining, decision.reset))


def refusal(rule: RateLimitRule, decision: Decision) -> tuple[bytes, bytes, bytes]:
    """(extra header lines, body, content type) of the 429."""
    extra = [b"retry-after: %d\r\n" % decision.reset, limit_headers(decision)]
    content_type = b"text/plain"
    for h in rule.error_headers:
        if h.name == "content-type":
            content_type = h.value.encode("latin-1")
        else:
            extra.append(b"%b: %b\r\n" % (h.name.encode("latin-1"), h.value.encode("latin-1")))
    body = rule.error_body.encode() if rule.error_body is not None else DEFAULT_BODY
    return b"".join(extra), body, content_type


def injected(rules: list[RateLimitRule]) -> bytes:
    """The injectResponseHeaders of the limits an allowed request matched."""
    return b"".join(b"%b: %b\r\n" % (h.name.encode("latin-1"), h.value.encode("latin-1"))
                    for rule in rules for h in rule.inject_response_headers)
