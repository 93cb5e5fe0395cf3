"""The HTTP/2 codec's client mode (H2ClientCodec, to gRPC upstreams), byte-level: paired in
memory with the server codec, or with hand-made frames where a server would misbehave."""

from __future__ import annotations

import pytest

from edge.worker.proto.h2codec import (
    Data,
    Drained,
    GoAwayReceived,
    H2ClientCodec,
    H2Codec,
    H2Error,
    RequestHeaders,
    ResponseHeaders,
    StreamClosed,
    StreamRefused,
    StreamReset,
    Trailers,
)

GRPC = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"up"), (b":path", b"/echo.Echo/Unary"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def pump(client: H2ClientCodec, server: H2Codec, rounds: int = 20) -> None:
    for _ in range(rounds):
        a = client.data_to_send()
        if a:
            server.feed(a)
        b = server.data_to_send()
        if b:
            client.feed(b)
        if not a and not b:
            return


def take(codec, kind=None) -> list:
    out = [e for e in codec.events if kind is None or type(e) is kind]
    codec.events.clear()
    return out


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def test_a_unary_call_with_trailers():
    client, server = H2ClientCodec(), H2Codec()
    sid = client.request(GRPC, end_stream=False)
    assert sid == 1
    client.send_data(sid, b"\x00\x00\x00\x00\x02hi")
    client.end_stream(sid)
    pump(client, server)
    req, data = take(server)
    assert type(req) is RequestHeaders and req.headers == GRPC and not req.end_stream
    assert (data.data, data.end_stream) == (b"\x00\x00\x00\x00\x02hi", True)
    assert [(type(e), e.stream_id) for e in take(client)] == [(Drained, sid)]  # the request body is out
    server.respond(sid, [(b":status", b"100")], False)  # informational: dropped by the client
    server.respond(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    server.send_data(sid, b"\x00\x00\x00\x00\x02ok")
    server.end_stream(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"")])
    pump(client, server)
    events = take(client)
    assert [type(e) for e in events] == [ResponseHeaders, Data, Trailers, StreamClosed]
    assert events[0].headers == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert not events[0].end_stream
    assert (events[1].data, events[1].end_stream) == (b"\x00\x00\x00\x00\x02ok", False)
    assert events[2].headers == [(b"grpc-status", b"0"), (b"grpc-message", b"")]
    assert events[3].error_code == 0
    assert client.open_streams == 0


def test_a_bodiless_request_and_a_headers_only_answer():
    client, server = H2ClientCodec(), H2Codec()
    sid = client.request([*GRPC[:3], (b":path", b"/x")], end_stream=True)
    pump(client, server)
    (req,) = take(server)
    assert req.end_stream
    server.respond(sid, [(b":status", b"200"), (b"grpc-status", b"12")], True)  # trailers-only
    pump(client, server)
    resp, closed = take(client)
    assert type(resp) is ResponseHeaders and resp.end_stream and resp.headers[1] == (b"grpc-status", b"12")
    assert type(closed) is StreamClosed


def test_flow_control_waits_for_consume():
    # the client's window for responses is 65535: the server stalls until the client consumes
    client, server = H2ClientCodec(), H2Codec()
    sid = client.request(GRPC, end_stream=True)
    pump(client, server)
    take(server)
    server.respond(sid, [(b":status", b"200")], False)
    server.send_data(sid, b"x" * 200_000, end_stream=True)
    pump(client, server)
    got = sum(len(e.data) for e in take(client, Data))
    assert got == 65535 and server.buffered(sid) == 200_000 - 65535
    client.consume(sid, got)
    pump(client, server)
    assert sum(len(e.data) for e in take(client, Data)) == 65535


def test_a_larger_window_is_announced():
    client, server = H2ClientCodec(initial_window_size=1 << 20), H2Codec()
    sid = client.request(GRPC, end_stream=True)
    pump(client, server)
    take(server)
    server.respond(sid, [(b":status", b"200")], False)
    server.send_data(sid, b"x" * 800_000, end_stream=True)
    pump(client, server)
    assert sum(len(e.data) for e in take(client, Data)) == 800_000


def test_request_body_backpressure_and_drained():
    client, server = H2ClientCodec(), H2Codec()  # the server's window for request bodies: 65535
    sid = client.request(GRPC, end_stream=False)
    client.send_data(sid, b"y" * 100_000)
    pump(client, server)
    assert client.buffered(sid) == 100_000 - 65535
    assert sum(len(e.data) for e in take(server, Data)) == 65535
    server.consume(sid, 65535)
    pump(client, server)
    assert client.buffered(sid) == 0
    assert [e.stream_id for e in take(client, Drained)] == [sid]
    assert sum(len(e.data) for e in take(server, Data)) == 100_000 - 65535


