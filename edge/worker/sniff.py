"""The first byte of a connection on an HTTPS Listener decides its protocol.

An HTTPS Listener takes TLS and cleartext HTTP on one port, as Emissary's does: a TLS
record starts with 0x16 (handshake), which no HTTP method does. The byte is peeked, not
read, so the connection handler that takes over reads the stream from its start.
"""

from __future__ import annotations

import logging
import socket
import time

from edge.worker.conn import ClientConnection, TLSConnection
from edge.worker.reactor import READ_EVENTS, Handler
from edge.worker.state import WorkerState

log = logging.getLogger("edge.worker")

TLS_HANDSHAKE = 0x16


class Sniff(Handler):
    __slots__ = ("state", "sock", "fd", "peer", "port")

    def __init__(self, state: WorkerState, sock: socket.socket, peer: str, port: int):
        super().__init__()
        self.state = state
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.port = port
        state.connections.add(self)  # a drain waits for it like for any idle connection
        state.reactor.register(self.fd, self)
        # a client that connects and sends nothing is an idle connection
        state.reactor.set_deadline(self, time.monotonic() + state.idle_timeout)

    def on_event(self, mask: int) -> None:
        if not mask & READ_EVENTS:
            return
        try:
            first = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._close()
            return
        if not first:
            self._close()
            return
        state = self.state
        self._forget()
        self.closed = True  # handed over: the connection handler owns the socket now
        contexts = state.router.tls
        if first[0] == TLS_HANDSHAKE and contexts:
            TLSConnection(state, contexts.wrap(self.sock), self.peer, self.port)
        else:
            ClientConnection(state, self.sock, self.peer, self.port)

    def on_timeout(self) -> None:
        self._close()

    def on_bug(self, exc: Exception) -> None:
        self.state.internal_errors += 1
        log.error("internal error on a connection from %s", self.peer, exc_info=exc)
        self._close()

    def close_if_idle(self, grace: float) -> None:
        self.state.reactor.set_deadline(self, min(self.deadline, time.monotonic() + grace))

    def _forget(self) -> None:
        state = self.state
        state.reactor.unregister(self.fd)
        state.reactor.forget(self)
        state.connections.discard(self)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._forget()
        self.sock.close()
