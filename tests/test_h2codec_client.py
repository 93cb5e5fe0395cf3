"""HTTP/2 client codec (H2ClientCodec, nghttp2 underneath), byte level, no sockets: the
server is our own H2Codec, the pure-Python h2 library, or frames written by hand with
hyperframe and hpack (the hostile ones)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, PushPromiseFrame, RstStreamFrame, SettingsFrame,
    WindowUpdateFrame,
)

from edge.worker.proto.h2codec import (
    Data, Drained, GoAwayReceived, H2ClientCodec, H2Codec, H2Error, RequestHeaders, ResponseHeaders, StreamClosed,
    StreamRefused, StreamReset, Trailers,
)

MAGIC = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GRPC = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"upstream:50051"),
        (b":path", b"/helloworld.Greeter/SayHello"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"upstream"), (b":path", b"/")]
GRPC_OK = [(b":status", b"200"), (b"content-type", b"application/grpc")]
GRPC_STATUS_0 = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
MESSAGE = b"\x00\x00\x00\x00\x07" + b"\x0a\x05world"  # a length-prefixed gRPC message


def frames(data: bytes) -> list:
    """The frames in a codec's output (the client preface's magic skipped)."""
    if data.startswith(MAGIC):
        data = data[len(MAGIC):]
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


def drain(codec) -> list:
    events = list(codec.events)
    codec.events.clear()
    return events


def kinds(events) -> list:
    return [type(e).__name__ for e in events]


def pump(client: H2ClientCodec, server) -> None:
    """Move bytes both ways until neither side has any (events stay queued)."""
    for _ in range(1000):
        up = client.data_to_send()
        if up:
            server.feed(up)
        down = server.data_to_send()
        if down:
            client.feed(down)
        if not up and not down:
            return
    raise AssertionError("the peers never went quiet")


def connected(client: H2ClientCodec | None = None, server: H2Codec | None = None):
    """A client codec and our server codec past the SETTINGS exchange."""
    client = client or H2ClientCodec()
    server = server or H2Codec()
    pump(client, server)
    assert drain(client) == [] and drain(server) == []
    return client, server


class H2Server:
    """The h2 library as the server, with the codecs' feed/data_to_send shape."""

    def __init__(self, **settings):
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings({getattr(h2.settings.SettingCodes, k.upper()): v for k, v in settings.items()})
        self.events: list = []

    def feed(self, data: bytes) -> None:
        self.events += self.conn.receive_data(data)

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    def take(self, kind) -> list:
        out = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return out


class RawServer:
    """A server whose frames are written by hand: SETTINGS exchange done, one HPACK encoder."""

    def __init__(self, client: H2ClientCodec, **settings):
        self.client = client
        self.enc = hpack.Encoder()
        self.sent = frames(client.data_to_send())  # the client's preface and SETTINGS
        client.feed(SettingsFrame(0, settings=settings).serialize() + SettingsFrame(0, flags=["ACK"]).serialize())
        self.sent += frames(client.data_to_send())  # the ACK of our SETTINGS
        assert drain(client) == []

    def headers(self, sid: int, headers: list, end_stream: bool = False) -> bytes:
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        return HeadersFrame(sid, self.enc.encode(headers), flags=flags).serialize()

    def out(self) -> list:
        """The frames the client wrote since last asked."""
        return frames(self.client.data_to_send())


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
