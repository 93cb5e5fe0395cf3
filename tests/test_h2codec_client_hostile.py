"""HTTP/2 client codec against a misbehaving or hostile server (frames written by hand with
hyperframe and hpack): header lists over the limit, HPACK bombs, bad frames, floods,
malformed responses. What ends a stream, and what ends the connection."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    DataFrame, GoAwayFrame, HeadersFrame, PingFrame, PushPromiseFrame, RstStreamFrame, SettingsFrame,
)

from edge.worker.proto.h2codec import (
    Data, Drained, H2ClientCodec, H2Codec, H2Error, ResponseHeaders, StreamClosed, StreamRefused, StreamReset,
)
from tests.h2peers import MAGIC, GRPC, GET, GRPC_OK, MESSAGE, frames, drain, kinds, pump, connected, RawServer


# ---- header lists ---------------------------------------------------------------------------

def test_response_head_over_the_limit_resets_the_stream():
    client = H2ClientCodec(max_header_list_size=4096)
    client, server = connected(client, H2Codec())
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    server.respond(sid, [(b":status", b"200"), (b"x-big", b"v" * 5000)], end_stream=False)
    server.send_data(sid, b"body of a stream the client gave up")
    pump(client, server)
    assert [(type(e), e.stream_id, e.error_code) for e in drain(client)] == [(StreamClosed, sid, 11)]
    assert client.statistics()["header_overflow"] == 1
    assert [(type(e), e.error_code) for e in drain(server) if not isinstance(e, Drained)] == [
        (StreamReset, 11), (StreamClosed, 11)]
    # the connection goes on: a head under the limit is delivered
    sid2 = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    server.respond(sid2, [(b":status", b"200"), (b"x-small", b"v" * 100)], end_stream=True)
    pump(client, server)
    assert kinds(drain(client)) == ["ResponseHeaders", "StreamClosed"]


def test_a_head_over_the_limit_resets_that_stream_alone():
    client, server = connected(H2ClientCodec(max_header_list_size=1000))
    big = client.request(GRPC, end_stream=True)
    small = client.request(GRPC, end_stream=True)
    pump(client, server)
    drain(server)
    server.respond(big, [(b":status", b"200"), (b"x-big", b"v" * 2000)], end_stream=True)
    server.respond(small, [(b":status", b"200")], end_stream=True)
    client.feed(server.data_to_send())  # both answers in one read
    assert sorted((type(e).__name__, e.stream_id, getattr(e, "error_code", None)) for e in drain(client)) == [
        ("ResponseHeaders", small, None), ("StreamClosed", big, 11), ("StreamClosed", small, 0)]
    assert client.statistics()["header_overflow"] == 1


def test_a_head_over_the_limit_that_ends_the_stream_is_no_success():
    """A trailers-only gRPC answer over the limit: the stream ends with the block, yet its
    StreamClosed carries 11, and no RST_STREAM goes to a stream both sides closed."""
    client = H2ClientCodec(max_header_list_size=4096)
    raw = RawServer(client)
    sid = client.request(GET, end_stream=True)
    raw.out()
    client.feed(raw.headers(sid, GRPC_OK + [(b"grpc-message", b"m" * 5000)], end_stream=True))
    assert [(type(e), e.error_code) for e in drain(client)] == [(StreamClosed, 11)]
    assert not any(isinstance(f, RstStreamFrame) for f in raw.out())
    # while a request still being sent is stopped by it
    sid = client.request(GRPC, end_stream=False)
    client.send_data(sid, b"x")
    raw.out()
    assert kinds(drain(client)) == ["Drained"]
    client.feed(raw.headers(sid, GRPC_OK + [(b"grpc-message", b"m" * 5000)], end_stream=True))
    assert [(type(e), e.error_code) for e in drain(client)] == [(StreamClosed, 11)]
    assert [(f.stream_id, f.error_code) for f in raw.out() if isinstance(f, RstStreamFrame)] == [(sid, 11)]


def test_response_head_over_the_limit_is_answered_with_rst_stream():
    client = H2ClientCodec(max_header_list_size=4096)
    raw = RawServer(client)
    sid = client.request(GET, end_stream=True)
    raw.out()
    client.feed(raw.headers(sid, [(b":status", b"200"), (b"x-big", b"v" * 5000)])
                + DataFrame(sid, b"dropped").serialize())
    events = drain(client)
    assert [(type(e), e.error_code) for e in events] == [(StreamClosed, 11)]  # no head, no Data
    # the RST_STREAM went out during feed(), as soon as the head was complete: closed already
    assert client.open_streams == 0 and client.statistics()["rst_sent"] == 1
    assert [(f.stream_id, f.error_code) for f in raw.out() if isinstance(f, RstStreamFrame)] == [(sid, 11)]
    client.feed(DataFrame(sid, b"late", flags=["END_STREAM"]).serialize())  # after our RST: ignored
    assert drain(client) == []
    assert client.want_read


def test_trailers_over_the_limit_reset_the_stream():
    client = H2ClientCodec(max_header_list_size=4096)
    raw = RawServer(client)
    sid = client.request(GET, end_stream=True)
    raw.out()
    client.feed(raw.headers(sid, GRPC_OK) + DataFrame(sid, MESSAGE).serialize()
                + raw.headers(sid, [(b"grpc-message", b"m" * 5000)], end_stream=True))
    events = drain(client)
    assert kinds(events) == ["ResponseHeaders", "Data", "StreamClosed"] and events[-1].error_code == 11


def test_hpack_bomb_is_a_connection_error():
    """One large field in the dynamic table, referenced over and over (a byte on the wire
    for 4 KB of header list): over the limit the stream is reset, past 4 x the limit the
    connection ends."""
    client = H2ClientCodec(max_header_list_size=16384)
    raw = RawServer(client)
    first, second, third = (client.request(GET, end_stream=True) for _ in range(3))
    raw.out()
    client.feed(raw.headers(first, [(b":status", b"200"), (b"x-bomb", b"b" * 4000)], end_stream=True))
    assert kinds(drain(client)) == ["ResponseHeaders", "StreamClosed"]
    status = raw.enc.encode([(b":status", b"200")])
    index = raw.enc.encode([(b"x-bomb", b"b" * 4000)])  # one byte: the dynamic table's entry
    assert len(index) == 1
    client.feed(HeadersFrame(second, status + index * 10, flags=["END_HEADERS"]).serialize())  # 40 KB: over
    assert [(type(e), e.error_code) for e in drain(client)] == [(StreamClosed, 11)]
    with pytest.raises(H2Error) as err:
        client.feed(HeadersFrame(third, status + index * 100, flags=["END_HEADERS"]).serialize())  # 400 KB
    assert (err.value.code, err.value.reason) == (11, "HPACK bomb")
    assert drain(client) == []
    assert isinstance(frames(client.data_to_send())[-1], GoAwayFrame)


# ---- a misbehaving server: connection errors ------------------------------------------------

@pytest.mark.parametrize("frame", [
    b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x",  # DATA on stream 0
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x01",  # SETTINGS on a stream
    b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # WINDOW_UPDATE of 0 on the connection
])
def test_a_bad_frame_from_the_server_raises_h2error(frame):
    client = H2ClientCodec()
    RawServer(client)
    sid = client.request(GET, end_stream=True)
    client.data_to_send()
    with pytest.raises(H2Error) as err:
        client.feed(frame)
    assert err.value.code == 1  # PROTOCOL_ERROR
    [goaway] = [f for f in frames(client.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == 1
    assert not client.can_open()
    with pytest.raises(StreamRefused):
        client.request(GET, end_stream=True)
    client.feed(b"ignored")  # after a connection error: nothing
    assert sid == 1 and drain(client) == []


def test_a_server_that_is_not_http2():
    client = H2ClientCodec()
    client.data_to_send()
    with pytest.raises(H2Error):
        client.feed(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(frames(client.data_to_send())[-1], GoAwayFrame)
    assert not client.want_read


def test_push_promise_is_a_connection_error():
    client = H2ClientCodec()
    raw = RawServer(client)
    sid = client.request(GET, end_stream=True)
    raw.out()
    promise = PushPromiseFrame(sid, promised_stream_id=2, data=raw.enc.encode(GET), flags=["END_HEADERS"])
    with pytest.raises(H2Error) as err:
        client.feed(promise.serialize())
    assert err.value.code == 1


@pytest.mark.parametrize("frame", [SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0}),
                                   PingFrame(0, opaque_data=b"12345678")])
def test_settings_and_ping_floods(frame):
    client = H2ClientCodec()
    RawServer(client)
    with pytest.raises(H2Error) as err:
        client.feed(frame.serialize() * 2000)
    assert err.value.code == 11
    out = frames(client.data_to_send())
    assert isinstance(out[-1], GoAwayFrame) and out[-1].error_code == 11
    assert client.statistics()["flood"] == 1


def test_a_settings_flood_before_our_preface_went_out():
    client = H2ClientCodec(max_outbound_ack=10)
    with pytest.raises(H2Error) as err:
        client.feed(SettingsFrame(0).serialize() * 100)  # the client never wrote: the ACKs pile up
    assert err.value.code == 11
    out = client.data_to_send()
    assert out.startswith(MAGIC)  # our preface still comes first
    assert isinstance(frames(out)[-1], GoAwayFrame)


def test_compression_error_is_a_connection_error():
    client = H2ClientCodec()
    RawServer(client)
    sid = client.request(GET, end_stream=True)
    client.data_to_send()
    with pytest.raises(H2Error) as err:
        client.feed(HeadersFrame(sid, b"\xff\xff\xff\xff\xff", flags=["END_HEADERS"]).serialize())
    assert err.value.code == 9  # COMPRESSION_ERROR


def test_data_on_a_stream_never_opened_is_a_connection_error():
    client = H2ClientCodec()
    RawServer(client)
    with pytest.raises(H2Error) as err:
        client.feed(DataFrame(1, b"x").serialize())
    assert err.value.code == 1


# ---- a malformed response: a stream error, nghttp2's messaging checks ------------------------

def test_content_length_against_data_is_checked():
    client = H2ClientCodec()
    raw = RawServer(client)
    sid = client.request(GET, end_stream=True)
    raw.out()
    client.feed(raw.headers(sid, [(b":status", b"200"), (b"content-length", b"3")])
                + DataFrame(sid, b"too long", flags=["END_STREAM"]).serialize())
    events = drain(client)
    assert kinds(events)[0] == "ResponseHeaders" and (type(events[-1]), events[-1].error_code) == (StreamClosed, 1)
    assert not any(isinstance(e, Data) and e.end_stream for e in events)
    assert [f.error_code for f in raw.out() if isinstance(f, RstStreamFrame)] == [1]


@pytest.mark.parametrize("headers", [
    [(b"content-type", b"text/plain")],  # no :status
    [(b":status", b"200"), (b":path", b"/")],  # a request pseudo-header
    [(b":status", b"200"), (b"connection", b"close")],
    [(b":status", b"2000")],
])
def test_malformed_response_head_resets_the_stream(headers):
    client = H2ClientCodec()
    raw = RawServer(client)
    sid = client.request(GET, end_stream=True)
    raw.out()
    client.feed(raw.headers(sid, headers, end_stream=True))
    assert [(type(e), e.error_code) for e in drain(client)] == [(StreamClosed, 1)]
    assert [f.error_code for f in raw.out() if isinstance(f, RstStreamFrame)] == [1]
    assert client.can_open()  # the connection goes on
