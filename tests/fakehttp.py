"""What the fake API servers (tests/fakekube.py, tests/fakeconsul.py) share: a threaded
HTTP/1.1 server on a free 127.0.0.1 port that a test can take away (`outage()`: the port
closed, every open connection cut) and give back on the same port (`recover()`)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """Subclasses set `handler` (a FakeHandler subclass; it reaches the fake as
    `self.fake`) and may extend `_cut()`, which runs under `cond` when the server goes away
    and should wake whatever requests are waiting."""

    handler: type[FakeHandler]

    def __init__(self):
        self.cond = threading.Condition()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()

    def start(self):
        handler = type("Handler", (self.handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def outage(self) -> None:
        """The server goes away: the port is closed and every connection is cut."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.cond:
            self._cut()
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _cut(self) -> None:
        self.cond.notify_all()

    def recover(self):
        return self.start()

    def stop(self) -> None:
        self.outage()


class FakeHandler(BaseHTTPRequestHandler):
    fake: FakeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # answers and watch events are small writes: without NODELAY each waits for the
        # peer's delayed ACK (40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.fake.cond:
            self.fake.connections.add(self.connection)

    def finish(self) -> None:
        with self.fake.cond:
            self.fake.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass
