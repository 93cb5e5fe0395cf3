"""The first byte of a connection on an HTTPS Listener decides its protocol, and ALPN
the protocol inside TLS.

An HTTPS Listener takes TLS and cleartext HTTP on one port, as Emissary's does: a TLS
record starts with 0x16 (handshake), which no HTTP method does. The byte is peeked, not
read, so the connection handler that takes over reads the stream from its start. A TLS
connection is handshaken by TLSAccept, and then handed to an H2Connection when ALPN chose
h2, else to an HTTP/1 TLSConnection (cleartext HTTP/2 is recognised later, by its
preface, in the HTTP/1 handler).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time

from edge.worker.conn import ClientConnection, TLSConnection
from edge.worker.h2conn import H2Connection
from edge.worker.reactor import READ_EVENTS, WRITE_EVENTS, Handler
from edge.worker.state import WorkerState
from edge.worker.tls import TLSTransport

log = logging.getLogger("edge.worker")

TLS_HANDSHAKE = 0x16


class _Undecided(Handler):
    """A connection whose handler is not chosen yet; counted among the worker's
    connections, so a drain waits for it like for any idle one."""

    __slots__ = ("state", "sock", "fd", "peer", "port")

    def __init__(self, state: WorkerState, sock, peer: str, port: int, timeout: float):
        super().__init__()
        self.state = state
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.port = port
        state.connections.add(self)
        state.reactor.register(self.fd, self)
        state.reactor.set_deadline(self, time.monotonic() + timeout)

    def on_bug(self, exc: Exception) -> None:
        self.state.internal_errors += 1
        log.error("internal error on a connection from %s", self.peer, exc_info=exc)
        self._close()

    def close_if_idle(self, grace: float) -> None:
        self.state.reactor.set_deadline(self, min(self.deadline, time.monotonic() + grace))

    def _hand_over(self) -> None:
        """The chosen handler takes the socket (it registers it again)."""
        self._forget()
        self.closed = True

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


class Sniff(_Undecided):
    __slots__ = ()

    def __init__(self, state: WorkerState, sock: socket.socket, peer: str, port: int):
        # a client that connects and sends nothing is an idle connection
        super().__init__(state, sock, peer, port, state.idle_timeout)

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
        self._hand_over()
        state = self.state
        contexts = state.router.tls
        if first[0] == TLS_HANDSHAKE and contexts:
            TLSAccept(state, contexts.wrap(self.sock), self.peer, self.port)
        else:
            ClientConnection(state, self.sock, self.peer, self.port)

    def on_timeout(self) -> None:
        self._close()


class TLSAccept(_Undecided):
    """A TLS handshake, then the connection handler for the protocol ALPN chose. The
    handshake has the header timeout (a client that stalls in it holds nothing longer)."""

    __slots__ = ()

    def __init__(self, state: WorkerState, transport: TLSTransport, peer: str, port: int):
        super().__init__(state, transport, peer, port, state.header_timeout)
        self.on_event(READ_EVENTS)  # the ClientHello was peeked: it is there to read

    def on_event(self, mask: int) -> None:
        transport = self.sock
        try:
            if mask & WRITE_EVENTS and transport.pending_output:
                transport.flush()
            if not mask & READ_EVENTS or not transport.handshake_step():
                return
        except (ssl.SSLError, OSError, EOFError):
            self.state.tls_handshake_errors += 1
            self._close()
            return
        self._hand_over()
        state = self.state
        if transport.handshake.alpn == "h2":
            H2Connection(state, transport, self.peer, self.port, b"https")
        else:
            conn = TLSConnection(state, transport, self.peer, self.port)
            conn.readable = True  # the request may have come with the handshake, already read
            conn._resume()

    def on_timeout(self) -> None:
        self.state.tls_handshake_errors += 1
        self._close()
