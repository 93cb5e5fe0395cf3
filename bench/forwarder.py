"""A bare byte forwarder on edge's reactor: the floor of proxying in Python on this machine.

    python -m bench.forwarder LISTEN_PORT UPSTREAM_PORT

Each client connection gets its own upstream connection and bytes are relayed both ways
as they come: no HTTP is parsed, nothing is routed or rewritten. It runs the same loop as
edge's workers (one trio task hosting an edge-triggered epoll reactor, edge.worker.reactor)
and makes the same four socket calls per request, so in `python -m bench` the gap between
it and nginx is what a Python event loop costs per request, and the gap between it and
edge-1 is what edge's HTTP work costs (parse, route, rebuild both heads). A reference for
the benchmark, not a product: the upstream connect is blocking (loopback, once per client
connection), so it is measured only on keep-alive scenarios.
"""

from __future__ import annotations

import socket
import sys

import trio

from edge.worker.reactor import READ_EVENTS, WRITE_EVENTS, Handler, Reactor, flush_kept, send_or_keep

BUF = bytearray(65536)  # one buffer: the reactor runs one handler at a time
VIEW = memoryview(BUF)


class Side(Handler):
    """One socket of a relayed pair; what it reads goes to `other`."""

    __slots__ = ("reactor", "sock", "fd", "other", "out", "readable")

    def __init__(self, reactor: Reactor, sock: socket.socket):
        super().__init__()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reactor, self.sock, self.fd = reactor, sock, sock.fileno()
        self.other: Side = self
        self.out: list | None = None  # bytes for this socket the kernel did not take yet
        self.readable = False

    def on_event(self, mask: int) -> None:
        if mask & WRITE_EVENTS and self.out:
            try:
                self.out = flush_kept(self.sock, self.out)
            except OSError:
                self.close()
                return
            if not self.out:
                self.other.pump()  # the other side was held back while we were full
        if mask & READ_EVENTS:
            self.readable = True
            self.pump()

    def pump(self) -> None:
        """Relay what this socket has while the other side takes it."""
        other = self.other
        while self.readable and not other.out and not self.closed:
            try:
                n = self.sock.recv_into(BUF)
            except BlockingIOError:
                self.readable = False
                return
            except OSError:
                self.close()
                return
            if n == 0:
                self.close()
                return
            if n < len(BUF):
                self.readable = False  # edge-triggered: new bytes bring a new event
            try:
                other.out = send_or_keep(other.sock, other.out, VIEW[:n])
            except OSError:
                self.close()

    def on_timeout(self) -> None:
        pass  # no deadlines: wrk ends its connections itself

    def on_bug(self, exc: Exception) -> None:
        self.close()

    def close(self) -> None:
        for side in (self, self.other):
            if not side.closed:
                side.closed = True
                side.reactor.unregister(side.fd)
                side.sock.close()


async def serve(port: int, upstream: int) -> None:
    reactor = Reactor()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reactor.run)
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    break
                try:
                    up = socket.create_connection(("127.0.0.1", upstream))
                except OSError:
                    client.close()
                    continue
                a, b = Side(reactor, client), Side(reactor, up)
                a.other, b.other = b, a
                reactor.register(a.fd, a)
                reactor.register(b.fd, b)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.forwarder LISTEN_PORT UPSTREAM_PORT")
    trio.run(serve, int(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
