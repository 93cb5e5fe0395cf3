"""The supervisor: sources -> compile -> resolve -> publish, plus the arbiter and admin.

Sources (files, Kubernetes) each send full Snapshots; they are merged and compiled.
Snapshots are debounced (a short hold-off, bounded by a maximum delay) so a burst of file
writes becomes one table. A failed compile never replaces the last good table. Endpoint
changes (EndpointSlices, Services, Consul, DNS) take the fast path: the compiled table is
re-filled with endpoints and published, at most once per ENDPOINT_INTERVAL, no compile.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import secrets
import signal
import time
from dataclasses import asdict, dataclass, fields, replace

import trio

from edge.model import Diagnostic, RouteTable
from edge.ratelimit.store import CounterStore
from edge.shm import StatCells
from edge.workerspec import DEFAULTS as WORKER_DEFAULTS
from edge.workerspec import RATELIMIT_REDIS_ENV, TLS_TICKET_KEYS_ENV, TLS_TICKET_KEYS_SIZE, WorkerOptions
from edge.supervisor import activation, handover
from edge.supervisor import compile as compiler
from edge.supervisor import endpoints
from edge.supervisor import systemd
from edge.supervisor.admin import open_admin_socket, serve_admin
from edge.supervisor.arbiter import Arbiter
from edge.supervisor.publish import Publisher, TableRejected
from edge.supervisor.resolver import resolve_all
from edge.supervisor.sources import files
from edge.supervisor.sources.consul import ConsulWatcher

log = logging.getLogger("edge.supervisor")

HOLD_OFF = 0.02
MAX_DELAY = 0.2
ENDPOINT_INTERVAL = 0.01


@dataclass
class Options:
    config_paths: list[str]
    workers: int
    admin_addr: str = "127.0.0.1:8877"
    ambassador_id: str = "default"
    namespace: str = "default"
    dns_refresh: float = 30.0
    watch_interval: float = 0.1
    heartbeat_timeout: float = 3.0
    drain_timeout: float = WORKER_DEFAULTS.drain_timeout
    header_timeout: float = WORKER_DEFAULTS.header_timeout
    idle_timeout: float = WORKER_DEFAULTS.idle_timeout
    send_timeout: float = WORKER_DEFAULTS.send_timeout
    log_level: str = WORKER_DEFAULTS.log_level
    max_table_bytes: int = 256 << 20
    kubernetes: bool = False
    kubeconfig: str | None = None
    single_namespace: bool = False
    label_selector: str = ""
    ingress_status_service: str = "edge"
    ingress_status_address: str = ""
    ratelimit_buckets: int = 16384  # per worker cell; a power of two
    ratelimit_redis: str = ""
    ratelimit_budget_ms: float = WORKER_DEFAULTS.ratelimit_budget_ms
    ratelimit_failure_mode: str = WORKER_DEFAULTS.ratelimit_failure_mode
    admin_allow_remote_restart: bool = False  # POST /edge/v1/restart from other hosts too
    upgrade_socket: str = ""  # a Unix socket path: take over the edge serving there, then serve it


def worker_options(opts: Options, ratelimit: str | None) -> WorkerOptions:
    """Every worker's options: each Options field that is also a WorkerOptions field (so a
    setting declared in both reaches the workers with no line here), and the counter segment."""
    shared = {f.name for f in fields(Options)} & {f.name for f in fields(WorkerOptions)}
    return WorkerOptions(ratelimit=ratelimit, **{name: getattr(opts, name) for name in sorted(shared)})


class Supervisor:
    def __init__(self, opts: Options):
        self.opts = opts
        self.prefix = f"edge-{os.getpid()}-{secrets.token_hex(4)}"
        # first: these take NOTIFY_SOCKET and LISTEN_FDS out of the workers' environment
        self.notifier = systemd.Notifier()
        self.activated = activation.listen_fds()
        for a in self.activated:
            log.info("port %d: listening socket from systemd (%s)", a.port, a.name)
        self.stats = self.publisher = self.counters = self.admin_socket = None
        self.upgrade_listener = None
        self.admin_stop = trio.Event()  # set by retire(): the admin server finishes what it has
        # the edge this one takes over from (handover.HandoverFailed when it refuses)
        self.taken = handover.take_over(opts.upgrade_socket) if opts.upgrade_socket else None
        try:
            self._create_segments()  # shm.NoSpace when /dev/shm has no room for them
            self.admin_socket = self._admin_socket()  # AdminBindError when the address is taken
            self._init_rest(opts)
        except BaseException:  # no room, an unreadable kubeconfig: leave no segment behind
            self.close_segments()
            if self.taken is not None:  # the old edge sees the connection close and serves on
                self.taken.conn.close()
            raise

    def _init_rest(self, opts: Options) -> None:
        worker = worker_options(opts, ratelimit=self.counters.name)
        if opts.ratelimit_redis:
            # through the environment, not argv: the URL may carry a password, and argv is public
            os.environ[RATELIMIT_REDIS_ENV] = opts.ratelimit_redis
        else:
            os.environ.pop(RATELIMIT_REDIS_ENV, None)
        # one set of session-ticket keys for every worker (unless the operator gave theirs)
        if not os.environ.get(TLS_TICKET_KEYS_ENV):
            os.environ[TLS_TICKET_KEYS_ENV] = secrets.token_hex(TLS_TICKET_KEYS_SIZE)
        inherited = activation.by_port(self.activated) | (self.taken.sockets if self.taken else {})
        kept = frozenset(a.port for a in self.activated) | (self.taken.kept if self.taken else set())
        self.arbiter = Arbiter(opts.workers, self.publisher.first_segment, self.stats, worker,
                               heartbeat_timeout=opts.heartbeat_timeout, inherited=inherited, kept=kept,
                               cells=self.first_cells)
        self.snapshot: files.Snapshot | None = None
        self.sources: dict[str, files.Snapshot] = {}
        self.compiled: RouteTable | None = None
        self.served: RouteTable | None = None  # the last table published, endpoints filled
        self.diagnostics: list[Diagnostic] = []
        self.book = endpoints.EndpointBook()
        self.kube = self._kubernetes_source() if opts.kubernetes else None
        self.consul = ConsulWatcher(self.book, self.endpoints_changed)
        self._endpoints_dirty = trio.Event()
        self.endpoint_publishes = 0
        self.failed_dns: list[str] = []
        self.dns_diagnostics: list[Diagnostic] = []
        self.compile_count = 0
        self.tables_rejected = 0
        self.rejection: list[Diagnostic] = []  # why the newest table was not published
        self.last_apply_ms = 0.0
        self.stopping = trio.Event()

    def _create_segments(self) -> None:
        """Every segment reserves its memory up front; shm.NoSpace says which one wanted how
        much (the caller removes those already made)."""
        opts = self.opts
        self.stats = StatCells(f"{self.prefix}-stats", 2 * opts.workers, create=True)
        self.publisher = Publisher(self.prefix, max_bytes=opts.max_table_bytes)
        # one counter region per stats cell: a worker and its rolling-restart successor never share one
        self.first_cells = self._adopt_counters()
        if self.first_cells is None:
            self.counters = CounterStore(f"{self.prefix}-ratelimit", 2 * opts.workers, opts.ratelimit_buckets,
                                         create=True)

    def _adopt_counters(self) -> list[int] | None:
        """Taking over: the old edge's counter segment, so counts carry on; each slot's
        first cell (one the old workers do not write), or None to start a segment afresh."""
        taken, opts = self.taken, self.opts
        if taken is None:
            return None
        cells = taken.spare_cells(opts.workers, 2 * opts.workers, opts.ratelimit_buckets)
        if cells is None:
            log.warning("rate-limit counters start over: pid %d counts in %d cells of %d buckets, this edge "
                        "would in %d of %d (the same --workers and --ratelimit-buckets carry them over)",
                        taken.pid, taken.ncells, taken.buckets, 2 * opts.workers, opts.ratelimit_buckets)
            return None
        try:
            self.counters = CounterStore(taken.counters, adopt=True)
        except (OSError, ValueError) as exc:  # another /dev/shm (EDGE_SHM_DIR), or gone
            log.warning("rate-limit counters start over: cannot attach %s of pid %d: %s",
                        taken.counters, taken.pid, exc)
            return None
        log.info("rate-limit counters carry over from pid %d", taken.pid)
        return cells

    def _admin_socket(self):
        taken = self.taken
        if taken is not None and taken.admin is not None:
            if taken.admin_address == self.opts.admin_addr:
                return taken.admin
            taken.admin.close()  # the old edge's admin port is not ours: it closes with that edge
        return open_admin_socket(self.opts.admin_addr)

    def close_segments(self) -> None:
        for segment in (self.publisher, self.stats, self.counters):
            if segment is not None:
                segment.close()

    def _kubernetes_source(self):
        # imported here: the kubernetes client takes about 0.3 s to import, and most
        # file-configured gateways never need it
        from edge.supervisor.sources.kubernetes import KubernetesSource, Scope
        from edge.supervisor.sources.kubewatch import api_client

        scope = Scope(self.opts.namespace, self.opts.single_namespace, self.opts.label_selector,
                      self.opts.ingress_status_service, self.opts.ingress_status_address)
        return KubernetesSource(api_client(self.opts.kubeconfig), scope, self.book)

    # ---- pipeline ----
    def merged(self) -> files.Snapshot:
        objects, diags = [], []
        for name in sorted(self.sources):
            objects += self.sources[name].objects
            diags += self.sources[name].diagnostics
        return files.Snapshot(tuple(objects), tuple(diags))

    async def apply(self, snapshot: files.Snapshot) -> None:
        started = time.perf_counter()
        self.snapshot = snapshot
        options = compiler.CompileOptions(ambassador_id=self.opts.ambassador_id, admin_address=self.opts.admin_addr)
        table, diags = compiler.compile(snapshot.objects, options)
        self.compile_count += 1
        last_good = self.compiled
        self.compiled = table
        self.diagnostics = sorted(list(snapshot.diagnostics) + diags, key=compiler.diag_key)
        for d in self.diagnostics:
            if d.severity == "error":
                log.warning("%s", d.format())
        await self._refresh_dns(force=False)
        if not self._publish() and last_good is not None:
            self.compiled = last_good  # what the DNS loop republishes is what serves
        self.last_apply_ms = (time.perf_counter() - started) * 1000

    async def _refresh_dns(self, force: bool) -> None:
        names = endpoints.dns_names(self.compiled, self.book)
        todo = names if force else [n for n in names if n not in self.book.dns]
        if todo:
            found, failed = await resolve_all(todo, self.book.dns)
            self.book.dns.update(found)
            self.failed_dns = failed
        self.book.dns = {n: a for n, a in self.book.dns.items() if n in names}

    def endpoints_changed(self) -> None:
        """Sources call this after changing the EndpointBook: publish soon, no compile."""
        self._endpoints_dirty.set()

    async def _endpoint_loop(self) -> None:
        while True:
            await self._endpoints_dirty.wait()
            self._endpoints_dirty = trio.Event()
            if self.compiled is not None:
                self.endpoint_publishes += 1
                self._publish()
            await trio.sleep(ENDPOINT_INTERVAL)  # changes arriving meanwhile go out together

    def _publish(self) -> bool:
        """Publish the compiled table with today's endpoints; False if it was rejected
        whole (a global invariant), in which case the last good table keeps serving."""
        table = endpoints.fill(self.compiled, self.book)
        self.consul.want({endpoints.consul_key(c) for c in table.clusters if c.discovery == "consul"})
        self.dns_diagnostics = [Diagnostic("warning", "endpoints", "Cluster", "", c.name, "service",
                                           (f"cannot resolve {c.host}" if c.host in self.failed_dns else
                                            f"no endpoints for {c.service} ({c.discovery})")
                                           + "; requests get 503 until it has some")
                                for c in table.clusters if not c.endpoints]
        table = replace(table, diagnostics=tuple(self.diagnostics + self.dns_diagnostics))
        try:
            published = self.publisher.publish(table)
        except TableRejected as exc:  # over --max-table-mb, or no room in /dev/shm for it
            self.tables_rejected += 1
            current = self.publisher.current
            keeping = f"generation {current.generation} keeps serving" if current else "nothing is served yet"
            self.rejection = [Diagnostic("error", "edge", "RouteTable", "", "route-table", "size",
                                         f"rejected whole: {exc}; {keeping}")]
            log.error("%s", self.rejection[0].format())
            return False
        self.rejection = []
        self.served = table
        if published is not None:
            log.info("published table generation %d (%s, %d bytes)", published.generation,
                     published.version[:12], published.size)
        self.arbiter.set_listeners([(lst.bind_address, lst.port) for lst in table.listeners])
        if published is not None:
            self.arbiter.wake_all()
        return True

    async def _dns_loop(self) -> None:
        while True:
            await trio.sleep(self.opts.dns_refresh)
            if self.compiled is not None:
                before = dict(self.book.dns)
                await self._refresh_dns(force=True)
                if self.book.dns != before:
                    self._publish()

    async def _pipeline(self, receive: trio.MemoryReceiveChannel) -> None:
        """Debounce snapshots: wait HOLD_OFF after the last one, at most MAX_DELAY."""
        while True:
            name, snapshot = await receive.receive()
            self.sources[name] = snapshot
            deadline = trio.current_time() + MAX_DELAY
            while True:
                with trio.move_on_at(min(deadline, trio.current_time() + HOLD_OFF)) as scope:
                    name, snapshot = await receive.receive()
                    self.sources[name] = snapshot
                if scope.cancelled_caught:
                    break
            await self.apply(self.merged())

    async def _first_snapshots(self, receive: trio.MemoryReceiveChannel, names: set[str]) -> None:
        """Wait until every source has sent its first snapshot (Kubernetes: every kind
        listed), then compile and publish them together."""
        while not names <= self.sources.keys():
            name, snapshot = await receive.receive()
            self.sources[name] = snapshot
        await self.apply(self.merged())

    # ---- run ----
    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                send, receive = trio.open_memory_channel(math.inf)
                hup_send, hup_receive = trio.open_memory_channel(16)
                reloads_send, reloads_receive = trio.open_memory_channel(16)
                nursery.start_soon(self._signals, hup_send, reloads_send)
                await nursery.start(self.consul.run)
                names = set()
                if self.opts.config_paths:
                    names.add("files")
                    nursery.start_soon(lambda: files.watch(
                        self.opts.config_paths, _Tagged("files", send), interval=self.opts.watch_interval,
                        default_namespace=self.opts.namespace, reload_events=hup_receive))
                if self.kube is not None:
                    names.add("kubernetes")
                    nursery.start_soon(self.kube.run, _Tagged("kubernetes", send), self.endpoints_changed)
                await self._first_snapshots(receive, names)  # listeners exist before workers start
                nursery.start_soon(self._pipeline, receive)
                nursery.start_soon(self.arbiter.run)
                nursery.start_soon(self._dns_loop)
                nursery.start_soon(self._endpoint_loop)
                if self.taken is not None:  # the old edge serves (admin too) until these workers do
                    await systemd.wait_ready(self)
                await nursery.start(self._serve_admin)
                log.info("admin on http://%s/, %d workers", self.opts.admin_addr, self.opts.workers)
                if self.opts.upgrade_socket:
                    self.upgrade_listener = handover.bind(self.opts.upgrade_socket)
                    if self.taken is not None:
                        await handover.finish(self.taken)
                    nursery.start_soon(handover.serve, self.upgrade_listener, self)
                nursery.start_soon(systemd.run, self, self.notifier, reloads_receive)
                await self.stopping.wait()
                self.notifier.send(STOPPING="1", STATUS=f"draining (up to {self.opts.drain_timeout:g} s)")
                log.info("draining workers (up to %.0fs)", self.opts.drain_timeout)
                await self.arbiter.stop(self.opts.drain_timeout)
                nursery.cancel_scope.cancel()
        finally:
            self.close_segments()
            self.notifier.close()
            if self.upgrade_listener is not None:
                self.upgrade_listener.close()
            if self.admin_socket is not None:
                self.admin_socket.close()

    async def _serve_admin(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_admin(self, self.admin_socket, allow_remote_restart=self.opts.admin_allow_remote_restart,
                          stop=self.admin_stop, task_status=task_status)

    # ---- the upgrade socket's old side (handover.Server) ----
    def handover_state(self) -> dict:
        """The counter segment and cells a taker needs, or why there is no handover now."""
        if self.stopping.is_set():
            return {"error": "this edge is stopping"}
        if self.arbiter.rolling or self.arbiter.retiring:
            # a retiring worker still writes the cell the taker would use
            return {"error": "a rolling restart is running or draining; try again when it is done"}
        return {"counters": self.counters.name, "cells": [slot.cell for slot in self.arbiter.slots],
                "ncells": self.counters.cells, "buckets": self.counters.buckets}

    def handover_sockets(self):
        """Every listening socket by port, the ports whose sockets are systemd's, the admin
        socket and its address."""
        sockets = {**self.arbiter.inherited, **self.arbiter.sockets}
        return sockets, set(self.arbiter.kept), self.admin_socket, self.opts.admin_addr

    def retire(self) -> None:
        """A new edge serves: stop answering admin requests, drain, exit, and leave the
        counter segment (it is the new edge's now)."""
        self.counters.disown()
        # not a cancel: a request the old admin server accepted is answered, not reset (the
        # shared listening socket's next connections go to the new edge's server)
        self.admin_stop.set()
        self.stopping.set()

    async def _signals(self, hup: trio.MemorySendChannel, reloads: trio.MemorySendChannel) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: re-reading configuration")
                    hup.send_nowait(None)
                    # the files source re-reads and sends a snapshot, always: one more compile
                    # (Kubernetes is watched, not re-read: nothing to wait for)
                    reloads.send_nowait(self.compile_count + (1 if self.opts.config_paths else 0))
                elif signum == signal.SIGUSR2:
                    self.restart_workers()
                else:
                    self.stopping.set()

    def restart_workers(self) -> bool:
        """Start a rolling restart of every worker (SIGUSR2 or POST /edge/v1/restart);
        False if one is already running or no table is published yet."""
        current = self.publisher.current
        if current is None or self.arbiter.rolling:
            return False
        log.info("rolling restart of %d workers", len(self.arbiter.slots))
        self.nursery.start_soon(self.arbiter.rolling_restart, current.generation)
        return True

    def all_diagnostics(self) -> list[Diagnostic]:
        return self.rejection + self.diagnostics + self.dns_diagnostics

    # ---- admin view (and systemd's) ----
    def status_line(self) -> str:
        """systemd's STATUS=: generation, workers on it, errors and the first of them (one
        line: `systemctl status` shows it as it is)."""
        current = self.publisher.current
        generation = current.generation if current else 0
        loaded = sum(1 for w in self.arbiter.workers() if w["generation"] == generation)
        errors = [d for d in self.all_diagnostics() if d.severity == "error"]
        line = f"generation {generation}, {loaded}/{len(self.arbiter.slots)} workers on it, {len(errors)} errors"
        if errors:
            first = " ".join(errors[0].format().split())
            line += f"; {first[:200]}"
        return line

    def arbiter_turned(self) -> float:
        return self.arbiter.turned

    def ready(self) -> tuple[bool, str]:
        current = self.publisher.current
        if current is None:
            return False, "no table published yet\n"
        if not self.arbiter.all_loaded(current.generation):
            return False, f"waiting for workers to load generation {current.generation}\n"
        return True, f"ready: generation {current.generation}\n"

    def config(self) -> dict:
        current = self.publisher.current
        return {
            "pid": os.getpid(),
            "version": current.version if current else None,
            "generation": current.generation if current else 0,
            "publish_time": current.publish_time if current else None,
            "table_bytes": current.size if current else 0,
            "diagnostics": [asdict(d) for d in self.all_diagnostics()],
            "workers": self.arbiter.workers(),
            "listeners": {str(p): "listening" for p in self.arbiter.sockets} | {
                str(p): f"bind failed: {e}" for p, e in self.arbiter.bind_errors.items()},
            "dns_failures": self.failed_dns,
            "sources": self.source_statistics(),
        }

    def source_statistics(self) -> dict:
        out = {"files": {"paths": self.opts.config_paths}} if self.opts.config_paths else {}
        if self.kube is not None:
            out["kubernetes"] = self.kube.statistics()
        if self.consul.watches:
            out["consul"] = self.consul.statistics()
        return out

    def clusters(self) -> list[dict]:
        return [{"name": c.name, "service": c.service, "discovery": c.discovery,
                 "endpoints": [f"{e.address}:{e.port}" for e in c.endpoints]}
                for c in (self.served.clusters if self.served else ())]

    def diag(self) -> dict:
        objects = self.snapshot.objects if self.snapshot else ()
        current = self.publisher.current
        out = {
            "version": current.version if current else None,
            "generation": current.generation if current else 0,
            "resources": [{"kind": o.kind, "namespace": o.namespace, "name": o.name, "source": o.source}
                          for o in objects],
            "errors": [asdict(d) for d in self.all_diagnostics()],
            "routes": len(self.compiled.routes) if self.compiled else 0,
        }
        if self.kube is not None:  # kinds not read (no CRD, RBAC) and kinds whose objects may be old
            stats = self.kube.statistics()
            out["kubernetes"] = {"synced": stats["synced"], "stale": stats["stale"],
                                 "unavailable": stats["unavailable"],
                                 "kept": {kind: k["objects"] for kind, k in stats["kinds"].items()
                                          if k["unavailable"] is not None and k["objects"]},
                                 "stale_kinds": sorted(kind for kind, k in stats["kinds"].items() if k["stale"])}
        return out

    def metrics(self) -> dict[str, float]:
        current = self.publisher.current
        workers = self.arbiter.workers()
        return {
            "edge_table_generation": current.generation if current else 0,
            "edge_table_bytes": current.size if current else 0,
            "edge_compiles_total": self.compile_count,
            "edge_tables_rejected_total": self.tables_rejected,
            "edge_publish_skipped_total": self.publisher.skipped,
            "edge_diagnostics_errors": sum(1 for d in self.diagnostics if d.severity == "error"),
            "edge_requests_total": sum(w["requests"] for w in workers),
            "edge_active_connections": sum(w["active_connections"] for w in workers),
            "edge_internal_errors_total": sum(w["internal_errors"] for w in workers),
            "edge_client_errors_total": sum(w["client_errors"] for w in workers),
            "edge_upstream_errors_total": sum(w["upstream_errors"] for w in workers),
            "edge_reactor_batches_total": sum(w["reactor_batches"] for w in workers),
            "edge_reactor_events_total": sum(w["reactor_events"] for w in workers),
            "edge_worker_restarts_total": sum(w["restarts"] for w in workers),
            "edge_workers_retiring": len(self.arbiter.retiring),
            "edge_ratelimited_total": sum(w["ratelimited"] for w in workers),
            "edge_ratelimit_log_only_over_total": sum(w["ratelimit_log_only_over"] for w in workers),
            "edge_ratelimit_store_failures_total": sum(w["ratelimit_store_failures"] for w in workers),
            "edge_accept_errors_total": sum(w["accept_errors"] for w in workers),
            "edge_tls_handshake_errors_total": sum(w["tls_handshake_errors"] for w in workers),
            "edge_http2_connections_total": sum(w["h2_connections"] for w in workers),
            "edge_http2_connection_errors_total": sum(w["h2_connection_errors"] for w in workers),
            "edge_last_apply_ms": round(self.last_apply_ms, 3),
            "edge_endpoint_publishes_total": self.endpoint_publishes,
            **self._source_metrics(),
        }

    def _source_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.kube is not None:
            stats = self.kube.statistics()
            out["edge_kubernetes_stale"] = int(stats["stale"])
            out["edge_kubernetes_relists_total"] = sum(k["lists"] for k in stats["kinds"].values())
            out["edge_kubernetes_watch_errors_total"] = sum(k["errors"] for k in stats["kinds"].values())
            out["edge_kubernetes_events_total"] = sum(k["events"] for k in stats["kinds"].values())
        if self.consul.watches:
            out["edge_consul_stale"] = int(self.consul.statistics()["stale"])
        return out


class _Tagged:
    """A source's send channel: what it sends arrives as (source name, snapshot)."""

    def __init__(self, name: str, send: trio.MemorySendChannel):
        self.name, self.send_channel = name, send

    async def send(self, snapshot: files.Snapshot) -> None:
        await self.send_channel.send((self.name, snapshot))


def raise_nofile_limit() -> str:
    """Raise the soft RLIMIT_NOFILE to the hard limit (workers inherit it), as nginx's
    worker_rlimit_nofile does: systemd's default soft limit of 1024 is about 1,000
    connections per worker. Returns the startup log line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return f"file descriptors: soft limit {soft} (the hard limit)"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. a sandbox that refuses setrlimit
        return f"file descriptors: soft limit {soft}, not raised to the hard limit {hard}: {exc}"
    return f"file descriptors: soft limit raised from {soft} to {hard}"


def run(opts: Options) -> None:
    """Run until SIGTERM. Raises shm.NoSpace before anything starts when /dev/shm has no
    room for the segments."""
    log.info("%s", raise_nofile_limit())
    trio.run(Supervisor(opts).run)
