"""Per-worker upstream connections: round-robin endpoint choice and a LIFO keep-alive pool.

An UpstreamConn is a reactor handler. While it serves a request its events go to the
client connection that owns it (`owner`); while it idles in the pool, any event on it
means the upstream closed it or sent something unasked, and it is dropped at once (as
nginx does), so a pooled connection never needs a check before it is reused.

With TLS origination (a cluster with a ClientTLS), `sock` is a client-side TLSTransport
over the socket (`raw`): `connected` stays False until the TLS handshake is done too, so
the request head is sent only over an established TLS session. Idle connections are kept
per (address, port) and, for TLS, the Origin (context and SNI) they were made with: a
reused TLS connection does not handshake again.
"""

from __future__ import annotations

import errno
import socket
import time

from edge.model import Cluster, Endpoint
from edge.worker.proto.h1 import ResponseParser, chunk, last_chunk
from edge.worker.reactor import READ_EVENTS, Handler, Reactor, flush_kept, send_or_keep
from edge.worker.tls import Origin, TLSTransport

MAX_IDLE_PER_ENDPOINT = 128
IDLE_TTL = 60.0


class UpstreamConn(Handler):
    """One connection to an endpoint. `owner` gets on_upstream_event(self, mask)."""

    multiplexed = False  # one exchange at a time: the exchange reads the socket itself

    __slots__ = ("sock", "fd", "key", "parser", "reused", "idle_since", "connected", "owner", "pool",
                 "readable", "hup", "out", "raw", "tls", "tcp_connected", "chunked")

    def __init__(self, sock: socket.socket, key: tuple, pool: Pool, connected: bool, origin: Origin | None = None):
        super().__init__()
        self.raw = sock
        self.fd = sock.fileno()
        # TLS origination: the handshake comes after the TCP connect, then the request
        self.tls = None if origin is None else TLSTransport(sock, origin.ctx, server_side=False,
                                                             server_hostname=origin.sni)
        self.sock = sock if origin is None else self.tls
        self.tcp_connected = connected
        self.key = key
        self.pool = pool
        self.parser = ResponseParser()
        self.reused = False
        self.idle_since = 0.0
        self.connected = connected and origin is None
        self.owner = None
        self.readable = False
        self.hup = False  # the upstream closed its side: read until EOF
        self.out: list | None = None  # bytes the kernel did not take yet
        self.chunked = False  # the request being sent has a chunked body

    def on_event(self, mask: int) -> None:
        owner = self.owner
        if owner is not None:
            owner.on_upstream_event(self, mask)
        elif mask & READ_EVENTS:  # idle in the pool: the upstream closed it, or misbehaves
            self.pool.discard(self)

    def on_timeout(self) -> None:
        pass  # the owning client connection keeps the deadlines

    def on_bug(self, exc: Exception) -> None:
        if self.owner is not None:
            self.owner.on_bug(exc)
        else:
            self.close()

    def connect_error(self) -> int:
        """After the first writable event of a non-blocking connect: 0 or an errno."""
        return self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def handshake(self) -> bool:
        """TLS origination: drive the handshake (after the TCP connect); True once done,
        and the connection is `connected`. Raises ssl.SSLError or OSError."""
        if self.tls.do_handshake():
            self.connected = True
            return True
        return False

    def send_head(self, head: bytes, req) -> None:
        """Send a request head (edge.worker.heads.request_head's bytes) for `req`; its
        body follows through send_body and end_body. Raises OSError."""
        if req.method == b"HEAD":
            self.parser.expect_no_body()
        self.chunked = req.chunked
        self.send(head)

    def send_body(self, data: bytes) -> None:
        """Request body bytes, framed as the head said. Raises OSError."""
        self.send(chunk(data) if self.chunked else data)

    def end_body(self, trailers: list) -> None:
        """The request body ended (with trailers, which only a chunked body carries).
        Raises OSError."""
        if self.chunked:
            self.send(last_chunk(trailers))

    def send(self, data) -> bool:
        """Send what the kernel takes now and keep the rest in `out`; True if all went.
        Raises OSError (reset, broken pipe)."""
        self.out = send_or_keep(self.sock, self.out, data)
        return self.out is None

    def flush(self) -> bool:
        """Send kept bytes; True when none are left. Raises OSError."""
        self.out = flush_kept(self.sock, self.out)
        return self.out is None

    def done(self, keep: bool) -> None:
        """The exchange ended: back to the pool if `keep` (the response allowed it and the
        request was sent whole) and the connection can serve again; else closed."""
        parser = self.parser
        if keep and not parser.close_delimited and not parser.in_message:
            self.pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner = None
            self.pool.reactor.unregister(self.fd)
            self.sock.close()


def connect(ep: Endpoint) -> tuple[socket.socket, bool]:
    """A non-blocking socket connecting to `ep`, and whether it connected at once.
    Raises OSError when the connect fails at once."""
    family = socket.AF_INET6 if ":" in ep.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((ep.address, ep.port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"connect to {ep.address}:{ep.port}: {errno.errorcode.get(err, err)}")
    except BaseException:
        sock.close()
        raise
    return sock, err == 0


class Pool:
    """Idle connections per endpoint, most recently used first (warm sockets, and the
    cold ones age out)."""

    def __init__(self, reactor: Reactor):
        self.reactor = reactor
        self._idle: dict[tuple[str, int], list[UpstreamConn]] = {}
        self._rr: dict[str, int] = {}

    def pick(self, cluster: Cluster) -> Endpoint | None:
        """Round-robin over the cluster's endpoints; None when it has none."""
        eps = cluster.endpoints
        if not eps:
            return None
        i = self._rr.get(cluster.name, 0)
        self._rr[cluster.name] = i + 1
        return eps[i % len(eps)]

    def acquire(self, ep: Endpoint, owner, origin: Origin | None = None) -> UpstreamConn:
        """A pooled connection to `ep` (with TLS through `origin`, if given), or a new one
        whose connect (and TLS handshake) is under way: `connected` False until then.
        Raises OSError when the connect fails at once."""
        addr = (ep.address, ep.port)
        key = addr if origin is None else (ep.address, ep.port, origin)
        idle = self._idle.get(key)
        if idle:
            conn = idle.pop()
            conn.reused = True
            conn.owner = owner
            return conn
        sock, connected = connect(ep)
        conn = UpstreamConn(sock, key, self, connected=connected, origin=origin)
        conn.owner = owner
        self.reactor.register(conn.fd, conn)
        return conn

    def release(self, conn: UpstreamConn) -> None:
        """Take back a connection whose last exchange ended cleanly."""
        conn.owner = None
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= MAX_IDLE_PER_ENDPOINT or conn.out or conn.readable:
            conn.close()  # unread bytes after a complete response: not reusable
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def discard(self, conn: UpstreamConn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        conn.close()

    def sweep(self, now: float | None = None) -> int:
        """Close connections idle longer than IDLE_TTL; returns how many."""
        now = time.monotonic() if now is None else now
        closed = 0
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if now - c.idle_since < IDLE_TTL]
            for c in idle:
                if now - c.idle_since >= IDLE_TTL:
                    c.close()
                    closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def close_all(self) -> None:
        for idle in self._idle.values():
            for c in idle:
                c.close()
        self._idle.clear()
