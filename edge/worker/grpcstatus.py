"""gRPC's rules for what edge itself answers, pure: statuses, deadlines, percent-encoding.

A gRPC client reads the outcome of a call from `grpc-status`, not from the HTTP status, so
an answer edge makes itself (no route, upstream down, timeout, rate limited) to a gRPC
request is a "trailers-only" response: HTTP 200 with `grpc-status` and `grpc-message` in
its only header block, as Envoy sends it (Envoy's Grpc::Utility::httpToGrpcStatus).
"""

from __future__ import annotations

# grpc-status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)
OK = 0
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# Envoy's mapping of the HTTP status of a local reply; every other status is UNKNOWN.
# 504 is edge's timeouts (route timeout, grpc-timeout, idle, connect): Envoy answers an
# upstream request timeout of a gRPC call with DEADLINE_EXCEEDED.
FROM_HTTP = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
             429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: DEADLINE_EXCEEDED}

_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}


def content_type_of(headers: list) -> bytes | None:
    """The content-type of a gRPC or gRPC-Web request (application/grpc, application/grpc+proto,
    application/grpc-web-text, ...), or None for any other request."""
    for name, value in headers:
        if name == b"content-type":
            return value if value[:16].lower() == b"application/grpc" else None
    return None


def timeout_of(headers: list) -> float | None:
    """The seconds a `grpc-timeout` header allows (1 to 8 digits and a unit of H, M, S, m,
    u, n), or None when there is none or it is malformed (then it does not shorten anything,
    as gRPC servers ignore it)."""
    for name, value in headers:
        if name == b"grpc-timeout":
            digits = value[:-1]
            if 1 <= len(digits) <= 8 and digits.isdigit() and value[-1] in _UNITS:
                return int(digits) * _UNITS[value[-1]]
            return None
    return None


def local_reply(status: int, message: bytes, content_type: bytes) -> list:
    """The trailers-only answer (header fields after `:status: 200`) edge makes to a gRPC
    or gRPC-Web request of `content_type` that it would answer `status` and `message` to an
    HTTP client."""
    grpc_web = content_type[:20].lower() == b"application/grpc-web"
    return [(b"content-type", content_type if grpc_web else b"application/grpc"),
            (b"grpc-status", b"%d" % FROM_HTTP.get(status, UNKNOWN)), (b"grpc-message", percent_encode(message))]


def percent_encode(message: bytes) -> bytes:
    """grpc-message's encoding: printable ASCII except '%' as is, every other byte %XX."""
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in message):
        return message
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in message)
