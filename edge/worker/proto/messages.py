"""HTTP/1.1 messages: the events the parsers emit, their errors, and the framing rules.

Pure (no I/O): `edge.worker.proto.h1parser` (compiled, over llhttp) builds these objects,
`edge.worker.conn` consumes them. Errors say whose fault: ClientError carries the 4xx to
answer, UpstreamError means 502.
"""

from __future__ import annotations

from dataclasses import dataclass


class ClientError(Exception):
    """The client sent something we must refuse; `status` is the answer (4xx)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PriorKnowledge(ClientError):
    """The connection opened with the HTTP/2 preface (`PRI * HTTP/2.0`): h2c with prior
    knowledge, or h2 after TLS's ALPN. A 400 to an HTTP/1-only handler."""

    def __init__(self):
        super().__init__(400, "the HTTP/2 connection preface on an HTTP/1 connection")


class UpstreamError(Exception):
    """The upstream sent an unusable response."""


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    version: str  # "1.1" or "1.0"
    headers: list  # [(lower-cased name bytes, value bytes)], in order
    keep_alive: bool
    chunked: bool
    content_length: int | None
    host: bytes | None
    expect_continue: bool
    upgrade: bool
    connection: frozenset  # lower-cased tokens of Connection: hop-by-hop for this message
    has_body: bool  # chunked, or a Content-Length above 0


@dataclass(slots=True)
class Response:
    status: int
    reason: bytes
    version: str
    headers: list
    keep_alive: bool
    chunked: bool
    content_length: int | None
    connection: frozenset
    informational: bool  # 1xx


@dataclass(slots=True)
class Body:
    data: bytes


@dataclass(slots=True)
class End:
    trailers: list  # [(name, value)]; empty unless chunked with trailers


END = End([])  # the end of a message without trailers (shared: never mutated)


def framing(lengths: list, codings: list, is_request: bool, version: str):
    """Check the Content-Length and Transfer-Encoding values; return (chunked, content_length).
    (The parser reads the usual single plain Content-Length itself and calls this for the rest.)"""
    error = ClientError if is_request else None
    content_length = None
    if lengths:
        values = {v.strip() for v in b",".join(lengths).split(b",")}
        if len(values) != 1:
            _fail(error, "conflicting Content-Length values")
        value = values.pop()
        if not value.isdigit() or len(value) > 18:
            _fail(error, f"bad Content-Length {value[:20]!r}")
        content_length = int(value)
    chunked = False
    if codings:
        if lengths:
            _fail(error, "both Content-Length and Transfer-Encoding")
        if version == "1.0" and is_request:
            _fail(error, "Transfer-Encoding in an HTTP/1.0 request")
        parts = [p.strip().lower() for p in b",".join(codings).split(b",")]
        if parts != [b"chunked"]:
            _fail(error, f"unsupported Transfer-Encoding {b', '.join(parts)[:40]!r}")
        chunked = True
    return chunked, content_length


NO_TOKENS: frozenset = frozenset()

# HTTP/1 header fields never sent on HTTP/2 (RFC 9113 §8.2.2), besides Connection's tokens
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})


def connection_tokens(values: list) -> frozenset:
    """The lower-cased tokens of Connection header values. (The parser answers NO_TOKENS
    itself for the two usual values, which name no header of their own.)"""
    return frozenset(t.strip().lower() for v in values for t in v.split(b","))


def head_size(first_line: bytes, headers: list) -> int:
    """Bytes of a head as counted against the limits (measured only for large feeds: a
    head inside a feed no longer than the limit is within it)."""
    return len(first_line) + sum(len(n) + len(v) + 4 for n, v in headers)


def _fail(error, reason: str):
    if error is ClientError:
        raise ClientError(400, reason)
    raise UpstreamError(reason)


REQUEST_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"expect",
                              b"upgrade"})
RESPONSE_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection"})

# The parser holds a header line in memory until it ends. A complete head is measured
# against max_head; the raw bytes fed while a head is unfinished are bounded too. The
# slack covers the bytes of earlier pipelined messages in the same feed (one read).
UNFINISHED_HEAD_SLACK = 64 * 1024
