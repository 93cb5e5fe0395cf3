"""HTTP/1.1 codec, sans-IO: bytes in, events out (httptools/llhttp underneath).

`RequestParser` reads what clients send and enforces our framing rules on top of llhttp
(which itself rejects obs-fold, bare CR/LF and control characters in header values):
every request-smuggling shape (Content-Length with Transfer-Encoding, conflicting lengths,
codings other than chunked, obs-fold, CR/LF/NUL in values, duplicate Host) is a
ClientError(400), oversized heads a ClientError(431). `ResponseParser` reads upstream
responses; its errors are UpstreamError (the upstream's fault: 502).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

import httptools


class ClientError(Exception):
    """The client sent something we must refuse; `status` is the answer (4xx)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


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


def _framing(lengths: list, codings: list, is_request: bool, version: str):
    """Check the Content-Length and Transfer-Encoding values; return (chunked, content_length)."""
    if len(lengths) == 1 and not codings:
        value = lengths[0]
        if value.isdigit() and len(value) <= 18:
            return False, int(value)
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


def connection_tokens(values: list) -> frozenset:
    """The lower-cased tokens of Connection header values. The two usual values name no
    header of their own (Keep-Alive is hop-by-hop anyway)."""
    if len(values) == 1 and values[0].lower() in (b"keep-alive", b"close"):
        return NO_TOKENS
    return frozenset(t.strip().lower() for v in values for t in v.split(b","))


def _head_size(first_line: bytes, headers: list) -> int:
    """Bytes of a head as counted against the limits (measured only for large feeds: a
    head inside a feed no longer than the limit is within it)."""
    return len(first_line) + sum(len(n) + len(v) + 4 for n, v in headers)


def _fail(error, reason: str):
    if error is ClientError:
        raise ClientError(400, reason)
    raise UpstreamError(reason)


_REQUEST_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"expect",
                              b"upgrade"})
_RESPONSE_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection"})

# httptools holds a header line in memory until it ends. A complete head is measured
# against max_head; the raw bytes fed while a head is unfinished are bounded too. The
# slack covers the bytes of earlier pipelined messages in the same feed (one read).
UNFINISHED_HEAD_SLACK = 64 * 1024


def _close_parser(parser) -> None:
    """llhttp's parser holds its callbacks object (ours) and we hold it: drop the cycle so
    a closed connection is freed at once instead of waiting for the cyclic GC, whose
    full collections pause the worker."""
    parser._parser = None


