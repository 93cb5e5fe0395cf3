"""The connection handler in-process, for what a real gateway cannot be made to do."""

from __future__ import annotations

import gc
import socket
import time

import trio

from edge.resources.base import RawObject
from edge.supervisor.compile import compile
from edge.worker.conn import ClientConnection
from edge.worker.reactor import EPOLLIN, EPOLLOUT, EPOLLRDHUP
from edge.worker.router import Router
from edge.worker.state import WorkerState


class BrokenRouter(Router):
    def match(self, *args, **kwargs):
        raise RuntimeError("a bug of ours")


async def test_our_own_bug_is_a_500_and_a_counter(caplog):
    table, _ = compile([RawObject("Mapping", "default", "m", "f.yaml", {"prefix": "/", "service": "127.0.0.1:1"})])
    state = WorkerState()
    state.router = BrokenRouter(table)
    ours, client = socket.socketpair()
    ours.setblocking(False)
    with client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.reactor.run)
            ClientConnection(state, ours, "127.0.0.1", 8080)
            with trio.fail_after(5):
                while state.active:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        answer = client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close" in answer
    assert state.internal_errors == 1 and state.active == 0
    assert "a bug of ours" in caplog.text


def test_closed_connections_leave_no_garbage_cycles_and_no_timer_backlog():
    """A stream of short connections must be freed by reference counting (a full GC
    collection pauses the worker) and must not grow the timer heap: each one leaves an
    idle-timeout entry due minutes later."""
    table, _ = compile([RawObject("Mapping", "default", "m", "f.yaml", {"prefix": "/m/", "service": "127.0.0.1:1"})])
    state = WorkerState()
    state.router = Router(table)
    gc.collect()
    gc.disable()
    try:
        for _ in range(3000):
            ours, client = socket.socketpair()
            ours.setblocking(False)
            with client:
                conn = ClientConnection(state, ours, "127.0.0.1", 8080)
                client.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                conn.on_event(EPOLLIN)
                assert client.recv(4096).startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert state.active == 0
        assert len(state.reactor._timers) <= 2048
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_fin_that_comes_with_the_last_bytes_ends_a_close_delimited_body():
    """Edge-triggered: one event reports the data and the peer's close. A short read must
    not be taken for "nothing more": no new edge comes for a FIN already received."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    table, _ = compile([RawObject("Mapping", "default", "m", "f.yaml", {"prefix": "/", "service": f"127.0.0.1:{port}"})])
    state = WorkerState()
    state.router = Router(table)
    ours, client = socket.socketpair()
    ours.setblocking(False)
    with client, listener:
        conn = ClientConnection(state, ours, "127.0.0.1", 8080)
        client.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        conn.on_event(EPOLLIN)
        upstream, _ = listener.accept()
        with upstream:
            conn.on_upstream_event(conn.up, EPOLLOUT)  # connected: the request goes out
            assert upstream.recv(65536).startswith(b"GET /x HTTP/1.1\r\n")
            upstream.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end")
            upstream.shutdown(socket.SHUT_WR)
            time.sleep(0.05)
            conn.on_upstream_event(conn.up, EPOLLIN | EPOLLRDHUP)  # the only event there will be
        client.settimeout(2)
        answer = b""
        while chunk := client.recv(65536):  # edge closes after the answer
            answer += chunk
    assert state.active == 0
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked\r\n" in answer
    assert answer.endswith(b"a\r\nto the end\r\n0\r\n\r\n")
