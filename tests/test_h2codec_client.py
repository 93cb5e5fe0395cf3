"""HTTP/2 client codec (H2ClientCodec, nghttp2 underneath), byte level, no sockets: a
well-behaved server (our own H2Codec, or the h2 library): calls, bodies and flow control,
concurrency, 1xx, resets and GOAWAY. A misbehaving one is in test_h2codec_client_hostile."""

from __future__ import annotations

import h2.events
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from edge.worker.proto.h2codec import (
    Data, Drained, GoAwayReceived, H2ClientCodec, H2Codec, RequestHeaders, ResponseHeaders, StreamClosed,
    StreamRefused, StreamReset, Trailers,
)
from tests.h2peers import (
    MAGIC, GRPC, GET, GRPC_OK, GRPC_STATUS_0, MESSAGE, frames, drain, kinds, pump, connected, H2Server,
    RawServer,
)


# ---- the connection ---------------------------------------------------------------------

def test_preface_and_settings_are_queued_at_creation():
    client = H2ClientCodec(initial_window_size=1 << 20, max_header_list_size=8192)
    assert client.want_write
    out = client.data_to_send()
    assert out.startswith(MAGIC)
    settings, update = frames(out)
    assert isinstance(settings, SettingsFrame) and "ACK" not in settings.flags
    assert settings.settings == {SettingsFrame.ENABLE_PUSH: 0, SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20,
                                 SettingsFrame.MAX_HEADER_LIST_SIZE: 8192}
    # the connection window opened as wide as a stream's
    assert isinstance(update, WindowUpdateFrame) and update.stream_id == 0
    assert update.window_increment == (1 << 20) - 65535
    assert client.data_to_send() == b""
    server = H2Server()
    server.feed(out)  # the h2 library takes it as a client preface
    [changed] = server.take(h2.events.RemoteSettingsChanged)
    assert changed.changed_settings[SettingsFrame.ENABLE_PUSH].new_value == 0


def test_default_window_sends_no_window_update():
    assert [type(f) for f in frames(H2ClientCodec().data_to_send())] == [SettingsFrame]


def test_bad_arguments():
    with pytest.raises(ValueError):
        H2ClientCodec(max_concurrent_streams=0)
    with pytest.raises(ValueError):
        H2ClientCodec(initial_window_size=-1)
    with pytest.raises(TypeError):
        H2ClientCodec(65535)  # keyword-only


# ---- a unary gRPC call ------------------------------------------------------------------

def test_unary_grpc_call_against_our_server():
    client, server = connected()
    sid = client.request(GRPC, end_stream=False)
    assert sid == 1 and client.open_streams == 1
    client.send_data(sid, MESSAGE, end_stream=True)
    pump(client, server)
    assert kinds(drain(client)) == ["Drained"]
    req, body = drain(server)
    assert isinstance(req, RequestHeaders) and req.headers == GRPC and not req.end_stream  # wire order kept
    assert isinstance(body, Data) and body.data == MESSAGE and body.end_stream
    server.consume(sid, len(MESSAGE))
    server.respond(sid, GRPC_OK, end_stream=False)
    server.send_data(sid, MESSAGE)
    server.end_stream(sid, GRPC_STATUS_0)
    pump(client, server)
    events = drain(client)
    assert kinds(events) == ["ResponseHeaders", "Data", "Trailers", "StreamClosed"]
    head, data, trailers, closed = events
    assert head.stream_id == sid and head.headers == GRPC_OK and head.end_stream is False
    assert data.data == MESSAGE and data.end_stream is False
    assert trailers.headers == GRPC_STATUS_0
    assert closed.error_code == 0
    assert client.open_streams == 0 and client.buffered(sid) == 0
    assert kinds(drain(server)) == ["Drained", "StreamClosed"]
    assert client.statistics()["streams"] == 1


