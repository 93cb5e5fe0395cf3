"""HTTP/2 codec (nghttp2 underneath), byte level, no sockets: the pure-Python h2 library is
the client that writes and reads the bytes; hyperframe and hpack write the hostile ones."""

from __future__ import annotations

import os

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame,
    WindowUpdateFrame,
)

from edge.worker.proto.h2codec import (
    Data, Drained, GoAwayReceived, H2Codec, H2Error, RequestHeaders, StreamClosed, StreamReset, Trailers,
)
from tests.h2peers import frames

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/a?b=c"),
       (b"user-agent", b"test")]
POST = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/up")]
OK = [(b":status", b"200"), (b"content-type", b"text/plain")]


def client(validate: bool = True, **settings) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=validate,
                                       normalize_outbound_headers=validate, validate_inbound_headers=True)
    c = h2.connection.H2Connection(config)
    c.initiate_connection()
    if settings:
        c.update_settings({getattr(h2.settings.SettingCodes, k.upper()): v for k, v in settings.items()})
    return c




def drain(codec: H2Codec) -> list:
    events = list(codec.events)
    codec.events.clear()
    return events


def to_server(c, codec: H2Codec) -> list:
    codec.feed(c.data_to_send())
    return drain(codec)


def to_client(codec: H2Codec, c) -> list:
    return c.receive_data(codec.data_to_send())


def connected(validate: bool = True, codec: H2Codec | None = None, **settings):
    codec = codec or H2Codec()
    c = client(validate, **settings)
    assert to_server(c, codec) == []
    to_client(codec, c)
    assert to_server(c, codec) == []  # the client's SETTINGS ACK
    return c, codec


def kinds(events) -> list:
    return [type(e).__name__ for e in events]


# ---- the exchange ------------------------------------------------------------------------

def test_preface_and_settings_exchange():
    codec = H2Codec(max_concurrent_streams=50, initial_window_size=100000, max_header_list_size=8192)
    out = codec.data_to_send()
    settings = frames(out)[0]
    assert isinstance(settings, SettingsFrame) and not settings.flags
    assert settings.settings == {SettingsFrame.MAX_CONCURRENT_STREAMS: 50, SettingsFrame.INITIAL_WINDOW_SIZE: 100000,
                                 SettingsFrame.MAX_HEADER_LIST_SIZE: 8192, SettingsFrame.ENABLE_CONNECT_PROTOCOL: 0}
    # a connection window as large as one stream's
    assert any(isinstance(f, WindowUpdateFrame) and f.stream_id == 0 for f in frames(out))
    c = client()
    assert to_server(c, codec) == []
    events = c.receive_data(out + codec.data_to_send())
    assert {type(e) for e in events} == {h2.events.RemoteSettingsChanged, h2.events.SettingsAcknowledged,
                                         h2.events.WindowUpdated}
    assert c.remote_settings.max_concurrent_streams == 50
    assert codec.want_read and not codec.want_write and codec.open_streams == 0


def test_get_end_stream_and_response():
    c, codec = connected()
    c.send_headers(1, GET, end_stream=True)
    [req] = to_server(c, codec)
    assert isinstance(req, RequestHeaders) and req.stream_id == 1 and req.end_stream is True
    assert req.headers == GET  # wire order, pseudo-headers included
    assert all(type(n) is bytes and type(v) is bytes for n, v in req.headers)
    assert codec.open_streams == 1
    codec.respond(1, OK + [(b"content-length", b"5")], end_stream=False)
    codec.send_data(1, b"hello", end_stream=True)
    events = to_client(codec, c)
    assert kinds(events) == ["ResponseReceived", "DataReceived", "StreamEnded"]
    assert events[0].headers[0] == (b":status", b"200") and events[1].data == b"hello"
    assert kinds(drain(codec)) == ["Drained", "StreamClosed"]
    assert codec.open_streams == 0 and codec.buffered(1) == 0


