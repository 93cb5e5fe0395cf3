"""What one worker process shares between its connections."""

from __future__ import annotations

import trio

from edge.worker.router import Router
from edge.worker.upstream import Pool

# One read buffer per worker: every recv is copied out (bytes(view[:n])) before the next
# await, and trio runs one task at a time, so connections can share it.
READ_SIZE = 65536


class WorkerState:
    def __init__(self, *, header_timeout: float = 10.0, idle_timeout: float = 300.0):
        self.router: Router | None = None
        self.pool = Pool()
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.read_buf = bytearray(READ_SIZE)
        self.read_view = memoryview(self.read_buf)
        self.draining = False
        # Timers of connections waiting idle for their next request; a drain cancels
        # them so idle keep-alive connections close at once.
        self.idle_timers: set[trio.CancelScope] = set()
        self.requests = 0
        self.active = 0
        self.internal_errors = 0
        self.client_errors = 0
        self.upstream_errors = 0

    def start_drain(self) -> None:
        self.draining = True
        for timer in list(self.idle_timers):
            timer.cancel()
