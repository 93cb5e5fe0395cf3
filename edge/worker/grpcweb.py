"""gRPC-Web <-> gRPC, sans-IO: what Envoy's grpc_web filter does, for one call.

https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md; behaviour as Envoy's
source/extensions/filters/http/grpc_web/grpc_web_filter.cc (the filter Emissary's
`enable_grpc_web` turns on).

A browser sends `application/grpc-web[+proto]` (frames as gRPC's, binary) or
`application/grpc-web-text[+proto]` (the same bytes in base64) over HTTP/1.1 or HTTP/2;
the upstream speaks gRPC over HTTP/2. The client cannot read HTTP trailers, so the
upstream's trailers become the response body's last frame: flag 0x80, a 4-byte
big-endian length, then `name:value\\r\\n` lines.

One GrpcWebCall per request, driven by the connection in this order:

    call = GrpcWebCall(content_type, accept)        # accept: the request's Accept, or None
    upstream_headers = call.request_headers(headers)  # te: trailers is in them already
    for chunk in body: send(call.request_data(chunk))
    send(call.request_end())                        # GrpcWebError (a 400) on a torn quantum

    # the upstream's response head; `end_stream` when it came without a body:
    if not call.response_is_grpc(status, headers, end_stream):
        # not a gRPC answer (an HTML 503 from a proxy, a 404 page): read its body (up to
        # NON_GRPC_BODY_LIMIT bytes), answer this head with the same status and no body
        head = call.response_non_grpc(status, headers, body)
    elif end_stream:                                # trailers-only: grpc-status in the head
        head, body = call.response_trailers_only(headers)
    else:
        head = call.response_headers(headers)
        for chunk in data: write(call.response_data(chunk))
        write(call.response_trailers(trailers))     # or call.response_end() without trailers

Headers are [(lower-cased name bytes, value bytes)]; pseudo-headers (`:status`, `:path`)
pass through untouched, so the caller may include them or not. Nothing here does I/O and
nothing buffers a message: a text request holds back at most 3 base64 characters, a text
response at most 2 bytes and never across the end of a gRPC frame (a server-streaming
message goes out whole as soon as its last byte arrives).
"""

from __future__ import annotations

import binascii

from edge.worker.grpcstatus import (INTERNAL, PERMISSION_DENIED, UNAUTHENTICATED, UNAVAILABLE, UNIMPLEMENTED, UNKNOWN,
                                    percent_encode)
from edge.worker.proto.messages import ClientError

GRPC = b"application/grpc"
GRPC_WEB = b"application/grpc-web"
GRPC_WEB_PROTO = b"application/grpc-web+proto"
GRPC_WEB_TEXT = b"application/grpc-web-text"
GRPC_WEB_TEXT_PROTO = b"application/grpc-web-text+proto"
_BINARY = frozenset({GRPC_WEB, GRPC_WEB_PROTO})
_TEXT = frozenset({GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO})
_TYPES = _BINARY | _TEXT

TRAILER_FLAG = 0x80  # the frame flag of gRPC-Web's trailers frame
NON_GRPC_BODY_LIMIT = 16384  # Envoy's MAX_BUFFERED_PLAINTEXT_LENGTH: what grpc-message carries at most
TRAILERS_ONLY = frozenset({b"grpc-status", b"grpc-message", b"grpc-status-details-bin"})

# Envoy's Grpc::Utility::httpToGrpcStatus, for an upstream answer that is not gRPC
# (https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md)
HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}

# Request headers the upstream never gets (te is set anew). Envoy forwards x-grpc-web; edge
# drops it: it only tells a gRPC-Web proxy what the request is, and the upstream gets gRPC.
_DROP_REQUEST = frozenset({b"content-length", b"x-grpc-web", b"te"})
_DROP_RESPONSE = frozenset({b"content-length", b"content-type"})


class GrpcWebError(ClientError):
    """The client's gRPC-Web body is malformed (bad base64): answer 400, as Envoy does."""

    def __init__(self, reason: str = "Bad gRPC-web request, invalid base64 data."):
        super().__init__(400, reason)


def _media_type(value: bytes) -> bytes:
    """The media type of a Content-Type or Accept element: parameters dropped, lower-cased."""
    return value.split(b";", 1)[0].strip().lower()


def is_grpc_web(content_type: bytes) -> bool:
    """Whether a request of this Content-Type is gRPC-Web that edge translates: the four
    types Envoy's filter knows (+json and other codecs are not translated, as in Envoy).
    Unlike Envoy's exact comparison, case and parameters (`; charset=utf-8`) are ignored."""
    return _media_type(content_type) in _TYPES