def test_unary_call_against_the_h2_library():
    client, server = H2ClientCodec(), H2Server()
    pump(client, server)
    sid = client.request(GRPC, end_stream=False)
    client.send_data(sid, MESSAGE[:4])
    client.send_data(sid, MESSAGE[4:], end_stream=True)
    pump(client, server)
    [req] = server.take(h2.events.RequestReceived)
    assert req.stream_id == sid and req.headers == GRPC
    assert b"".join(e.data for e in server.take(h2.events.DataReceived)) == MESSAGE
    assert server.take(h2.events.StreamEnded)
    server.conn.send_headers(sid, GRPC_OK)
    server.conn.send_data(sid, MESSAGE)
    server.conn.send_headers(sid, GRPC_STATUS_0, end_stream=True)
    pump(client, server)
    events = [e for e in drain(client) if not isinstance(e, Drained)]
    assert [(type(e), e.stream_id) for e in events] == [(ResponseHeaders, sid), (Data, sid), (Trailers, sid),
                                                        (StreamClosed, sid)]
    assert events[0].headers == GRPC_OK and events[2].headers == GRPC_STATUS_0 and events[3].error_code == 0


def test_request_without_body_and_response_without_body():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    [req] = drain(server)
    assert req.end_stream is True
    assert drain(client) == []  # no body buffered: no Drained
    server.respond(sid, [(b":status", b"204")], end_stream=True)
    pump(client, server)
    head, closed = drain(client)
    assert isinstance(head, ResponseHeaders) and head.end_stream is True and head.headers == [(b":status", b"204")]
    assert isinstance(closed, StreamClosed) and closed.error_code == 0


def test_grpc_trailers_only_response():
    """An immediate gRPC error: the response head carries END_STREAM and the grpc-status."""
    client, server = H2ClientCodec(), H2Server()
    pump(client, server)
    sid = client.request(GRPC, end_stream=False)
    pump(client, server)
    server.conn.send_headers(sid, GRPC_OK + [(b"grpc-status", b"12")], end_stream=True)
    pump(client, server)
    [head] = drain(client)
    assert isinstance(head, ResponseHeaders) and head.end_stream and (b"grpc-status", b"12") in head.headers
    # our half is still open: the stream ends when the request does
    assert client.open_streams == 1
    client.reset(sid, 0)
    pump(client, server)
    assert [(type(e), e.error_code) for e in drain(client)] == [(StreamClosed, 0)]
    [rst] = server.take(h2.events.StreamReset)
    assert rst.error_code == 0


def test_response_split_into_single_bytes():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    server.respond(sid, GRPC_OK, end_stream=False)
    server.send_data(sid, b"x" * 100)
    server.end_stream(sid, GRPC_STATUS_0)
    out = server.data_to_send()
    for i in range(len(out)):
        client.feed(out[i:i + 1])
    events = drain(client)
    assert kinds(events)[0] == "ResponseHeaders" and kinds(events)[-2:] == ["Trailers", "StreamClosed"]
    assert b"".join(e.data for e in events if isinstance(e, Data)) == b"x" * 100


def test_feed_takes_a_shared_buffer_and_a_length():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    server.respond(sid, GRPC_OK, end_stream=False)
    server.send_data(sid, b"payload", end_stream=True)
    data = server.data_to_send()
    shared = bytearray(data + b"\xff" * 100)  # a reused read buffer: only the first n bytes are valid
    client.feed(shared, len(data))
    shared[:] = b"\x00" * len(shared)  # the events keep their own copies
    head, body, closed = drain(client)
    assert head.headers == GRPC_OK and body.data == b"payload" and body.end_stream
    assert (type(closed), closed.error_code) == (StreamClosed, 0)


