"""HTTP/1.1 codec, sans-IO: bytes in, events out.

The parsers are compiled (`h1parser.pyx`, over llhttp); the events and framing rules they
apply are in `messages`; what we write back (chunks, locally generated responses) is here.
"""

from __future__ import annotations

from http import HTTPStatus

from edge.worker.proto.h1parser import RequestParser, ResponseParser
from edge.worker.proto.messages import Body, ClientError, End, PriorKnowledge, Request, Response, UpstreamError

__all__ = ["Body", "ClientError", "End", "PriorKnowledge", "Request", "RequestParser", "Response", "ResponseParser", "UpstreamError",
           "chunk", "last_chunk", "simple_response"]


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