class RequestParser:
    """Parses a stream of pipelined requests into Request, Body and End events.

    feed(data) appends to `events`; it raises ClientError for anything malformed, after
    which the connection must be closed. `max_head` bounds request line plus headers.
    """

    def __init__(self, max_head: int = 60 * 1024):
        self.max_head = max_head
        self.events: deque = deque()
        self._parser = httptools.HttpRequestParser(self)
        self._reset_message()
        self.in_message = False
        self._fed = 0

    def _reset_message(self):
        self._url = b""
        self._fields: list = []  # the headers; after the head, the trailers
        self._special: list = []  # the headers our framing rules look at
        self._headers_done = False
        self._unfinished_bytes = 0

    # -- httptools callbacks (run inside feed) --
    def on_message_begin(self):
        self._reset_message()
        self.in_message = True

    def on_url(self, url: bytes):
        self._url += url
        if len(self._url) > self.max_head:
            raise ClientError(431, "request headers too large")

    def on_header(self, name: bytes, value: bytes):
        name = name.lower()
        self._fields.append((name, value))
        if name in _REQUEST_SPECIAL:
            self._special.append((name, value))

    def on_headers_complete(self):
        self._headers_done = True
        headers = self._fields
        self._fields = []
        if self._fed + self._unfinished_bytes > self.max_head and _head_size(self._url, headers) > self.max_head:
            raise ClientError(431, "request headers too large")
        p = self._parser
        version = p.get_http_version()
        host = None
        hosts = 0
        lengths, codings, connection = [], [], []
        expect = upgrade = False
        for n, v in self._special:
            if n == b"host":
                host = v
                hosts += 1
            elif n == b"content-length":
                lengths.append(v)
            elif n == b"transfer-encoding":
                codings.append(v)
            elif n == b"connection":
                connection.append(v)
            elif n == b"expect":
                if v.lower() != b"100-continue":
                    raise ClientError(417, f"unsupported Expect {v[:30]!r}")
                expect = version == "1.1"
            else:  # upgrade
                upgrade = True
        chunked, length = _framing(lengths, codings, True, version) if lengths or codings else (False, None)
        if hosts > 1:
            raise ClientError(400, "more than one Host header")
        if not hosts and version == "1.1":
            raise ClientError(400, "HTTP/1.1 request without Host")
        self.events.append(Request(p.get_method(), self._url, version, headers, p.should_keep_alive(),
                                   chunked, length, host, expect, upgrade,
                                   connection_tokens(connection) if connection else NO_TOKENS,
                                   chunked or bool(length)))

    def on_body(self, body: bytes):
        self.events.append(Body(body))

    def on_message_complete(self):
        self.in_message = False
        self.events.append(End(self._fields) if self._fields else END)

    close = _close_parser

    def feed(self, data: bytes) -> None:
        """Parse `data`; raise ClientError on malformed or hostile input."""
        self._fed = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # our own checks raise inside llhttp's callbacks; httptools wraps them
            if isinstance(exc.__context__, ClientError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserUpgrade:
            pass  # the Request event carries upgrade=True; the bytes after it are the new protocol's
        except httptools.HttpParserError as exc:
            reason = str(exc) or type(exc).__name__
            status = 431 if "too large" in reason.lower() else 400
            raise ClientError(status, f"malformed request: {reason}") from None
        if self.in_message and not self._headers_done:
            self._unfinished_bytes += len(data)
            if self._unfinished_bytes > self.max_head + UNFINISHED_HEAD_SLACK:
                raise ClientError(431, "request headers too large")


class ResponseParser:
    """Parses one upstream connection's responses into Response, Body and End events.

    Call `expect_no_body()` before feeding the answer to a HEAD request. Raises
    UpstreamError on malformed responses.
    """

    def __init__(self, max_head: int = 64 * 1024):
        self.max_head = max_head
        self.events: deque = deque()
        self._no_body = False
        self._new_parser()

    def _new_parser(self):
        self._parser = httptools.HttpResponseParser(self)
        self._fields: list = []  # the headers; after the head, the trailers
        self._special: list = []
        self._headers_done = False
        self._unfinished_bytes = 0
        self._fed = 0
        self._reason = b""
        self._skip = False
        self._informational = False
        self.close_delimited = False
        self.in_message = False

    def expect_no_body(self):
        self._no_body = True

    def on_message_begin(self):
        self._fields, self._special, self._headers_done, self._unfinished_bytes = [], [], False, 0
        self.in_message = True

    def on_status(self, reason: bytes):
        self._reason += reason

    def on_header(self, name: bytes, value: bytes):
        name = name.lower()
        self._fields.append((name, value))
        if name in _RESPONSE_SPECIAL:
            self._special.append((name, value))

    def on_headers_complete(self):
        self._headers_done = True
        headers = self._fields
        self._fields = []
        if self._fed + self._unfinished_bytes > self.max_head and _head_size(self._reason, headers) > self.max_head:
            raise UpstreamError("response headers too large")
        p = self._parser
        status = p.get_status_code()
        version = p.get_http_version()
        lengths, codings, connection = [], [], []
        for n, v in self._special:
            if n == b"content-length":
                lengths.append(v)
            elif n == b"transfer-encoding":
                codings.append(v)
            else:
                connection.append(v)
        chunked, length = _framing(lengths, codings, False, version) if lengths or codings else (False, None)
        no_body = status in (204, 304) or 100 <= status < 200 or self._no_body
        if no_body:
            chunked, length = False, None
        resp = Response(status, self._reason, version, headers, p.should_keep_alive(), chunked, length,
                        connection_tokens(connection) if connection else NO_TOKENS, 100 <= status < 200)
        self._reason = b""
        self.events.append(resp)
        if 100 <= status < 200:
            self._informational = True  # its message end is not the response's end
            return
        if self._no_body:
            self._no_body = False
            self.in_message = False
            self.events.append(End([]))
            self._skip = True  # llhttp would wait for the advertised body; a new parser is made
            return
        self.close_delimited = not chunked and length is None and not no_body

    def on_body(self, body: bytes):
        if not self._skip:
            self.events.append(Body(body))

    def on_message_complete(self):
        if self._skip:
            return
        if self._informational:
            self._informational = False
            return
        self.in_message = False
        self.events.append(End(self._fields) if self._fields else END)

    close = _close_parser

    def feed(self, data: bytes) -> None:
        self._fed = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, UpstreamError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserUpgrade:
            raise UpstreamError("upgrade response to a request that did not ask for one") from None
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"malformed response: {exc}") from None
        if self._skip:
            self._new_parser()
        elif self.in_message and not self._headers_done:
            self._unfinished_bytes += len(data)
            if self._unfinished_bytes > self.max_head + UNFINISHED_HEAD_SLACK:
                raise UpstreamError("response headers too large")

    def feed_eof(self) -> None:
        """The upstream closed; ends a close-delimited body, else raises UpstreamError."""
        if self.in_message:
            if self.close_delimited and self._headers_done:
                self.in_message = False
                self.events.append(End([]))
                return
            raise UpstreamError("upstream closed the connection mid-response")


# ---- serialisation ---------------------------------------------------------------------

def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: list) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(b"%b: %b\r\n" % (n, v) for n, v in trailers) + b"\r\n"


# Like Envoy, the reason phrase sent to clients is the standard one for the status.
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def simple_response(status: int, body: bytes, server: bytes, close: bool, extra: bytes = b"",
                    content_type: bytes = b"text/plain") -> bytes:
    """A complete locally generated response (errors, 404s, 429s); `extra` is header lines."""
    head = [b"HTTP/1.1 %d %b\r\n" % (status, REASONS.get(status, b"Unknown")),
            b"content-length: %d\r\n" % len(body), b"content-type: %b\r\n" % content_type,
            b"server: %b\r\n" % server, extra]
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body
