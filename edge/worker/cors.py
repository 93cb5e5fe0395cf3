"""CORS, pure: a route's CorsPolicy served as Envoy's cors filter serves it.

Emissary puts a Mapping's `cors` (else the Module's) on the Envoy route as a CorsPolicy
(python/ambassador/ir/ircors.py, envoy/v3/v3route.py) and the cors filter first in the
chain; what that filter does (source/extensions/filters/http/cors/cors_filter.cc):

- a request without Origin (or with an empty one) is not a CORS request: nothing changes;
- the Origin is allowed when it equals one of the policy's origins, or any when one of
  them is "*" (Envoy's `allow_origin->match("*")`); the comparison is exact;
- a preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed
  origin is answered 200 here: allow-origin (the request's origin), allow-credentials:
  true when set, allow-methods (the request's method when "*"), allow-headers (the
  requested headers when "*"), max-age. A preflight from an origin not allowed goes on to
  the upstream untouched (forward_not_matching_preflights, true by default, which Emissary
  never sets);
- any other request from an allowed origin is proxied and its response gets
  allow-origin (the request's origin), allow-credentials: true when set, and
  expose-headers when set. From an origin not allowed, the response is left as it is.

plan() calls these only when the route's target has a policy and the request an Origin,
so a route without CORS pays one attribute check. Each policy's header bytes are built
once, on first use, and kept by the policy's identity (a table's policies live as long as
the table; the cache is bounded).
"""

from __future__ import annotations

from edge.model import CorsPolicy
from edge.worker import plan as _plan  # LocalReply (plan imports this module: by attribute)

_CACHE_MAX = 4096


class _Wire:
    """A CorsPolicy as header bytes."""

    __slots__ = ("policy", "any", "origins", "credentials", "methods", "headers", "max_age", "response_tail")

    def __init__(self, policy: CorsPolicy):
        self.policy = policy  # held, so that its id is never reused while this entry lives
        self.any = "*" in policy.origins
        self.origins = frozenset(o.encode("latin-1") for o in policy.origins)
        self.credentials = b"access-control-allow-credentials: true\r\n" if policy.credentials else b""
        # None: echo what the request asked for ("*"); b"": not sent
        self.methods = None if policy.methods == "*" else _line(b"access-control-allow-methods", policy.methods)
        self.headers = None if policy.headers == "*" else _line(b"access-control-allow-headers", policy.headers)
        self.max_age = _line(b"access-control-max-age", policy.max_age)
        self.response_tail = self.credentials + _line(b"access-control-expose-headers", policy.exposed_headers)

    def allows(self, origin: bytes) -> bool:
        return self.any or origin in self.origins


def _line(name: bytes, value: str) -> bytes:
    return b"%b: %b\r\n" % (name, value.encode("latin-1")) if value else b""


_wires: dict[int, _Wire] = {}


def _wire(policy: CorsPolicy) -> _Wire:
    wire = _wires.get(id(policy))
    if wire is None or wire.policy is not policy:
        if len(_wires) >= _CACHE_MAX:
            _wires.clear()  # tables come and go: start over rather than grow
        wire = _wires[id(policy)] = _Wire(policy)
    return wire


def origin_of(headers: list) -> bytes | None:
    """The request's Origin, or None when it has none or an empty one (not CORS)."""
    for name, value in headers:
        if name == b"origin":
            return value or None
    return None


def preflight(policy: CorsPolicy, headers: list, origin: bytes | None = None):
    """The 200 answer to a preflight from an allowed origin, as a LocalReply; None when the
    request is not a preflight (no Origin or Access-Control-Request-Method) or its origin
    is not allowed: then it is proxied like any other request. The caller has checked that
    the method is OPTIONS; `origin`, when given, is the request's (origin_of)."""
    method = requested = None
    for name, value in headers:
        if name == b"access-control-request-method":
            if method is None:
                method = value
        elif name == b"access-control-request-headers":
            if requested is None:
                requested = value
        elif name == b"origin" and origin is None:
            origin = value
    if not origin or not method:
        return None
    wire = _wire(policy)
    if not wire.allows(origin):
        return None
    methods = wire.methods
    if methods is None:
        methods = b"access-control-allow-methods: %b\r\n" % method
    allowed = wire.headers
    if allowed is None:
        allowed = b"access-control-allow-headers: %b\r\n" % requested if requested else b""
    extra = b"access-control-allow-origin: %b\r\n%b%b%b%b" % (origin, wire.credentials, methods, allowed, wire.max_age)
    return _plan.LocalReply(200, b"", False, extra)


def response_extra(policy: CorsPolicy, origin: bytes) -> bytes:
    """The header lines (`name: value\\r\\n`) the response to a request from `origin` gets:
    allow-origin, allow-credentials and expose-headers when the origin is allowed, else b""."""
    wire = _wire(policy)
    if not wire.allows(origin):
        return b""
    return b"access-control-allow-origin: " + origin + b"\r\n" + wire.response_tail