def test_end_stream_on_an_empty_data_frame():
    client = H2ClientCodec()
    raw = RawServer(client)
    sid = client.request(GET, end_stream=True)
    raw.out()
    client.feed(raw.headers(sid, [(b":status", b"200")]) + DataFrame(sid, b"abc").serialize()
                + DataFrame(sid, b"", flags=["END_STREAM"]).serialize())
    head, data, end, closed = drain(client)
    assert (data.data, data.end_stream) == (b"abc", False)
    assert (end.data, end.end_stream) == (b"", True)
    assert isinstance(closed, StreamClosed)


# ---- bodies and flow control ------------------------------------------------------------

def test_request_body_larger_than_the_peer_window_waits_for_consume():
    client, server = connected()  # the server's windows: 65535, opened only by consume()
    sid = client.request(GRPC, end_stream=False)
    client.send_data(sid, b"a" * 100000, end_stream=True)
    pump(client, server)
    got = drain(server)
    assert isinstance(got[0], RequestHeaders)
    received = sum(len(e.data) for e in got if isinstance(e, Data))
    assert received == 65535  # the window, no more
    assert client.buffered(sid) == 100000 - 65535
    assert drain(client) == []  # not drained
    pump(client, server)
    assert drain(server) == [] and client.buffered(sid) == 100000 - 65535  # stalled: nobody consumed
    server.consume(sid, received)
    pump(client, server)
    rest = drain(server)
    assert sum(len(e.data) for e in rest if isinstance(e, Data)) == 100000 - 65535
    assert rest[-1].end_stream
    assert client.buffered(sid) == 0
    assert kinds(drain(client)) == ["Drained"]


