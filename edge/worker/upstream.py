"""Per-worker upstream connections: round-robin endpoint choice and a LIFO keep-alive pool."""

from __future__ import annotations

import socket
import time

import trio

from edge.model import Cluster, Endpoint
from edge.worker import net
from edge.worker.proto.h1 import ResponseParser

MAX_IDLE_PER_ENDPOINT = 128
IDLE_TTL = 60.0


class ConnectTimeout(Exception):
    """The upstream did not accept the connection within connect_timeout_ms."""


class UpstreamConn:
    __slots__ = ("sock", "key", "parser", "reused", "idle_since")

    def __init__(self, sock: socket.socket, key: tuple[str, int]):
        self.sock = sock
        self.key = key
        self.parser = ResponseParser()
        self.reused = False
        self.idle_since = 0.0

    def close(self) -> None:
        self.sock.close()


class Pool:
    """Idle connections per endpoint, most recently used first (warm sockets, and the
    cold ones age out)."""

    def __init__(self):
        self._idle: dict[tuple[str, int], list[UpstreamConn]] = {}
        self._rr: dict[str, int] = {}
        self.connects = 0
        self.reuses = 0

    def pick(self, cluster: Cluster) -> Endpoint | None:
        """Round-robin over the cluster's endpoints; None when it has none."""
        eps = cluster.endpoints
        if not eps:
            return None
        i = self._rr.get(cluster.name, 0)
        self._rr[cluster.name] = i + 1
        return eps[i % len(eps)]

    async def acquire(self, ep: Endpoint, connect_timeout_ms: int) -> UpstreamConn:
        """A pooled live connection to `ep`, or a new one.

        Raises ConnectTimeout, or OSError (refused, unreachable) from connect.
        """
        key = (ep.address, ep.port)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if net.is_reusable(conn.sock):
                conn.reused = True
                self.reuses += 1
                return conn
            conn.close()
        with trio.move_on_after(connect_timeout_ms / 1000) as scope:
            sock = await net.connect(ep.address, ep.port)
        if scope.cancelled_caught:
            raise ConnectTimeout(f"connect to {ep.address}:{ep.port} timed out after {connect_timeout_ms} ms")
        self.connects += 1
        return UpstreamConn(sock, key)

    def release(self, conn: UpstreamConn) -> None:
        """Return a connection whose last response was read completely."""
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_ENDPOINT:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

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

    def statistics(self) -> dict:
        return {"idle": sum(len(v) for v in self._idle.values()), "connects": self.connects, "reuses": self.reuses}
