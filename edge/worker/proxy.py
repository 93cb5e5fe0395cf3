"""Proxy decisions, pure: path normalisation and rewrite, the header rules of a target.
The heads themselves, and their request ids, are written by `heads` (compiled).

Nothing here touches a socket; conn.py calls these with parsed requests and responses.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.model import Target
from edge.worker.proto.messages import ClientError

# RFC 7230 hop-by-hop headers, never forwarded (plus any named in Connection).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = "0123456789abcdefABCDEF"


def split_target(target: bytes) -> tuple[str, str]:
    """Request-target -> (path, query). Absolute-form keeps only its path. Raises ClientError."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise ClientError(400, "non-ASCII request target") from None
    if not text.startswith("/"):
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise ClientError(400, f"bad request target {text[:40]!r}")
        slash = rest.find("/")
        text = rest[slash:] if slash >= 0 else "/"
    path, _, query = text.partition("?")
    path = path.partition("#")[0]
    return path, query


def normalize_path(path: str, merge_slashes: bool = False) -> str:
    """RFC 3986 normalisation as Envoy's normalize_path: decode %-escaped unreserved
    characters, upper-case the other escapes, remove dot segments; optionally merge '//'.
    Raises ClientError for a malformed escape."""
    if "%" in path:
        path = _decode_unreserved(path)
    if merge_slashes and "//" in path:
        while "//" in path:
            path = path.replace("//", "/")
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


def _decode_unreserved(path: str) -> str:
    out = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "%":
            h = path[i + 1:i + 3]
            if len(h) != 2 or h[0] not in _HEX or h[1] not in _HEX:
                raise ClientError(400, "bad percent-encoding in path")
            value = int(h, 16)
            out.append(chr(value) if value in _UNRESERVED else "%" + h.upper())
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    if segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def rewrite_path(path: str, matched: int, rewrite: str | None, regex_rewrite, substitution: str) -> str:
    """Emissary rewrite: regex_rewrite wins; else the matched prefix is replaced by
    `rewrite` (default "/"); rewrite None keeps the path."""
    if regex_rewrite is not None:
        # Envoy (RE2) writes group references as \1, which Python's re.sub reads the same way
        return regex_rewrite.sub(substitution, path)
    if rewrite is None:
        return path
    return rewrite + path[matched:]


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """A target's header edits, prepared once per table generation (not per request)."""

    request_drop: frozenset  # names never forwarded upstream (besides Connection's tokens)
    request_add: bytes  # rendered header lines
    host_rewrite: bytes | None
    response_drop: frozenset
    response_add: bytes
    response_add_pairs: tuple  # the same lines as (name, value) pairs, for HTTP/2 heads
    # x-envoy-upstream-service-time goes to the client: not with suppress_envoy_headers,
    # nor when the target's remove_response_headers names it
    service_time: bool = True


XFCC = b"x-forwarded-client-cert"


def header_rules(t: Target, suppress_envoy: bool = False, sanitize_xfcc: bool = True) -> HeaderRules:
    """`suppress_envoy`: the Module's suppress_envoy_headers; `sanitize_xfcc`: its
    forward_client_cert_details is SANITIZE (the default: a client's
    x-forwarded-client-cert never reaches the upstream; the other modes are applied per
    connection by edge.worker.xfcc). Envoy's
    x-envoy-expected-rq-timeout-ms (the route timeout, absent when it is disabled) is
    rendered here, once, into the request lines."""
    def pairs(ops) -> tuple:
        return tuple((op.name.lower().encode(), op.value.encode()) for op in ops)

    def rendered(ops) -> bytes:
        return b"".join(b"%b: %b\r\n" % (op.name.encode(), op.value.encode()) for op in ops)

    def replaced(ops) -> set:
        return {op.name.lower().encode() for op in ops if not op.append}

    return HeaderRules(
        request_drop=HOP_BY_HOP | {n.encode() for n in t.remove_request_headers}
        | replaced(t.add_request_headers) | {b"content-length", b"expect", b"x-envoy-expected-rq-timeout-ms"}
        | ({XFCC} if sanitize_xfcc else set()),
        request_add=rendered(t.add_request_headers) + (
            b"x-envoy-expected-rq-timeout-ms: %d\r\n" % t.timeout_ms
            if t.timeout_ms and not suppress_envoy
            and "x-envoy-expected-rq-timeout-ms" not in t.remove_request_headers else b""),
        host_rewrite=t.host_rewrite.encode() if t.host_rewrite else None,
        response_drop=HOP_BY_HOP | {n.encode() for n in t.remove_response_headers}
        | replaced(t.add_response_headers) | {b"content-length", b"server"},
        response_add=rendered(t.add_response_headers),
        response_add_pairs=pairs(t.add_response_headers),
        service_time=not suppress_envoy and "x-envoy-upstream-service-time" not in t.remove_response_headers,
    )