def test_response_body_window_update_only_after_consume():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    server.respond(sid, GRPC_OK, end_stream=False)
    server.send_data(sid, b"b" * 100000, end_stream=True)
    client.feed(server.data_to_send())
    events = drain(client)
    assert sum(len(e.data) for e in events if isinstance(e, Data)) == 65535
    out = frames(client.data_to_send())
    assert not any(isinstance(f, WindowUpdateFrame) for f in out)  # nothing consumed: the windows stay shut
    assert server.data_to_send() == b""  # and the server waits
    client.consume(sid, 20000)
    assert not any(isinstance(f, WindowUpdateFrame) for f in frames(client.data_to_send()))  # below half
    client.consume(sid, 45535)
    updates = [f for f in frames(client.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert {(f.stream_id, f.window_increment) for f in updates} == {(0, 65535), (sid, 65535)}
    client.consume(sid, 10**9)  # more than delivered: capped, no error
    server.feed(b"".join(f.serialize() for f in updates))
    client.feed(server.data_to_send())
    rest = drain(client)
    assert sum(len(e.data) for e in rest if isinstance(e, Data)) == 100000 - 65535
    assert kinds(rest)[-1] == "StreamClosed" and [e for e in rest if isinstance(e, Data)][-1].end_stream


def test_a_larger_window_lets_a_larger_response_through_unconsumed():
    client, server = connected(H2ClientCodec(initial_window_size=1 << 20))
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    server.respond(sid, [(b":status", b"200")], end_stream=False)
    server.send_data(sid, b"x" * 1_100_000, end_stream=True)
    pump(client, server)
    assert sum(len(e.data) for e in drain(client) if isinstance(e, Data)) == 1 << 20  # the window, no more
    assert server.buffered(sid) == 1_100_000 - (1 << 20)


def test_unconsumed_bytes_of_a_closed_stream_go_back_to_the_connection():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    server.respond(sid, GRPC_OK, end_stream=False)
    server.send_data(sid, b"c" * 40000, end_stream=True)
    client.feed(server.data_to_send())
    assert kinds(drain(client))[-1] == "StreamClosed"  # the driver never consumed the 40000 bytes
    [update] = [f for f in frames(client.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert (update.stream_id, update.window_increment) == (0, 40000)


def test_drained_each_time_the_buffered_request_bytes_reach_zero():
    client, server = connected()
    sid = client.request(GRPC, end_stream=False)
    client.send_data(sid, b"1" * 10)
    assert client.buffered(sid) == 10
    server.feed(client.data_to_send())
    assert kinds(drain(client)) == ["Drained"] and client.buffered(sid) == 0
    server.feed(client.data_to_send())
    assert drain(client) == []  # nothing buffered, nothing framed: no second Drained
    client.send_data(sid, bytearray(b"2" * 20))
    client.send_data(sid, memoryview(b"3" * 30))
    assert client.buffered(sid) == 50
    server.feed(client.data_to_send())
    assert [(type(e), e.stream_id) for e in drain(client)] == [(Drained, sid)]
    client.end_stream(sid, [(b"x-checksum", b"abc")])  # request trailers
    pump(client, server)
    events = drain(server)
    assert b"".join(e.data for e in events if isinstance(e, Data)) == b"1" * 10 + b"2" * 20 + b"3" * 30
    assert isinstance(events[-1], Trailers) and events[-1].headers == [(b"x-checksum", b"abc")]


def test_driver_mistakes_raise():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    with pytest.raises(ValueError):
        client.send_data(sid, b"x")  # the request had end_stream
    sid2 = client.request(GRPC, end_stream=False)
    client.send_data(sid2, b"x", end_stream=True)
    with pytest.raises(ValueError):
        client.send_data(sid2, b"y")  # after the body ended
    client.end_stream(sid2)  # already ending: nothing
    client.send_data(99, b"x")  # no such stream: nothing
    client.end_stream(99)
    client.reset(99)
    client.consume(99, 10)
    assert client.buffered(99) == 0
    with pytest.raises(TypeError):
        client.request([(":method", "GET")], True)  # str, not bytes
    pump(client, server)
    assert kinds(drain(server)) == ["RequestHeaders", "RequestHeaders", "Data"]


# ---- concurrency --------------------------------------------------------------------------

def test_many_concurrent_streams_and_the_peers_limit():
    client = H2ClientCodec()
    assert client.remote_max_concurrent_streams() == 100  # nghttp2's assumption before the peer's SETTINGS
    client, server = connected(client, H2Codec(max_concurrent_streams=3))
    assert client.remote_max_concurrent_streams() == 3
    sids = []
    for _ in range(3):
        assert client.can_open()
        sids.append(client.request(GET, end_stream=True))
    assert sids == [1, 3, 5] and not client.can_open() and client.open_streams == 3
    late = client.request(GET, end_stream=True)  # accepted, held by nghttp2 until a stream closes
    assert late == 7
    pump(client, server)
    assert [e.stream_id for e in drain(server)] == [1, 3, 5]
    server.respond(3, [(b":status", b"200")], end_stream=True)
    pump(client, server)
    assert [(type(e), e.stream_id) for e in drain(client)] == [(ResponseHeaders, 3), (StreamClosed, 3)]
    assert [(type(e), e.stream_id) for e in drain(server)] == [(StreamClosed, 3), (RequestHeaders, 7)]
    assert client.open_streams == 3 and not client.can_open()


def test_a_hundred_interleaved_streams():
    client, server = connected()
    sids = [client.request(GRPC, end_stream=False) for _ in range(100)]
    assert not client.can_open()  # our own cap (100) and the server's
    for sid in sids:
        client.send_data(sid, b"%d" % sid, end_stream=True)
    pump(client, server)
    bodies = {e.stream_id: e.data for e in drain(server) if isinstance(e, Data)}
    assert bodies == {sid: b"%d" % sid for sid in sids}
    for sid in reversed(sids):
        server.respond(sid, GRPC_OK, end_stream=False)
        server.send_data(sid, b"r%d" % sid)
        server.end_stream(sid, GRPC_STATUS_0)
    pump(client, server)
    events = [e for e in drain(client) if not isinstance(e, Drained)]
    assert {e.stream_id: e.data for e in events if isinstance(e, Data)} == {sid: b"r%d" % sid for sid in sids}
    assert sorted(e.stream_id for e in events if isinstance(e, StreamClosed) and e.error_code == 0) == sids
    assert client.open_streams == 0 and client.can_open()


def test_our_own_cap_and_a_peer_without_limit():
    client = H2ClientCodec(max_concurrent_streams=2)
    RawServer(client)  # SETTINGS without MAX_CONCURRENT_STREAMS: no limit
    assert client.remote_max_concurrent_streams() == 2 ** 32 - 1
    client.request(GET, end_stream=True)
    assert client.can_open()
    client.request(GET, end_stream=True)
    assert not client.can_open()


# ---- 1xx -----------------------------------------------------------------------------------

def test_informational_responses_are_dropped():
    client, server = H2ClientCodec(), H2Server()
    pump(client, server)
    sid = client.request(GRPC, end_stream=False)
    pump(client, server)
    server.conn.send_headers(sid, [(b":status", b"100")])
    server.conn.send_headers(sid, [(b":status", b"103"), (b"link", b"</a>; rel=preload")])
    pump(client, server)
    assert drain(client) == []  # not delivered
    server.conn.send_headers(sid, GRPC_OK)
    server.conn.send_data(sid, MESSAGE)
    server.conn.send_headers(sid, GRPC_STATUS_0, end_stream=True)
    pump(client, server)
    events = drain(client)
    assert kinds(events) == ["ResponseHeaders", "Data", "Trailers"]  # the request is still open
    assert events[0].headers == GRPC_OK  # the final head, not the 1xx
    assert events[2].headers == GRPC_STATUS_0  # trailers, not taken for a response head


def test_data_after_an_informational_response_is_a_stream_error():
    client = H2ClientCodec()
    raw = RawServer(client)
    sid = client.request(GET, end_stream=True)
    raw.out()
    client.feed(raw.headers(sid, [(b":status", b"100")]) + DataFrame(sid, b"early").serialize())
    assert [(type(e), e.error_code) for e in drain(client)] == [(StreamClosed, 1)]
    assert [f.error_code for f in raw.out() if isinstance(f, RstStreamFrame)] == [1]


# ---- resets ---------------------------------------------------------------------------------

def test_server_reset_gives_stream_reset_then_stream_closed():
    client, server = connected()
    sid = client.request(GRPC, end_stream=False)
    client.send_data(sid, b"x" * 100)
    pump(client, server)
    drain(client)
    server.reset(sid, 2)  # INTERNAL_ERROR
    pump(client, server)
    assert [(type(e), e.stream_id, e.error_code) for e in drain(client)] == [(StreamReset, sid, 2),
                                                                             (StreamClosed, sid, 2)]
    client.send_data(sid, b"late")  # the driver had not seen it yet: dropped, no error
    assert client.buffered(sid) == 0 and client.open_streams == 0
    assert client.statistics()["rst_received"] == 1


def test_server_refusing_a_stream_says_it_was_not_processed():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    server.reset(sid, 7)  # REFUSED_STREAM
    pump(client, server)
    assert [(type(e), e.error_code) for e in drain(client)] == [(StreamReset, 7), (StreamClosed, 7)]
    assert client.statistics()["refused_streams"] == 1


def test_client_reset_cancels_the_stream():
    client, server = connected()
    sid = client.request(GRPC, end_stream=False)
    client.send_data(sid, b"x" * 10)
    pump(client, server)
    drain(client)
    drain(server)
    client.send_data(sid, b"never sent")
    client.reset(sid)
    assert client.buffered(sid) == 0
    pump(client, server)
    assert [(type(e), e.error_code) for e in drain(client)] == [(StreamClosed, 8)]
    assert [(type(e), e.error_code) for e in drain(server)] == [(StreamReset, 8), (StreamClosed, 8)]
    assert client.statistics()["rst_sent"] == 1


def test_a_request_reset_before_it_went_out_is_never_sent():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    client.reset(sid)
    pump(client, server)
    assert [(type(e), e.stream_id, e.error_code) for e in drain(client)] == [(StreamClosed, sid, 8)]
    assert drain(server) == []


def test_many_server_resets_are_no_connection_error():
    """No rapid-reset limiter on the client: a server may refuse a burst of streams."""
    client = H2ClientCodec(max_concurrent_streams=5000)
    raw = RawServer(client)
    sids = [client.request(GET, end_stream=True) for _ in range(1500)]
    raw.out()
    client.feed(b"".join(RstStreamFrame(sid, error_code=7).serialize() for sid in sids))
    events = drain(client)
    assert len([e for e in events if isinstance(e, StreamReset)]) == 1500
    assert {e.error_code for e in events} == {7}
    assert client.open_streams == 0 and client.want_read


def test_resets_of_many_streams_over_time_trip_no_limiter():
    client, server = connected()
    for _ in range(25):
        sids = [client.request(GRPC, end_stream=False) for _ in range(80)]
        pump(client, server)
        drain(server)
        for sid in sids:
            server.reset(sid, 8)
        pump(client, server)
        assert len([e for e in drain(client) if isinstance(e, StreamReset)]) == 80
    stats = client.statistics()
    assert stats["rst_received"] == 2000 and stats["rapid_reset"] == 0 and client.can_open()


# ---- GOAWAY -------------------------------------------------------------------------------

def test_goaway_refuses_the_streams_above_its_last_stream_id():
    client, server = connected()
    first = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    unprocessed = [client.request(GET, end_stream=True) for _ in range(2)]
    client.data_to_send()  # sent, but the server never read them
    queued = client.request(GET, end_stream=True)  # not even sent
    server.goaway()
    client.feed(server.data_to_send())
    events = drain(client)
    assert (type(events[0]), events[0].error_code, events[0].last_stream_id) == (GoAwayReceived, 0, first)
    assert sorted((e.stream_id, e.error_code) for e in events[1:]) == [(sid, 7) for sid in unprocessed]
    assert not client.can_open()
    with pytest.raises(StreamRefused):
        client.request(GET, end_stream=True)
    client.data_to_send()  # the request nghttp2 still held is refused as it would go out
    assert [(type(e), e.stream_id, e.error_code) for e in drain(client)] == [(StreamClosed, queued, 7)]
    # the stream the server took goes on to its end
    server.respond(first, [(b":status", b"200")], end_stream=True)
    pump(client, server)
    assert [(type(e), e.stream_id) for e in drain(client)] == [(ResponseHeaders, first), (StreamClosed, first)]
    assert client.open_streams == 0
    stats = client.statistics()
    assert stats["goaway_received"] == 1 and stats["refused_streams"] == 3


def test_graceful_goaway_lets_every_open_stream_finish():
    client, server = connected()
    sid = client.request(GET, end_stream=True)
    pump(client, server)
    drain(server)
    server.shutdown_notice()  # last stream id 2^31-1
    client.feed(server.data_to_send())
    [ga] = drain(client)
    assert isinstance(ga, GoAwayReceived) and ga.last_stream_id == 2 ** 31 - 1
    with pytest.raises(StreamRefused):
        client.request(GET, end_stream=True)  # no new stream after any GOAWAY
    server.respond(sid, [(b":status", b"200")], end_stream=True)
    pump(client, server)
    assert [(type(e), e.error_code) for e in drain(client) if isinstance(e, StreamClosed)] == [(StreamClosed, 0)]


def test_our_goaway_refuses_new_requests():
    client, server = connected()
    client.goaway()
    assert not client.can_open()
    with pytest.raises(StreamRefused) as err:
        client.request(GET, end_stream=True)
    assert "GOAWAY" in err.value.reason
    [goaway] = [f for f in frames(client.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == 0 and goaway.last_stream_id == 0
