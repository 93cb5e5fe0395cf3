"""The connection handler in-process, for what a real gateway cannot be made to do."""

from __future__ import annotations

import socket

import trio

from edge.resources.base import RawObject
from edge.supervisor.compile import compile
from edge.worker.conn import ClientConnection
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
