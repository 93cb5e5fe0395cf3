"""HTTP/1 codec, byte level: framing, smuggling shapes, trailers, responses."""

from __future__ import annotations

import pytest

from edge.worker.proto.h1 import (
    Body, ClientError, End, Request, RequestParser, Response, ResponseParser, UpstreamError, chunk, last_chunk,
)


def parse(data: bytes, max_head: int = 60 * 1024):
    p = RequestParser(max_head)
    p.feed(data)
    return list(p.events)


def test_pipelined_and_split_feeds():
    data = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    p = RequestParser()
    for i in range(len(data)):  # one byte at a time
        p.feed(data[i:i + 1])
    kinds = [type(e) for e in p.events]
    assert kinds[:2] == [Request, End] and kinds[2] is Request and kinds[-1] is End
    assert b"".join(e.data for e in p.events if type(e) is Body) == b"abc"
    assert p.events[2].content_length == 3 and p.events[0].target == b"/a"


def test_chunked_with_trailers():
    events = parse(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n")
    assert events[0].chunked and events[1] == Body(b"abc") and events[2] == End([(b"x-sum", b"1")])


@pytest.mark.parametrize("data, status", [
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1,2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nG\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\x00c\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 2000, 431),
])
def test_hostile_requests(data, status):
    with pytest.raises(ClientError) as err:
        parse(data, max_head=1024)
    assert err.value.status == status


def test_an_endless_header_line_is_bounded():
    p = RequestParser(2048)
    p.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    fed = 0
    with pytest.raises(ClientError) as err:
        while fed < 1 << 20:
            p.feed(b"a" * 1000)
            fed += 1000
    assert err.value.status == 431
    assert fed <= 2048 + 64 * 1024


def test_response_framing_head_and_eof():
    p = ResponseParser()
    p.expect_no_body()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert [type(e) for e in p.events] == [Response, End]
    p.events.clear()
    p.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody")
    assert p.events[0].status == 100 and p.events[1].status == 200 and p.close_delimited
    p.feed_eof()
    assert type(p.events[-1]) is End
    bad = ResponseParser()
    bad.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(UpstreamError):
        bad.feed_eof()
    with pytest.raises(UpstreamError):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_serialisation():
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert last_chunk([]) == b"0\r\n\r\n"
    assert last_chunk([(b"a", b"b")]) == b"0\r\na: b\r\n\r\n"


def test_connection_tokens_and_special_headers_are_reported():
    req = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Private\r\nConnection: Foo\r\n"
                b"Expect: 100-continue\r\nContent-Length: 0\r\n\r\n")[0]
    assert req.connection == {b"keep-alive", b"x-private", b"foo"}
    assert req.host == b"x" and req.expect_continue and req.content_length == 0 and not req.has_body
    assert parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0].connection == frozenset()
    p = ResponseParser()
    p.feed(b"HTTP/1.1 200 OK\r\nConnection: close, X-Up\r\nContent-Length: 0\r\n\r\n")
    resp = p.events[0]
    assert resp.connection == {b"close", b"x-up"} and resp.content_length == 0 and not resp.keep_alive


# The parser is compiled and collects each piece llhttp hands it (a URL, a header name or
# value cut by the end of a read) itself: every way of cutting a stream must give the
# events of the uncut stream.
REQUEST_STREAMS = [
    b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nAccept: */*\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\nX-Other: two\r\n\r\n"
    b"GET /d HTTP/1.0\r\nConnection: keep-alive, X-Hop\r\n\r\n",
]
RESPONSE_STREAMS = [
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 5\r\n\r\nhello"
    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\nX-T: 1\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\nX-Empty:\r\n\r\n",
]


def events_of(parser_class, pieces) -> list:
    p = parser_class()
    for piece in pieces:
        p.feed(piece)
    return merged_bodies(p.events)


def merged_bodies(events) -> list:
    """Body events joined: where a feed ends cuts a body into more events."""
    out = []
    for event in events:
        if type(event) is Body and out and type(out[-1]) is Body:
            out[-1] = Body(out[-1].data + event.data)
        else:
            out.append(event)
    return out


@pytest.mark.parametrize("parser_class, stream", [(RequestParser, s) for s in REQUEST_STREAMS]
                         + [(ResponseParser, s) for s in RESPONSE_STREAMS])
def test_every_cut_of_a_stream_gives_the_same_events(parser_class, stream):
    whole = events_of(parser_class, [stream])
    assert whole and all(type(e) in (Request, Response, Body, End) for e in whole)
    for i in range(1, len(stream)):
        assert events_of(parser_class, [stream[:i], stream[i:]]) == whole, f"cut at {i}"
    assert events_of(parser_class, [stream[i:i + 1] for i in range(len(stream))]) == whole
    # the worker's shared read buffer, holding more than the read: only `length` bytes count
    buffer = bytearray(stream + b"garbage after the read")
    p = parser_class()
    p.feed(buffer, len(stream))
    assert merged_bodies(p.events) == whole
    assert events_of(parser_class, [memoryview(buffer)[:len(stream)]]) == whole


def test_parsed_names_and_values():
    req, end = parse(REQUEST_STREAMS[0])[:2]
    assert req.method == b"GET" and req.target == b"/a?q=1" and req.version == "1.1" and req.keep_alive
    assert req.headers == [(b"host", b"x"), (b"x-empty", b""), (b"accept", b"*/*")]
    assert end == End([])
    chunked = parse(REQUEST_STREAMS[1])
    assert chunked[-3] == End([(b"x-sum", b"1"), (b"x-other", b"two")])
    http10 = chunked[-2]
    assert http10.version == "1.0" and http10.keep_alive and http10.connection == {b"keep-alive", b"x-hop"}
    p = ResponseParser()
    p.feed(RESPONSE_STREAMS[0])
    statuses = [(e.status, e.reason, e.informational) for e in p.events if type(e) is Response]
    assert statuses == [(100, b"Continue", True), (200, b"OK", False), (404, b"Not Found", False),
                        (204, b"No Content", False)]


def test_lower_casing_header_names_leaves_other_bytes_objects_alone():
    # CPython shares its one-byte bytes objects: a name arriving a byte per read must be
    # lower-cased into new objects, not into those
    p = RequestParser()
    for byte in b"GET / HTTP/1.1\r\nHOST: x\r\nX: y\r\n\r\n":
        p.feed(bytes([byte]))
    assert p.events[0].headers == [(b"host", b"x"), (b"x", b"y")]
    assert bytes([72]) == b"H" and b"HX"[1:] == b"X" and bytes([88]).lower() == b"x"


def test_connect_is_an_upgrade_and_a_head_answer_ends_at_its_head():
    connect = parse(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
    assert connect[0].upgrade and connect[0].target == b"example.com:443"
    p = ResponseParser()
    p.expect_no_body()  # the answer to HEAD advertises a length it does not send
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [type(e) for e in p.events] == [Response, End, Response, Body, End]
    assert p.events[0].content_length is None and p.events[2].content_length == 2 and not p.in_message


def test_errors_raised_inside_the_parser_reach_the_caller():
    with pytest.raises(ClientError) as err:
        RequestParser(64).feed(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n")
    assert err.value.status == 431
    with pytest.raises(UpstreamError, match="malformed response"):
        ResponseParser().feed(b"HTTP/1.1 2x0 OK\r\n\r\n")
    with pytest.raises(UpstreamError, match="upgrade response"):
        ResponseParser().feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