def test_response_without_body_and_header_names_lower_case():
    c, codec = connected()
    c.send_headers(1, GET + [(b"X-Mixed-Case", b"v")], end_stream=True)
    [req] = to_server(c, codec)
    assert (b"x-mixed-case", b"v") in req.headers
    codec.respond(1, [(b":status", b"204")], end_stream=True)
    events = to_client(codec, c)
    assert kinds(events) == ["ResponseReceived", "StreamEnded"]
    assert [type(e) for e in drain(codec)] == [StreamClosed]  # nothing was buffered: no Drained


def test_informational_response_first():
    c, codec = connected()
    c.send_headers(1, POST + [(b"expect", b"100-continue")])
    to_server(c, codec)
    codec.respond(1, [(b":status", b"100")], end_stream=False)
    assert kinds(to_client(codec, c)) == ["InformationalResponseReceived"]
    codec.respond(1, OK, end_stream=True)
    assert kinds(to_client(codec, c)) == ["ResponseReceived", "StreamEnded"]


def test_feed_takes_a_shared_buffer_and_a_length():
    c, codec = connected()
    c.send_headers(1, GET, end_stream=True)
    data = c.data_to_send()
    shared = bytearray(data + b"\x00" * 100)  # the worker's read buffer: only the first n bytes are valid
    codec.feed(shared, len(data))
    shared[:] = b"\xff" * len(shared)  # reused by the next read: the events keep their own copies
    [req] = drain(codec)
    assert req.headers == GET


def test_split_feeds_one_byte_at_a_time():
    codec = H2Codec()
    c = client()
    c.send_headers(1, POST)
    c.send_data(1, b"x" * 100, end_stream=True)
    data = c.data_to_send()
    for i in range(len(data)):
        codec.feed(data[i:i + 1])
    events = drain(codec)
    assert isinstance(events[0], RequestHeaders)
    assert b"".join(e.data for e in events if isinstance(e, Data)) == b"x" * 100
    assert events[-1].end_stream


# ---- request bodies and flow control ----------------------------------------------------

