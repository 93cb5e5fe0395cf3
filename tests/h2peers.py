"""Peers for byte-level tests of the HTTP/2 codec: our own server codec, the pure-Python
h2 library as a server, frames written by hand (hyperframe, hpack), and moving bytes
between them. No sockets."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.settings
import hpack
from hyperframe.frame import Frame, HeadersFrame, SettingsFrame

from edge.worker.proto.h2codec import H2ClientCodec, H2Codec

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
