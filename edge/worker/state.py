"""What one worker process shares between its connections."""

from __future__ import annotations

from edge.workerspec import DEFAULTS
from edge.worker.reactor import Reactor
from edge.worker.router import Router
from edge.worker.h2upstream import H2Pool
from edge.worker.upstream import Pool

# One read buffer per worker: every read is parsed (and copied out by the parser) before
# the next one, and the reactor runs one handler at a time, so connections share it.
READ_SIZE = 65536
DRAIN_IDLE_GRACE = 1.0


class WorkerState:
    def __init__(self, *, header_timeout: float = DEFAULTS.header_timeout,
                 idle_timeout: float = DEFAULTS.idle_timeout, send_timeout: float = DEFAULTS.send_timeout):
        self.router: Router | None = None
        self.reactor = Reactor()
        self.pool = Pool(self.reactor)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.read_buf = bytearray(READ_SIZE)
        self.h2pool = H2Pool(self.reactor, self.read_buf)  # to gRPC (HTTP/2) upstreams
        self.draining = False
        self.drain_idle_grace = DRAIN_IDLE_GRACE
        self.connections: set = set()  # ClientConnection
        self.requests = 0
        self.internal_errors = 0
        self.client_errors = 0
        self.upstream_errors = 0
        # the rate limiter: edge.ratelimit.limiter.Limiter (shared memory: `synchronous`,
        # check(matched) answers at once) or, with a fleet store, edge.worker.redislink.RedisLink
        # (decide(matched, callback) answers when Redis has)
        self.limits = None
        self.ratelimited = 0  # requests answered 429 by a limit
        self.tls_handshake_errors = 0  # TLS handshakes that failed or timed out
        self.h2_connections = 0  # HTTP/2 connections opened
        self.h2_connection_errors = 0  # HTTP/2 connections closed for the peer's fault (floods, bad frames)

    @property
    def active(self) -> int:
        """Open client connections."""
        return len(self.connections)

    def start_drain(self) -> None:
        """Every connection closes after its current or next response, which says
        `connection: close`. A keep-alive client idle between two requests may be sending
        its next one right now: closing under it would fail that request, so idle
        connections get `drain_idle_grace` seconds to send it (and get a last answer)."""
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle(self.drain_idle_grace)