def wants_text(accept: bytes | None) -> bool:
    """Whether the client asks for a base64 response: its Accept names grpc-web-text (Envoy
    reads Accept alone, not the request's own Content-Type)."""
    if not accept:
        return False
    return any(_media_type(part) in _TEXT for part in accept.split(b","))


class GrpcWebCall:
    """The translation state of one gRPC-Web call (see the module's docstring for the
    order of calls). `text_request`: the request body is base64; `text_response`: the
    response body is sent in base64 (the request's Accept asked for it); `content_type`:
    what the client's response says it is."""

    __slots__ = ("text_request", "text_response", "content_type", "_accept_known", "_in", "_out", "_head", "_left")

    def __init__(self, content_type: bytes, accept: bytes | None = None):
        self.text_request = _media_type(content_type) in _TEXT
        # without `accept` here, request_headers reads the Accept header
        self._accept_known = accept is not None
        self._set_response(wants_text(accept))
        self._in = b""  # base64 characters of a quantum not complete yet (fewer than 4)
        self._out = b""  # response bytes not encoded yet (fewer than 3, inside a frame)
        self._head = b""  # the part of a response frame's 5-byte prefix seen so far
        self._left = 0  # bytes of the current response frame's payload still to come

    def _set_response(self, text: bool) -> None:
        self.text_response = text
        self.content_type = GRPC_WEB_TEXT_PROTO if text else GRPC_WEB_PROTO  # Envoy's +proto spelling

    # ---- the request: client -> upstream ----------------------------------------------

    def request_headers(self, headers: list) -> list:
        """The request's headers as the gRPC upstream gets them: content-type
        application/grpc (as Envoy sets it, whatever the +codec), no content-length (a text
        body shrinks, and HTTP/2 frames the body), no x-grpc-web, `te: trailers` (gRPC
        requires it; any other te replaced), and `grpc-accept-encoding: identity` unless the
        client sent its own (as Envoy, so that the upstream does not compress what the
        browser cannot decompress). Everything else is kept, in order."""
        out = []
        accept_encoding = False
        for pair in headers:
            name = pair[0]
            if name in _DROP_REQUEST:
                continue
            if name == b"content-type":
                pair = (b"content-type", GRPC)
            elif name == b"grpc-accept-encoding":
                accept_encoding = True
            elif name == b"accept" and not self._accept_known:
                self._set_response(wants_text(pair[1]))
            out.append(pair)
        out.append((b"te", b"trailers"))
        if not accept_encoding:
            out.append((b"grpc-accept-encoding", b"identity"))
        return out

    def request_data(self, data: bytes) -> bytes:
        """Request body bytes for the upstream: as they are for binary gRPC-Web; for -text,
        base64-decoded across any chunk boundary, padding allowed after any complete
        quantum (the spec lets a client flush mid-stream, e.g. after each message).
        Raises GrpcWebError on a character outside the alphabet or misplaced padding."""
        if not self.text_request:
            return data
        if self._in:
            data = self._in + data
        whole = len(data) & ~3
        if whole != len(data):
            self._in = data[whole:]
            data = data[:whole]
        else:
            self._in = b""
        return _decode(data) if data else b""

    def request_end(self) -> bytes:
        """The end of the request body: b"" (nothing is held back but an incomplete
        quantum). Raises GrpcWebError when base64 characters are left over that do not make
        a whole quantum (padding is mandatory, as in Envoy)."""
        if self._in:
            self._in = b""
            raise GrpcWebError()
        return b""

    # ---- the response: upstream -> client ---------------------------------------------

    def response_is_grpc(self, status: int, headers: list, end_stream: bool = False) -> bool:
        """Whether the upstream answered as a gRPC server (Envoy's isGrpcResponseHeaders,
        or a gRPC-Web answer already): a head that ends the stream carries grpc-status
        (trailers-only); any other is a 200 of content-type application/grpc[+codec] (or
        grpc-web[+proto]). Otherwise use response_non_grpc."""
        content_type = None
        for name, value in headers:
            if end_stream and name == b"grpc-status":
                return True
            if name == b"content-type":
                content_type = value
        if end_stream or status != 200 or content_type is None:
            return False
        media = _media_type(content_type)
        return media == GRPC or media.startswith(b"application/grpc+") or media in _BINARY

    def response_headers(self, headers: list) -> list:
        """The response head for the client: content-type this call's grpc-web type
        (application/grpc-web+proto, or application/grpc-web-text+proto when the client's
        Accept asked for text) where the upstream's was (last when it had none), no
        content-length (the body changes). The rest, grpc-status included when the head is
        trailers-only, is kept in order."""
        out = []
        typed = False
        for pair in headers:
            name = pair[0]
            if name == b"content-type":
                if not typed:
                    out.append((b"content-type", self.content_type))
                    typed = True
            elif name != b"content-length":
                out.append(pair)
        if not typed:
            out.append((b"content-type", self.content_type))
        return out

    def response_trailers_only(self, headers: list) -> tuple[list, bytes]:
        """(head, body) for a trailers-only response (grpc-status in the head, the stream
        ended): gRPC-Web leaves it as it is (PROTOCOL-WEB.md: "trailers may be sent together
        with response headers, with no message in the body"), so it is response_headers()
        and an empty body, as Envoy sends it. (split_trailers_only is the other way: the
        status moved into a trailers frame in the body.)"""
        return self.response_headers(headers), b""

    def response_non_grpc(self, status: int, headers: list, body: bytes) -> list:
        """The head for the client when the upstream's answer is not gRPC (see
        response_is_grpc), as Envoy's filter makes it: the upstream's head with
        grpc-status from its HTTP status (httpToGrpcStatus), grpc-message the body's first
        NON_GRPC_BODY_LIMIT bytes percent-encoded, content-length: 0 and this call's
        content-type; the caller keeps the HTTP status and sends no body."""
        out = [pair for pair in headers if pair[0] not in _DROP_RESPONSE and pair[0] not in TRAILERS_ONLY]
        return out + [(b"content-type", self.content_type), (b"grpc-status", b"%d" % HTTP_TO_GRPC.get(status, UNKNOWN)),
                      (b"grpc-message", percent_encode(body[:NON_GRPC_BODY_LIMIT])), (b"content-length", b"0")]

    def response_data(self, data: bytes) -> bytes:
        """Response body bytes for the client: as they are for binary; base64 for text,
        encoded incrementally (up to 2 bytes held back inside a frame, padded out at the end
        of every frame, so that a streamed message is never held back)."""
        if not self.text_response:
            return data
        if not data:
            return b""
        if self._boundary(data):
            if self._out:
                data = self._out + data
                self._out = b""
            return binascii.b2a_base64(data, newline=False)
        if self._out:
            data = self._out + data
        keep = len(data) % 3
        if keep:
            self._out = data[-keep:]
            data = data[:-keep]
        else:
            self._out = b""
        return binascii.b2a_base64(data, newline=False) if data else b""

    def response_trailers(self, trailers: list) -> bytes:
        """The last bytes of the response body: the trailers frame (0x80, length, each
        trailer as `name:value\\r\\n` with the name lower-cased), in base64 with whatever
        was held back for text."""
        lines = b"".join(b"%b:%b\r\n" % (name.lower(), value) for name, value in trailers if name[:1] != b":")
        frame = b"%c%b%b" % (TRAILER_FLAG, len(lines).to_bytes(4, "big"), lines)
        if not self.text_response:
            return frame
        data, self._out = self._out + frame, b""
        return binascii.b2a_base64(data, newline=False)

    def response_end(self) -> bytes:
        """The last bytes of a response that ended without trailers: what text held back."""
        if not self._out:
            return b""
        data, self._out = self._out, b""
        return binascii.b2a_base64(data, newline=False)

    def _boundary(self, data: bytes) -> bool:
        """Follow the gRPC frames through `data`; True when it ends exactly at the end of one."""
        i, n = 0, len(data)
        head, left = self._head, self._left
        while i < n:
            if left:
                take = left if left < n - i else n - i
                left -= take
                i += take
                continue
            need = 5 - len(head)
            head += data[i:i + need]
            i += need
            if len(head) == 5:
                left = int.from_bytes(head[1:], "big")
                head = b""
        self._head, self._left = head, left
        return not left and not head


def split_trailers_only(headers: list) -> tuple[list, list]:
    """(headers, trailers) of a trailers-only response: grpc-status, grpc-message and
    grpc-status-details-bin taken out, for a caller that sends them as the body's trailers
    frame (call.response_trailers(trailers)) rather than in the head as Envoy does
    (GrpcWebCall.response_trailers_only)."""
    kept, trailers = [], []
    for pair in headers:
        (trailers if pair[0] in TRAILERS_ONLY else kept).append(pair)
    return kept, trailers


def _decode(data: bytes) -> bytes:
    """Decode whole base64 quanta in which a padded quantum may end a run and another start."""
    try:
        pad = data.find(b"=")
        if pad < 0:
            return binascii.a2b_base64(data, strict_mode=True)
        out = []
        start = 0
        while pad >= 0:
            end = (pad | 3) + 1  # the end of the quantum the padding is in
            out.append(binascii.a2b_base64(data[start:end], strict_mode=True))
            start = end
            pad = data.find(b"=", start)
        if start < len(data):
            out.append(binascii.a2b_base64(data[start:], strict_mode=True))
        return b"".join(out)
    except binascii.Error as exc:
        raise GrpcWebError() from exc