def test_drained_comes_when_the_request_body_is_all_framed():
    client, server = H2ClientCodec(), H2Codec()
    sid = client.request(GRPC, end_stream=False)
    client.send_data(sid, b"z" * 1000)
    pump(client, server)
    assert [e.stream_id for e in take(client, Drained)] == [sid]


def test_many_streams_and_the_peers_limit():
    client, server = H2ClientCodec(), H2Codec(max_concurrent_streams=3)
    assert client.remote_max_concurrent_streams() == 100  # nghttp2's assumption before SETTINGS
    sid = client.request(GRPC, end_stream=True)
    pump(client, server)
    assert client.remote_max_concurrent_streams() == 3
    sids = [sid] + [client.request(GRPC, end_stream=True) for _ in range(2)]
    assert sids == [1, 3, 5] and not client.can_open()
    pump(client, server)
    for s in sids:
        server.respond(s, [(b":status", b"200")], True)
    pump(client, server)
    assert sorted(e.stream_id for e in take(client, ResponseHeaders)) == sids
    assert client.can_open()


def test_a_reset_by_the_upstream():
    client, server = H2ClientCodec(), H2Codec()
    sid = client.request(GRPC, end_stream=False)
    pump(client, server)
    server.reset(sid, 2)
    pump(client, server)
    events = take(client)
    assert [(type(e), e.error_code) for e in events] == [(StreamReset, 2), (StreamClosed, 2)]
    client.send_data(sid, b"late")  # dropped: the stream is gone
    assert client.data_to_send() == b""


def test_goaway_refuses_new_streams_and_closes_unprocessed_ones_with_refused_stream():
    client, server = H2ClientCodec(), H2Codec()
    first = client.request(GRPC, end_stream=True)
    pump(client, server)
    take(server)
    second = client.request(GRPC, end_stream=True)  # queued, not yet sent
    client.feed(frame(7, 0, 0, first.to_bytes(4, "big") + (0).to_bytes(4, "big")))  # GOAWAY(last=1, NO_ERROR)
    client.data_to_send()
    events = take(client)
    assert [(e.error_code, e.last_stream_id) for e in events if type(e) is GoAwayReceived] == [(0, first)]
    assert [(e.stream_id, e.error_code) for e in events if type(e) is StreamClosed] == [(second, 7)]
    assert not client.can_open()
    with pytest.raises(StreamRefused):
        client.request(GRPC, end_stream=True)


def test_a_response_head_over_the_limit_resets_that_stream_alone():
    client, server = H2ClientCodec(max_header_list_size=1000), H2Codec()
    big = client.request(GRPC, end_stream=True)
    small = client.request(GRPC, end_stream=True)
    pump(client, server)
    take(server)
    server.respond(big, [(b":status", b"200"), (b"x-big", b"v" * 2000)], True)
    server.respond(small, [(b":status", b"200")], True)
    pump(client, server)
    events = take(client)
    assert [e.stream_id for e in events if type(e) is ResponseHeaders] == [small]
    assert [e.stream_id for e in events if type(e) is StreamClosed and e.error_code != 0] == [big]
    assert client.statistics()["header_overflow"] == 1


def test_a_bad_frame_from_the_upstream_is_a_connection_error():
    client, server = H2ClientCodec(), H2Codec()
    client.request(GRPC, end_stream=True)
    pump(client, server)
    with pytest.raises(H2Error) as err:
        client.feed(frame(4, 0, 1, b""))  # SETTINGS on a stream: PROTOCOL_ERROR
    assert err.value.code == 1
    assert b"\x07" in client.data_to_send()[3:4]  # our GOAWAY
    with pytest.raises(StreamRefused):
        client.request(GRPC, end_stream=True)


def test_a_settings_flood_from_the_upstream_is_refused():
    client = H2ClientCodec(max_outbound_ack=10)
    client.data_to_send()
    with pytest.raises(H2Error) as err:
        client.feed(frame(4, 0, 0, b"") * 100)
    assert err.value.code == 11  # ENHANCE_YOUR_CALM


def test_no_rapid_reset_limit_on_our_own_streams():
    # an upstream resetting many of our streams is not an attack on us: no GOAWAY
    client, server = H2ClientCodec(), H2Codec()
    for _ in range(40):
        sids = [client.request(GRPC, end_stream=False) for _ in range(50)]
        pump(client, server)
        take(server)
        for s in sids:
            server.reset(s, 8)
        pump(client, server)
        assert len(take(client, StreamReset)) == 50
    assert client.statistics()["rapid_reset"] == 0
