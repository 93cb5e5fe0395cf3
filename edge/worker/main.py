"""A worker process: serves traffic on the listening sockets its supervisor hands it.

It reads the routes segment, writes only its own stats cell, and talks to nobody else.
Its options and control messages (a new table, listen on a port with the fd attached, stop
listening) are declared in edge.workerspec, which the supervisor's arbiter writes with.
SIGTERM drains: stop accepting, close idle connections, finish in-flight requests up to
the drain deadline, exit 0. If the supervisor goes away, the worker exits.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import time

import trio

from edge.ratelimit.limiter import Limiter
from edge.ratelimit.store import CounterStore
from edge.worker.redislink import RedisLink, parse_redis_url
from edge.shm import StatCells
from edge.worker.conn import ClientConnection
from edge.worker import tls
from edge.worker.sniff import Sniff
from edge.worker.state import WorkerState
from edge.worker.tablewatch import TableWatch
from edge import workerspec
from edge.workerspec import WorkerOptions

log = logging.getLogger("edge.worker")
HEARTBEAT_INTERVAL = 0.2
POLL_INTERVAL = 0.25
ACCEPT_BACKOFF = 0.1  # seconds accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM
ACCEPT_WARN_EVERY = 10.0  # seconds between two warnings about failed accepts
ACCEPT_BATCH = 64  # accepts in a row before the loop lets other tasks run
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class AcceptErrors:
    """Failed accepts: every one counted (the accept_errors stat), a warning at most once per
    `every` seconds, saying how many failed since the last one. Out of descriptors, accept
    fails for every pending connection at every try: one line per failure would flood the log."""

    def __init__(self, every: float = ACCEPT_WARN_EVERY, clock=time.monotonic):
        self.count = 0
        self.every = every
        self.clock = clock
        self._warned: float | None = None  # clock time of the last warning
        self._suppressed = 0  # failures since then, not logged

    def failed(self, port: int, exc: OSError) -> None:
        self.count += 1
        now = self.clock()
        if self._warned is not None and now - self._warned < self.every:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        log.warning("accept on port %d: %s%s", port, exc, more)
        self._warned, self._suppressed = now, 0


class Worker:
    def __init__(self, args: WorkerOptions, ratelimit_redis: str | None = None):
        self.args = args
        self.slot = args.slot
        self.cell = args.slot if args.cell is None else args.cell  # our stats cell
        self.state = WorkerState(header_timeout=args.header_timeout, idle_timeout=args.idle_timeout,
                                 send_timeout=args.send_timeout)
        if ratelimit_redis:
            self.state.limits = RedisLink(self.state.reactor, parse_redis_url(ratelimit_redis),
                                          args.ratelimit_budget_ms / 1000,
                                          fail_open=args.ratelimit_failure_mode == "open")
        elif args.ratelimit:
            self.state.limits = Limiter(CounterStore(args.ratelimit), self.cell)
        self.stats = StatCells(args.stats)
        self.watch = TableWatch(args.routes, self.state)
        self.ctrl = socket.socket(fileno=args.ctrl)
        self.ctrl.setblocking(False)
        # per port: every listening socket (a port may have several: the sockets of an edge
        # taken over from) with its accept loop's scope, by socket inode (one accept loop each)
        self.listeners: dict[int, dict[int, trio.CancelScope]] = {}
        self.parent = os.getppid()
        self.stopping = trio.Event()
        self.accept_errors = AcceptErrors()  # EMFILE and friends, for the stats cell

    async def run(self) -> None:
        self.stats.set(self.cell, "pid", os.getpid())
        self.stats.set(self.cell, "draining", 0)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._heartbeat)
            nursery.start_soon(self.state.reactor.run)
            nursery.start_soon(self._signals)
            while not await self.watch.poll():  # no traffic before the first table
                await trio.sleep(0.02)
            self._publish_generation()
            for port, fd in self.args.listen:
                self._listen(port, socket.socket(fileno=fd))
            nursery.start_soon(self._control)
            await self.stopping.wait()
            await self._drain()
            nursery.cancel_scope.cancel()

    def _publish_generation(self) -> None:
        self.stats.set(self.cell, "generation", self.watch.loaded)

    def _listen(self, port: int, sock: socket.socket) -> None:
        loops = self.listeners.setdefault(port, {})
        inode = os.fstat(sock.fileno()).st_ino  # the same socket twice (argv and a message): one loop
        if inode in loops:
            sock.close()
            return
        sock.setblocking(False)
        loops[inode] = scope = trio.CancelScope()
        self.nursery.start_soon(self._accept_loop, sock, port, scope)

    def _unlisten(self, port: int) -> None:
        for scope in self.listeners.pop(port, {}).values():
            scope.cancel()

    async def _accept_loop(self, lsock: socket.socket, port: int, scope: trio.CancelScope) -> None:
        state = self.state
        # Connections live in the reactor, not under `scope`: closing a listener (drain,
        # Listener removed) must not cut the connections it accepted.
        accepted = 0
        with scope:
            try:
                while True:
                    try:
                        conn, addr = lsock.accept()
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(lsock)
                        continue
                    except OSError as exc:
                        self.accept_errors.failed(port, exc)
                        if exc.errno in _OUT_OF_RESOURCES:
                            # out of descriptors (or kernel memory): the pending connection
                            # stays in the accept queue; stop accepting for a moment (as nginx
                            # does) while the reactor task goes on serving the ones we have
                            await trio.sleep(ACCEPT_BACKOFF)
                        continue  # ECONNABORTED and the like: that one connection is gone
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    listener = state.router.listeners.get(port)
                    if listener is not None and listener.protocol == "HTTPS":
                        Sniff(state, conn, addr[0], port)
                    else:
                        ClientConnection(state, conn, addr[0], port)
                    accepted += 1
                    if accepted % ACCEPT_BATCH == 0:  # a flood of connects does not starve the reactor
                        await trio.lowlevel.checkpoint()
            finally:
                lsock.close()

    async def _control(self) -> None:
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(self.ctrl, workerspec.MAX_MESSAGE, workerspec.MAX_FDS)
            except BlockingIOError:
                with trio.move_on_after(POLL_INTERVAL):
                    await trio.lowlevel.wait_readable(self.ctrl)
                await self._reload()
                continue
            if not msg:  # supervisor closed its end
                self.stopping.set()
                return
            try:
                kind, port = workerspec.parse_message(msg)
            except ValueError as exc:
                log.error("control: %s", exc)
                kind = port = None
            if kind == workerspec.LISTEN and fds:
                self._listen(port, socket.socket(fileno=fds.pop(0)))
            elif kind == workerspec.UNLISTEN:
                self._unlisten(port)
            for fd in fds:  # none expected: never leak one
                os.close(fd)
            await self._reload()

    async def _reload(self) -> None:
        if await self.watch.poll():
            self._publish_generation()
        self.stats.set(self.cell, "table_load_failures", self.watch.failures)

    async def _heartbeat(self) -> None:
        beat = 0
        stats, slot, state = self.stats, self.cell, self.state
        while True:
            beat += 1
            stats.set(slot, "heartbeat", beat)
            stats.set(slot, "requests", state.requests)
            stats.set(slot, "active_connections", state.active)
            stats.set(slot, "internal_errors", state.internal_errors)
            stats.set(slot, "client_errors", state.client_errors)
            stats.set(slot, "upstream_errors", state.upstream_errors)
            stats.set(slot, "reactor_batches", state.reactor.batches)
            stats.set(slot, "reactor_events", state.reactor.events)
            stats.set(slot, "ratelimited", state.ratelimited)
            stats.set(slot, "accept_errors", self.accept_errors.count)
            stats.set(slot, "tls_handshake_errors", state.tls_handshake_errors)
            stats.set(slot, "h2_connections", state.h2_connections)
            stats.set(slot, "h2_connection_errors", state.h2_connection_errors)
            if state.limits is not None:
                stats.set(slot, "ratelimit_log_only_over", state.limits.over_log_only)
                stats.set(slot, "ratelimit_store_failures", state.limits.failures)
            if os.getppid() != self.parent:
                log.error("supervisor %d is gone; exiting", self.parent)
                os._exit(1)
            if beat % 50 == 0:
                state.pool.sweep()
                state.h2pool.sweep()
            await trio.sleep(HEARTBEAT_INTERVAL)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                self.stopping.set()

    async def _drain(self) -> None:
        """Stop accepting, close idle connections, wait for in-flight requests."""
        self.stats.set(self.cell, "draining", 1)
        for port in list(self.listeners):
            self._unlisten(port)
        self.state.start_drain()
        with trio.move_on_after(self.args.drain_timeout):
            while self.state.active:
                await trio.sleep(0.02)
        self.state.pool.close_all()
        self.state.h2pool.close_all()


def main(argv=None) -> None:
    args = WorkerOptions.from_argv(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format=f"%(asctime)s worker[{args.slot}] %(levelname)s %(message)s")
    _die_with_parent()
    tls.use_ticket_keys(workerspec.tls_ticket_keys())
    trio.run(Worker(args, workerspec.ratelimit_redis()).run)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel sends SIGTERM if the supervisor dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # the heartbeat's getppid check covers it


if __name__ == "__main__":
    main()
