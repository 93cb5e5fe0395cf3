"""The arbiter: owns the listening sockets, spawns, watches and reaps worker processes.

gunicorn's rules in trio: signal handlers only enqueue (trio's signal receiver), one loop
reaps children and restarts them, a worker whose heartbeat stalls is killed and replaced,
a worker that dies young is restarted with exponential backoff, never in a tight loop.

Every listening port has one SO_REUSEPORT socket per worker slot. The supervisor keeps its
copy, so a replacement worker inherits the very socket of its slot and the connections
waiting in that socket's accept queue are served, not reset.

A port may also come with sockets the arbiter did not open: from systemd (socket
activation: usually one socket, which every worker then accepts on) or from the edge this
one takes over from (one per slot of that edge). Those are used as they are: opening more
beside them would add accept queues that a later restart or handover resets.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import trio

from edge import workerspec
from edge.shm import StatCells
from edge.supervisor import orphans
from edge.workerspec import WorkerOptions

log = logging.getLogger("edge.arbiter")

BOOT_GRACE = 10.0  # seconds a new worker has before its first heartbeat is required
YOUNG = 5.0  # a worker that dies younger than this is restarted with backoff
MAX_BACKOFF = 10.0


@dataclass
class Slot:
    index: int
    cell: int = -1  # the stats cell of the current process: `index` or its spare
    proc: subprocess.Popen | None = None
    ctrl: socket.socket | None = None
    started: float = 0.0
    backoff: float = 0.0
    next_start: float = 0.0
    beat: int = -1
    beat_seen: float = 0.0
    restarts: int = 0


def share(socks: list[socket.socket], index: int, slots: int) -> list[socket.socket]:
    """The sockets of one port that worker slot `index` (of `slots`) accepts on. With at
    least as many sockets as slots each socket has exactly one slot: SO_REUSEPORT spreads
    new connections over every socket of the port, so none may be left without a worker.
    Fewer sockets (systemd's one) are shared."""
    if len(socks) >= slots:
        return socks[index::slots]
    return [socks[index % len(socks)]]


def open_listener(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Arbiter:
    def __init__(self, workers: int, routes_segment: str, stats: StatCells, worker: WorkerOptions,
                 heartbeat_timeout: float = 3.0, inherited: dict[int, list[socket.socket]] | None = None,
                 kept: frozenset[int] = frozenset(), cells: list[int] | None = None):
        """`inherited`: listening sockets per port opened by someone else (systemd, the edge
        taken over from), used when a Listener wants that port; of those, the ports in `kept`
        (systemd's) stay open while no Listener wants them. `cells`: each slot's first stats
        cell (default its index; a takeover starts on the cells the old edge does not use)."""
        # two stats cells per slot: a rolling restart runs the new process beside the old
        self.slots = [Slot(i, cell=i if cells is None else cells[i]) for i in range(workers)]
        self.inherited = dict(inherited or {})
        # PID 1 of a container without an init: orphans re-parented here are reaped too
        self.reaps_orphans = orphans.should_reap()
        self.own: dict[int, subprocess.Popen] = {}  # every worker process not yet seen to exit
        self.kept = kept
        self._unused_warned: set[int] = set()
        self.retiring: list[subprocess.Popen] = []  # replaced by a rolling restart, draining
        self.rolling = False
        self.routes_segment = routes_segment
        self.stats = stats
        self.worker = worker  # every worker's options; _start_process fills in the process's own
        self.heartbeat_timeout = heartbeat_timeout
        self.turned = time.monotonic()  # when run()'s loop last went round
        self.sockets: dict[int, list[socket.socket]] = {}
        self.bind_errors: dict[int, str] = {}
        self.stopping = False

    # ---- listening sockets ----
    def set_listeners(self, wanted: list[tuple[str, int]]) -> None:
        """Open sockets for new ports (and hand them to running workers); close removed ones."""
        ports = {port for _, port in wanted}
        for address, port in wanted:
            if port in self.sockets:
                continue
            socks = self.inherited.pop(port, None)
            if socks is None:
                try:
                    socks = [open_listener(address, port) for _ in self.slots]
                except OSError as exc:
                    self.bind_errors[port] = str(exc)
                    log.error("cannot listen on %s:%d: %s", address, port, exc)
                    continue
            self.bind_errors.pop(port, None)
            self.sockets[port] = socks
            for slot in self.slots:
                for sock in share(socks, slot.index, len(self.slots)):
                    self._send(slot, workerspec.listen_message(port), [sock.fileno()])
        for port in list(self.sockets):
            if port not in ports:
                for slot in self.slots:
                    self._send(slot, workerspec.unlisten_message(port))
                socks = self.sockets.pop(port)
                if port in self.kept:
                    self.inherited[port] = socks  # systemd's: its queue waits for the port's return
                else:
                    for sock in socks:
                        sock.close()
        for port in sorted(self.inherited.keys() - self._unused_warned):
            if port in self.kept:
                self._unused_warned.add(port)
                log.warning("port %d: a socket from systemd that no Listener uses; its connections wait "
                            "unanswered (add a Listener for it, or remove it from the .socket unit)", port)

    def _send(self, slot: Slot, msg: bytes, fds: list[int] = ()) -> None:
        if slot.ctrl is None:
            return
        try:
            if fds:
                socket.send_fds(slot.ctrl, [msg], list(fds))
            else:
                slot.ctrl.send(msg)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass  # a wake-up already queued is enough; a dead worker gets reaped

    def wake_all(self) -> None:
        """Tell every worker a new table is published (they also poll as a fallback)."""
        for slot in self.slots:
            self._send(slot, workerspec.table_message())

    # ---- processes ----
    def _start_process(self, slot: Slot, cell: int) -> tuple[subprocess.Popen, socket.socket]:
        """A worker process for `slot` writing stats cell `cell`, on the slot's sockets."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setblocking(False)
        listen = tuple((port, sock.fileno()) for port, socks in self.sockets.items()
                       for sock in share(socks, slot.index, len(self.slots)))
        fds = [child.fileno(), *(fd for _, fd in listen)]
        options = replace(self.worker, slot=slot.index, cell=cell, routes=self.routes_segment, stats=self.stats.name,
                          ctrl=child.fileno(), listen=listen)
        args = [sys.executable, "-m", "edge.worker", *options.to_argv()]
        for name in ("heartbeat", "generation", "pid"):
            self.stats.set(cell, name, 0)
        proc = subprocess.Popen(args, pass_fds=fds)
        self.own[proc.pid] = proc
        child.close()
        return proc, parent

    def spawn(self, slot: Slot) -> None:
        slot.proc, ctrl = self._start_process(slot, slot.cell)
        if slot.ctrl is not None:
            slot.ctrl.close()
        slot.ctrl = ctrl
        slot.started = time.monotonic()
        slot.beat, slot.beat_seen = 0, slot.started
        log.info("worker %d started, pid %d", slot.index, slot.proc.pid)

    def reap(self) -> None:
        self.retiring = [p for p in self.retiring if p.poll() is None]
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None or slot.proc.poll() is None:
                continue
            code, pid = slot.proc.returncode, slot.proc.pid
            lived = now - slot.started
            slot.proc = None
            if self.stopping:
                continue
            if lived < YOUNG:
                slot.backoff = min(MAX_BACKOFF, max(0.1, slot.backoff * 2))
            else:
                slot.backoff = 0.0
            slot.next_start = now + slot.backoff
            slot.restarts += 1
            log.warning("worker %d (pid %d) exited with %s after %.1fs; restart in %.1fs",
                        slot.index, pid, code, lived, slot.backoff)
        self.own = {pid: p for pid, p in self.own.items() if p.poll() is None}
        if self.reaps_orphans:
            orphans.reap(self.own.__contains__)

    def check_heartbeats(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None:
                continue
            beat = self.stats.get(slot.cell, "heartbeat")
            if beat != slot.beat:
                slot.beat, slot.beat_seen = beat, now
                continue
            limit = BOOT_GRACE if beat == 0 else self.heartbeat_timeout
            if now - slot.beat_seen > limit:
                log.error("worker %d (pid %d) heartbeat stalled for %.1fs; killing it",
                          slot.index, slot.proc.pid, now - slot.beat_seen)
                slot.proc.kill()
                slot.beat_seen = now

    def start_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None and not self.stopping and now >= slot.next_start:
                self.spawn(slot)

    async def run(self) -> None:
        """Spawn all workers, then reap/restart/watch until cancelled."""
        with trio.open_signal_receiver(signal.SIGCHLD) as sigchld:
            while True:
                self.turned = time.monotonic()  # systemd's watchdog follows this
                self.reap()
                self.start_due()
                self.check_heartbeats()
                with trio.move_on_after(0.1):
                    await sigchld.__anext__()

    def workers(self) -> list[dict]:
        out = []
        for slot in self.slots:
            cell = self.stats.cell(slot.cell)
            alive = slot.proc is not None and slot.proc.poll() is None
            out.append({"slot": slot.index, "pid": slot.proc.pid if alive else None,
                        "generation": cell["generation"] if alive else None,
                        "requests": cell["requests"], "active_connections": cell["active_connections"],
                        "internal_errors": cell["internal_errors"], "client_errors": cell["client_errors"],
                        "upstream_errors": cell["upstream_errors"],
                        "reactor_batches": cell["reactor_batches"], "reactor_events": cell["reactor_events"],
                        "ratelimited": cell["ratelimited"],
                        "ratelimit_log_only_over": cell["ratelimit_log_only_over"],
                        "ratelimit_store_failures": cell["ratelimit_store_failures"],
                        "accept_errors": cell["accept_errors"],
                        "tls_handshake_errors": cell["tls_handshake_errors"],
                        "h2_connections": cell["h2_connections"], "h2_connection_errors": cell["h2_connection_errors"],
                        "restarts": slot.restarts, "heartbeat": cell["heartbeat"]})
        return out

    def all_loaded(self, generation: int) -> bool:
        return all(slot.proc is not None and slot.proc.poll() is None
                   and self.stats.get(slot.cell, "pid") == slot.proc.pid
                   and self.stats.get(slot.cell, "generation") >= generation for slot in self.slots)

    async def rolling_restart(self, generation: int, ready_timeout: float = 30.0) -> bool:
        """Replace every worker, one slot at a time, for a code upgrade: the new process
        starts on the slot's sockets (beside the old one, on the slot's spare stats cell),
        and only once it has loaded table `generation` is the old one told to drain.
        Returns False (and keeps the old process of that slot) if a new one does not get
        ready within `ready_timeout`; a second call while one runs returns False."""
        if self.rolling or self.stopping:
            return False
        self.rolling = True
        try:
            for slot in self.slots:
                if slot.proc is None or slot.proc.poll() is not None:
                    continue  # the reaper restarts it anyway, with the new code
                spare = slot.index + len(self.slots) if slot.cell == slot.index else slot.index
                proc, ctrl = self._start_process(slot, spare)
                deadline = time.monotonic() + ready_timeout
                while not (self.stats.get(spare, "pid") == proc.pid
                           and self.stats.get(spare, "generation") >= generation):
                    if proc.poll() is not None or time.monotonic() > deadline or self.stopping:
                        log.error("rolling restart: the new worker %d (pid %d) did not get ready; keeping pid %d",
                                  slot.index, proc.pid, slot.proc.pid)
                        proc.kill()
                        ctrl.close()
                        return False
                    await trio.sleep(0.01)
                old, old_ctrl = slot.proc, slot.ctrl
                slot.proc, slot.ctrl, slot.cell = proc, ctrl, spare
                slot.started = time.monotonic()
                slot.beat, slot.beat_seen = -1, slot.started
                old.send_signal(signal.SIGTERM)  # it drains: in-flight requests finish
                old_ctrl.close()
                self.retiring.append(old)
                log.info("rolling restart: worker %d is pid %d now; pid %d drains", slot.index, proc.pid, old.pid)
            return True
        finally:
            self.rolling = False

    async def stop(self, drain_timeout: float) -> None:
        """Close the listeners, SIGTERM the workers, wait for them to drain, then kill."""
        self.stopping = True
        for socks in [*self.sockets.values(), *self.inherited.values()]:
            for sock in socks:
                sock.close()
        self.sockets.clear()
        self.inherited.clear()
        procs = [s.proc for s in self.slots if s.proc is not None] + self.retiring
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_timeout + 2
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            await trio.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for slot in self.slots:
            if slot.ctrl is not None:
                slot.ctrl.close()
                slot.ctrl = None