def test_post_body_in_three_frames_window_update_only_after_consume():
    c, codec = connected()
    c.send_headers(1, POST + [(b"content-length", b"48000")])
    for i in range(3):
        c.send_data(1, bytes([65 + i]) * 16000, end_stream=i == 2)
    events = to_server(c, codec)
    assert kinds(events) == ["RequestHeaders", "Data", "Data", "Data"]
    assert [len(e.data) for e in events[1:]] == [16000] * 3
    assert [e.end_stream for e in events[1:]] == [False, False, True]
    assert events[2].data == b"B" * 16000
    assert not any(isinstance(f, WindowUpdateFrame) for f in frames(codec.data_to_send()))  # not consumed yet
    codec.consume(1, 16000)
    assert not any(isinstance(f, WindowUpdateFrame) for f in frames(codec.data_to_send()))  # below half the window
    codec.consume(1, 32000)
    updates = [f for f in frames(codec.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert {f.stream_id for f in updates} == {0, 1} and all(f.window_increment == 48000 for f in updates)


def test_end_stream_on_an_empty_data_frame():
    c, codec = connected()
    c.send_headers(1, POST)
    c.send_data(1, b"abc")
    events = to_server(c, codec)
    assert events[-1].data == b"abc" and events[-1].end_stream is False
    c.end_stream(1)
    [end] = to_server(c, codec)
    assert isinstance(end, Data) and end.data == b"" and end.end_stream is True


def test_padding_is_excluded():
    c, codec = connected()
    c.send_headers(1, POST)
    codec.feed(c.data_to_send() + DataFrame(1, b"payload", flags=["END_STREAM", "PADDED"], pad_length=30).serialize())
    events = drain(codec)
    assert events[-1].data == b"payload" and events[-1].end_stream


def test_unconsumed_bytes_of_a_closed_stream_go_back_to_the_connection():
    c, codec = connected()
    c.send_headers(1, POST)
    for _ in range(3):
        c.send_data(1, b"x" * 13000)
    to_server(c, codec)
    c.reset_stream(1)
    assert kinds(to_server(c, codec)) == ["StreamReset", "StreamClosed"]
    updates = [f for f in frames(codec.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert [(f.stream_id, f.window_increment) for f in updates] == [(0, 39000)]
    codec.consume(1, 39000)  # a closed stream: nothing more
    assert codec.data_to_send() == b""


def test_response_larger_than_the_peer_window_waits_for_window_update():
    c, codec = connected(initial_window_size=1000)
    c.send_headers(1, GET, end_stream=True)
    to_server(c, codec)
    codec.respond(1, OK, end_stream=False)
    codec.send_data(1, b"a" * 2500, end_stream=True)
    assert codec.buffered(1) == 2500
    events = to_client(codec, c)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 1000
    assert codec.buffered(1) == 1500 and drain(codec) == []  # no Drained yet
    assert codec.data_to_send() == b""  # nothing until the window opens
    c.acknowledge_received_data(1000, 1)
    to_server(c, codec)
    events = to_client(codec, c)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 1000
    assert codec.buffered(1) == 500 and drain(codec) == []
    c.acknowledge_received_data(1000, 1)
    to_server(c, codec)
    events = to_client(codec, c)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 500
    assert isinstance(events[-1], h2.events.StreamEnded)
    assert codec.buffered(1) == 0
    assert kinds(drain(codec)) == ["Drained", "StreamClosed"]


def test_body_sent_as_it_comes_and_drained_each_time():
    c, codec = connected()
    c.send_headers(1, GET, end_stream=True)
    to_server(c, codec)
    codec.respond(1, OK, end_stream=False)
    assert kinds(to_client(codec, c)) == ["ResponseReceived"]  # the provider waits (deferred)
    for part in (b"one", b"two"):
        codec.send_data(1, part)
        assert codec.buffered(1) == 3
        events = to_client(codec, c)
        assert [e.data for e in events] == [part]
        assert kinds(drain(codec)) == ["Drained"]
    codec.end_stream(1)
    events = to_client(codec, c)
    assert kinds(events) == ["DataReceived", "StreamEnded"] and events[0].data == b""  # an empty DATA frame
    assert kinds(drain(codec)) == ["StreamClosed"]


# ---- trailers ---------------------------------------------------------------------------

def test_trailers_both_ways():
    c, codec = connected()
    c.send_headers(1, POST + [(b"te", b"trailers")])
    c.send_data(1, b"body")
    c.send_headers(1, [(b"x-checksum", b"abc")], end_stream=True)
    events = to_server(c, codec)
    assert kinds(events) == ["RequestHeaders", "Data", "Trailers"]
    assert events[2].stream_id == 1 and events[2].headers == [(b"x-checksum", b"abc")]
    codec.respond(1, OK, end_stream=False)
    codec.send_data(1, b"answer")
    codec.end_stream(1, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    events = to_client(codec, c)
    assert kinds(events) == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert events[2].headers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
    assert kinds(drain(codec)) == ["Drained", "StreamClosed"]


def test_trailers_without_end_stream_are_a_stream_error():
    c, codec = connected(validate=False)
    c.send_headers(1, POST)
    to_server(c, codec)
    enc = c.encoder
    codec.feed(HeadersFrame(1, enc.encode([(b"x-t", b"1")]), flags=["END_HEADERS"]).serialize())
    events = drain(codec)  # no Trailers; the RST_STREAM may already be serialised (then StreamClosed came)
    [rst] = [f for f in frames(codec.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert rst.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert [(type(e), e.error_code) for e in events + drain(codec)] == [(StreamClosed, 1)]


# ---- resets and GOAWAY ------------------------------------------------------------------

def test_peer_reset_gives_stream_reset_then_stream_closed():
    c, codec = connected()
    c.send_headers(1, GET, end_stream=True)
    to_server(c, codec)
    codec.respond(1, OK, end_stream=False)
    codec.send_data(1, b"partial")
    c.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    events = to_server(c, codec)
    assert [(type(e), e.stream_id, e.error_code) for e in events] == [(StreamReset, 1, 8), (StreamClosed, 1, 8)]
    assert codec.buffered(1) == 0
    codec.send_data(1, b"more")  # the driver had not seen the reset yet: dropped
    codec.respond(3, OK, end_stream=True)  # a stream that never was: nothing
    assert codec.statistics()["rst_received"] == 1 and codec.statistics()["rst_premature"] == 0


def test_server_reset():
    c, codec = connected()
    c.send_headers(1, POST)
    to_server(c, codec)
    codec.reset(1)
    events = to_client(codec, c)
    assert [(type(e), e.error_code) for e in events] == [(h2.events.StreamReset, h2.errors.ErrorCodes.CANCEL)]
    assert [(type(e), e.error_code) for e in drain(codec)] == [(StreamClosed, 8)]
    assert codec.statistics()["rst_sent"] == 1 and codec.open_streams == 0


@pytest.mark.parametrize("body", [b"", b"too large"])
def test_reset_no_error_after_a_complete_response_waits_for_it(body):
    """413 before the request body: respond, then RST_STREAM(NO_ERROR) so that the client
    stops sending; the RST goes after the response, which it would otherwise cancel."""
    c, codec = connected()
    c.send_headers(1, POST)
    c.send_data(1, b"x" * 100)
    to_server(c, codec)
    codec.respond(1, [(b":status", b"413")], end_stream=not body)
    if body:
        codec.send_data(1, body, end_stream=True)
    codec.reset(1, 0)
    events = to_client(codec, c)
    assert kinds(events) == ["ResponseReceived"] + ["DataReceived"] * bool(body) + ["StreamEnded", "StreamReset"]
    assert events[-1].error_code == 0
    assert [(type(e), e.error_code) for e in drain(codec) if not isinstance(e, Drained)] == [(StreamClosed, 0)]


def test_reset_no_error_when_the_request_had_ended_sends_no_reset():
    c, codec = connected()
    c.send_headers(1, GET, end_stream=True)
    to_server(c, codec)
    codec.respond(1, [(b":status", b"404")], end_stream=True)
    codec.reset(1, 0)
    assert kinds(to_client(codec, c)) == ["ResponseReceived", "StreamEnded"]
    assert kinds(drain(codec)) == ["StreamClosed"] and codec.statistics()["rst_sent"] == 0


def test_graceful_goaway_lets_open_streams_finish():
    c, codec = connected()
    c.send_headers(1, GET, end_stream=True)
    to_server(c, codec)
    codec.shutdown_notice()
    [notice] = to_client(codec, c)
    assert isinstance(notice, h2.events.ConnectionTerminated) and notice.last_stream_id == 2 ** 31 - 1
    # still accepted after the notice (h2's client stops at any GOAWAY: the frame by hand)
    codec.feed(HeadersFrame(3, c.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert kinds(to_server(c, codec)) == ["RequestHeaders"]
    codec.goaway()
    [goaway] = to_client(codec, c)
    assert goaway.error_code == 0 and goaway.last_stream_id == 3
    # a stream opened after GOAWAY is ignored; the open ones finish
    codec.feed(HeadersFrame(5, c.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert drain(codec) == []
    assert codec.want_read
    for sid in (1, 3):
        codec.respond(sid, OK, end_stream=False)
        codec.send_data(sid, b"done", end_stream=True)
    codec.data_to_send()
    assert sorted(kinds(drain(codec))) == ["Drained", "Drained", "StreamClosed", "StreamClosed"]
    assert not codec.want_read and not codec.want_write  # done: close the connection


def test_a_connection_error_after_our_goaway_still_raises():
    c, codec = connected()
    codec.shutdown_notice()
    codec.goaway()
    codec.shutdown_notice()  # too late: nothing queued
    with pytest.raises(H2Error) as err:
        codec.feed(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    assert err.value.code == 1
    goaways = [f for f in frames(codec.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert [f.error_code for f in goaways] == [0, 0, 1]


def test_goaway_received():
    c, codec = connected()
    c.close_connection(error_code=0, last_stream_id=0)
    [ev] = to_server(c, codec)
    assert isinstance(ev, GoAwayReceived) and ev.error_code == 0 and ev.last_stream_id == 0
    assert codec.statistics()["goaway_received"] == 1


# ---- malformed requests: a stream error, no event ---------------------------------------

@pytest.mark.parametrize("headers", [
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a")],  # no :path
    GET + [(b"connection", b"keep-alive")],
    GET + [(b"transfer-encoding", b"chunked")],
    [(b":path", b"/")] + GET[:3] + [(b":path", b"/again")],  # duplicate pseudo-header
    GET[:2] + [(b"x", b"1"), (b":authority", b"a"), (b":path", b"/")],  # pseudo-header after a field
    GET + [(b"te", b"gzip")],
    GET + [(b"Upper", b"x")],
])
def test_malformed_request_is_reset_without_an_event(headers):
    c, codec = connected(validate=False)
    c.send_headers(1, headers, end_stream=True)
    assert to_server(c, codec) == []
    [rst] = [f for f in frames(codec.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert rst.stream_id == 1 and rst.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert drain(codec) == [] and codec.open_streams == 0
    c.send_headers(3, GET, end_stream=True)  # the connection goes on
    assert kinds(to_server(c, codec)) == ["RequestHeaders"]


def test_content_length_against_data_is_checked():
    c, codec = connected(validate=False)
    c.send_headers(1, POST + [(b"content-length", b"3")])
    c.send_data(1, b"too long", end_stream=True)
    events = to_server(c, codec)
    assert kinds(events) == ["RequestHeaders", "StreamClosed"] or kinds(events) == ["RequestHeaders"]
    [rst] = [f for f in frames(codec.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert rst.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert "StreamClosed" in kinds(events + drain(codec))


# ---- attacks ----------------------------------------------------------------------------

def test_bad_preface():
    codec = H2Codec()
    with pytest.raises(H2Error) as err:
        codec.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert err.value.code == 1 and "preface" in err.value.reason
    out = frames(codec.data_to_send())
    assert isinstance(out[0], SettingsFrame) and isinstance(out[-1], GoAwayFrame) and out[-1].error_code == 1
    assert not codec.want_read and not codec.want_write
    codec.feed(b"more")  # ignored


def flood(frame: bytes, n: int = 2000) -> H2Codec:
    c, codec = connected()
    with pytest.raises(H2Error) as err:
        codec.feed(frame * n)
    assert err.value.code == 11
    out = frames(codec.data_to_send())
    assert isinstance(out[-1], GoAwayFrame) and out[-1].error_code == 11
    assert codec.statistics()["flood"] == 1
    return codec


def test_settings_flood():
    flood(SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0}).serialize())


def test_ping_flood():
    flood(PingFrame(0, opaque_data=b"12345678").serialize())


def test_settings_flood_across_feeds():
    c, codec = connected(codec=H2Codec(max_outbound_ack=100))
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    with pytest.raises(H2Error) as err:
        for _ in range(20):  # the client never reads: the ACKs pile up in nghttp2
            codec.feed(ping * 10)
    assert err.value.code == 11


def test_too_many_settings_entries():
    c, codec = connected(codec=H2Codec(max_settings=8))
    frame = SettingsFrame(0, settings={0x100 + i: 0 for i in range(9)})  # unknown ids: ignored, but counted
    with pytest.raises(H2Error) as err:
        codec.feed(frame.serialize())
    assert err.value.code == 11


def big_block(c, size: int) -> tuple[bytes, list]:
    headers = GET + [(b"x-big-%d" % i, os.urandom(4000).hex().encode()) for i in range(size // 8000 + 1)]
    return c.encoder.encode(headers, huffman=False), headers


def header_frames(block: bytes, chunk: int = 16384, end_stream: bool = True) -> bytes:
    parts = [block[i:i + chunk] for i in range(0, len(block), chunk)]
    out = HeadersFrame(1, parts[0], flags=["END_STREAM"] if end_stream else []).serialize()
    for i, part in enumerate(parts[1:], 1):
        out += ContinuationFrame(1, part, flags=["END_HEADERS"] if i == len(parts) - 1 else []).serialize()
    return out


@pytest.mark.parametrize("end_stream", [True, False])
def test_header_list_over_the_limit_over_continuations_is_refused(end_stream):
    c, codec = connected(validate=False)
    block, _ = big_block(c, 70000)  # 5 frames: within nghttp2's CONTINUATION limit
    codec.feed(header_frames(block, end_stream=end_stream))
    assert drain(codec) == []
    out = codec.data_to_send()
    sent = frames(out)
    [head] = [f for f in sent if isinstance(f, HeadersFrame)]
    assert "END_STREAM" in head.flags
    assert c.decoder.decode(head.data, raw=True) == [(b":status", b"431")]
    rst = [f.error_code for f in sent if isinstance(f, RstStreamFrame)]
    assert rst == ([] if end_stream else [0])
    if not end_stream:  # its body is given back to the connection at once, and never delivered
        codec.feed(DataFrame(1, b"x" * 1000, flags=["END_STREAM"]).serialize())
    assert drain(codec) == [] and codec.open_streams == 0
    assert codec.statistics()["header_overflow"] == 1
    c2, codec2 = connected(codec=H2Codec(max_header_list_size=1 << 20))  # the same block under a larger limit
    codec2.feed(header_frames(big_block(c2, 70000)[0]))
    assert kinds(drain(codec2)) == ["RequestHeaders"]


def test_hpack_bomb_is_bounded():
    """One large header in the dynamic table, then referenced by index over and over: the
    header list grows ~4 KB per byte on the wire; it is refused at the limit."""
    c, codec = connected(validate=False)
    enc = hpack.Encoder()
    first = enc.encode(GET + [(b"x-bomb", b"b" * 4000)], huffman=False)
    codec.feed(HeadersFrame(1, first, flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert kinds(drain(codec)) == ["RequestHeaders"]
    index = enc.encode([(b"x-bomb", b"b" * 4000)])  # one byte: the dynamic table's entry
    assert len(index) == 1
    block = enc.encode(GET) + index * 5000  # 20 MB of header list in 5 KB
    codec.feed(HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert drain(codec) == []
    assert codec.statistics()["header_overflow"] == 1


def test_trailers_over_the_limit_reset_the_stream():
    c, codec = connected(validate=False, codec=H2Codec(max_header_list_size=4096))
    c.send_headers(1, POST)
    to_server(c, codec)
    codec.feed(HeadersFrame(1, c.encoder.encode([(b"x-t", b"v" * 5000)]), flags=["END_HEADERS", "END_STREAM"])
               .serialize())
    assert drain(codec) == []
    [rst] = [f for f in frames(codec.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert rst.error_code == 11
    assert kinds(drain(codec)) == ["StreamClosed"]


def test_continuation_flood():
    c, codec = connected(validate=False)
    block = c.encoder.encode(GET)
    data = HeadersFrame(1, block, flags=["END_STREAM"]).serialize()
    data += ContinuationFrame(1, b"").serialize() * 100
    with pytest.raises(H2Error) as err:
        codec.feed(data)
    assert err.value.code == 11
    assert drain(codec) == []
    assert isinstance(frames(codec.data_to_send())[-1], GoAwayFrame)


def test_rapid_reset():
    c, codec = connected(validate=False)
    enc = c.encoder
    data = b"".join(HeadersFrame(sid, enc.encode(GET), flags=["END_HEADERS", "END_STREAM"]).serialize()
                    + RstStreamFrame(sid, error_code=8).serialize() for sid in range(1, 20001, 2))
    with pytest.raises(H2Error) as err:
        codec.feed(data)
    assert err.value.code == 11 and err.value.reason == "rapid reset"
    stats = codec.statistics()
    assert stats["rapid_reset"] == 1 and stats["rst_received"] == 201 and stats["rst_premature"] == 201
    out = frames(codec.data_to_send())
    assert isinstance(out[-1], GoAwayFrame) and out[-1].error_code == 11
    assert not codec.want_read


def test_resets_of_answered_streams_are_not_premature():
    c, codec = connected()
    for sid in range(1, 800, 2):  # 400 streams, each answered before the client resets it
        c.send_headers(sid, GET, end_stream=True)
        to_server(c, codec)
        codec.respond(sid, OK, end_stream=False)
        to_client(codec, c)
        c.reset_stream(sid)
        to_server(c, codec)
    stats = codec.statistics()
    assert stats["rst_received"] == 400 and stats["rst_premature"] == 0 and stats["rapid_reset"] == 0


def test_compression_error_is_a_connection_error():
    c, codec = connected(validate=False)
    with pytest.raises(H2Error) as err:
        codec.feed(HeadersFrame(1, b"\xff\xff\xff\xff\xff", flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert err.value.code == 9  # COMPRESSION_ERROR
    assert isinstance(frames(codec.data_to_send())[-1], GoAwayFrame)


def test_frame_larger_than_max_frame_size():
    c, codec = connected(validate=False)
    c.send_headers(1, POST)
    to_server(c, codec)
    with pytest.raises(H2Error) as err:
        codec.feed(DataFrame(1, b"x" * 20000).serialize())
    assert err.value.code == 6  # FRAME_SIZE_ERROR


def test_driver_mistakes_raise():
    c, codec = connected()
    c.send_headers(1, GET, end_stream=True)
    to_server(c, codec)
    with pytest.raises(ValueError):
        codec.send_data(1, b"x")  # before respond
    codec.respond(1, OK, end_stream=True)
    with pytest.raises(ValueError):
        codec.respond(1, OK, end_stream=True)
    with pytest.raises(ValueError):
        codec.send_data(1, b"x")  # after a response without body
    c.send_headers(3, GET, end_stream=True)
    to_server(c, codec)
    with pytest.raises(TypeError):
        codec.respond(3, [(":status", "200")], True)  # str, not bytes


def test_a_stream_id_below_one_already_opened_and_never_used_is_a_connection_error():
    """RFC 9113 §5.1.1 (h2spec http2/5.1.1/2): HEADERS on 5, then on 3."""
    c, codec = connected()
    codec.feed(HeadersFrame(5, c.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert kinds(drain(codec)) == ["RequestHeaders"]
    with pytest.raises(H2Error) as err:
        codec.feed(HeadersFrame(3, c.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert err.value.code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert [f for f in frames(codec.data_to_send()) if isinstance(f, GoAwayFrame)][0].error_code == 1


def test_headers_on_a_used_stream_after_its_reset_stay_a_stream_matter():
    """Trailers the client sent before it saw our RST_STREAM are not a connection error."""
    c, codec = connected()
    codec.feed(HeadersFrame(1, c.encoder.encode(POST), flags=["END_HEADERS"]).serialize())
    codec.feed(HeadersFrame(3, c.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"]).serialize())
    drain(codec)
    codec.reset(1, 8)
    codec.data_to_send()
    codec.feed(HeadersFrame(1, c.encoder.encode([(b"x-trailer", b"late")]), flags=["END_HEADERS", "END_STREAM"])
               .serialize())
    assert codec.want_read  # the connection goes on
