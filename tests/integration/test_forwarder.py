"""bench.forwarder, the benchmark's floor for Python proxying: it must relay every byte,
both ways, on keep-alive connections, or its numbers mean nothing."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from bench import targets
from tests.upstream import PATTERN

pytestmark = pytest.mark.integration


@pytest.fixture
def forwarder(upstream):
    relay = targets.forwarder(upstream.port)
    targets.wait_http(relay.port, "/ready")
    yield relay.port
    relay.stop()


def test_relays_keep_alive_requests_and_large_bodies_byte_for_byte(forwarder):
    with socket.create_connection(("127.0.0.1", forwarder), timeout=5) as sock:
        for _ in range(3):  # one client connection, and so one upstream connection, for all three
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = _response(sock)
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["path"] == "/echo"
    size = 4 * 1024 * 1024 + 7
    with socket.socket() as slow:  # a small receive buffer read late: the relay must keep bytes
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(10)
        slow.connect(("127.0.0.1", forwarder))
        slow.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        time.sleep(0.3)
        _, body = _response(slow)
    assert len(body) == size and body == (PATTERN * (size // len(PATTERN) + 1))[:size]
    with httpx.Client(base_url=f"http://127.0.0.1:{forwarder}", timeout=10) as client:
        upload = bytes(range(256)) * 8192
        echoed = client.post("/upload", content=upload).json()
        assert echoed["body_size"] == len(upload)


def _response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One Content-Length framed response read off `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body
