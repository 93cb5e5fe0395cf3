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
