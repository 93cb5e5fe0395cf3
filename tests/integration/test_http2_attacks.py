"""The known HTTP/2 attacks against the real `edge serve` with ONE worker, so the offender and
a well-behaved client share the same reactor: the offender's connection is closed (GOAWAY,
then EOF) and counted, and the other client's requests all succeed without a stall."""

from __future__ import annotations

import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame,
)

from tests.conftest import mapping
from tests.integration.test_limits import metrics

pytestmark = pytest.mark.integration

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"edge.test"), (b":path", b"/api/x")]
GROSS_BOUND = 2.0  # seconds any one request of the well-behaved client may take meanwhile


SEND_TIMEOUT = 1.0  # --send-timeout: how long a shut window may hold a response


@pytest.fixture
def one_worker(make_edge, upstream):
    return make_edge({"m.yaml": mapping("api", upstream.service, "/api/")}, workers=1,
                     extra_args=("--send-timeout", str(SEND_TIMEOUT)))


class WellBehaved(threading.Thread):
    """Sequential h2 GETs on its own connection until stopped; records each latency."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                while not self.stop.is_set():
                    started = time.monotonic()
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, GET, end_stream=True)
                    sock.sendall(conn.data_to_send())
                    status, ended = None, False
                    while not ended:
                        data = sock.recv(65536)
                        if not data:
                            self.failures.append("connection closed")
                            return
                        for event in conn.receive_data(data):
                            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                                status = dict(event.headers)[b":status"]
                            elif isinstance(event, h2.events.DataReceived):
                                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                                ended = True
                        sock.sendall(conn.data_to_send())
                    self.latencies.append(time.monotonic() - started)
                    if status != b"200":
                        self.failures.append(f"status {status}")
        except OSError as exc:
            self.failures.append(repr(exc))


def settings_frame() -> bytes:
    return SettingsFrame(0).serialize()


def attack(port: int, payload: bytes, chunks: int = 1) -> list:
    """Send the preface, SETTINGS, then `payload` `chunks` times, without reading; then
    read everything until the server closes. Returns the frames received."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(PREFACE + settings_frame())
        try:
            for _ in range(chunks):
                sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-flood: the point
        data = b""
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                piece = sock.recv(1 << 20)
                if not piece:
                    break
                data += piece
        except ConnectionResetError:
            pass
        else:
            assert time.monotonic() < deadline, "the offender's connection was never closed"
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


def rapid_reset() -> bytes:
    enc = hpack.Encoder()
    return b"".join(HeadersFrame(sid, enc.encode(GET), flags=["END_HEADERS"]).serialize()
                    + RstStreamFrame(sid, error_code=8).serialize() for sid in range(1, 2001, 2))


def continuation_flood() -> bytes:
    enc = hpack.Encoder()
    first = HeadersFrame(1, enc.encode(GET), flags=[]).serialize()
    return first + b"".join(ContinuationFrame(1, enc.encode([(b"x-pad", b"a" * 100)])).serialize()
                            for _ in range(2000))


def hpack_bomb() -> bytes:
    """One 4 KiB header into the dynamic table, then thousands of one-byte references to it."""
    enc = hpack.Encoder()
    block = enc.encode(GET + [(b"x-bomb", b"b" * 4000)])
    index = enc.encode([(b"x-bomb", b"b" * 4000)])  # now indexed: a byte or two
    return HeadersFrame(1, block + index * 4000, flags=["END_HEADERS", "END_STREAM"]).serialize()


def zero_window() -> bytes:
    """A shut window (SETTINGS_INITIAL_WINDOW_SIZE 0), then a 4 MiB download."""
    enc = hpack.Encoder()
    path = [(b":path", b"/api/bytes/4194304") if n == b":path" else (n, v) for n, v in GET]
    return (SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}).serialize()
            + HeadersFrame(1, enc.encode(path), flags=["END_HEADERS", "END_STREAM"]).serialize())


ATTACKS = {
    "zero-window stall": (zero_window, 1),
    "rapid reset (CVE-2023-44487)": (rapid_reset, 1),
    "SETTINGS flood": (lambda: settings_frame() * 5000, 4),
    "PING flood": (lambda: PingFrame(0, opaque_data=b"12345678").serialize() * 5000, 4),
    "CONTINUATION flood": (continuation_flood, 1),
    "HPACK bomb": (hpack_bomb, 1),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_the_offender_is_closed_and_counted_and_others_are_not_slowed(one_worker, name):
    build, chunks = ATTACKS[name]
    before = metrics(one_worker).get("edge_http2_connection_errors_total", 0)
    good = WellBehaved(one_worker.port)
    good.start()
    deadline = time.monotonic() + 10
    while not good.latencies and time.monotonic() < deadline:
        time.sleep(0.01)
    assert good.latencies, good.failures
    try:
        frames = attack(one_worker.port, build(), chunks)
        time.sleep(0.3)  # the well-behaved client goes on after the attack too
    finally:
        good.stop.set()
        good.join(15)
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[-1].error_code in (1, 9, 11), (name, [type(f).__name__ for f in frames][-5:])
    deadline = time.monotonic() + 10
    while metrics(one_worker).get("edge_http2_connection_errors_total", 0) <= before:
        assert time.monotonic() < deadline, f"{name} was not counted"
        time.sleep(0.1)
    assert not good.failures, good.failures
    assert len(good.latencies) >= 2 and max(good.latencies) < GROSS_BOUND, (len(good.latencies), max(good.latencies))
