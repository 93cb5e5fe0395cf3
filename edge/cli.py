"""Command line: `edge serve` runs the gateway, `edge check` validates configuration."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from edge import cpus, workerspec
from edge.supervisor import compile as compiler
from edge.supervisor.sources import files
from edge.workerspec import DEFAULTS as WORKER, FAILURE_MODES

# `edge serve` options that are Options fields of the same name
_OPTIONS = ("workers", "admin_addr", "admin_allow_remote_restart", "ambassador_id", "namespace", "drain_timeout",
            "header_timeout", "idle_timeout", "send_timeout", "heartbeat_timeout", "dns_refresh", "kubernetes",
            "kubeconfig",
            "single_namespace", "label_selector", "ingress_status_service", "ingress_status_address",
            "ratelimit_redis", "ratelimit_budget_ms", "ratelimit_failure_mode", "ratelimit_buckets", "log_level",
            "upgrade_socket")


def _env(name: str, default):
    return os.environ.get(name, default)


def _env_bool(name: str, default: bool | None) -> bool | None:
    value = os.environ.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """`edge serve`'s options default to None, "not given": the supervisor's Options (and the
    worker contract, edge.workerspec, for the workers' settings) declare the defaults. An
    environment twin given is parsed as if it had been typed."""
    p = argparse.ArgumentParser(prog="edge", description="Kubernetes-native API gateway (Emissary configuration)")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    env = os.environ.get
    serve.add_argument("-c", "--config", action="append", default=[],
                       help="directory or file of YAML configuration (repeatable; env EDGE_CONFIG, ':'-separated)")
    serve.add_argument("--workers", type=int, default=env("EDGE_WORKERS"),
                       help="worker processes (env EDGE_WORKERS; default: CPUs available to this process: "
                            f"affinity and cgroup quota, e.g. {cpus.describe()})")
    serve.add_argument("--admin-addr", default=env("EDGE_ADMIN_ADDR"),
                       help="admin HOST:PORT (env EDGE_ADMIN_ADDR)")
    serve.add_argument("--admin-allow-remote-restart", action=argparse.BooleanOptionalAction,
                       default=_env_bool("EDGE_ADMIN_ALLOW_REMOTE_RESTART", None),
                       help="answer POST /edge/v1/restart from other hosts too (env EDGE_ADMIN_ALLOW_REMOTE_RESTART; "
                            "default: loopback only, others get 403)")
    serve.add_argument("--ambassador-id", default=env("AMBASSADOR_ID"), help="env AMBASSADOR_ID")
    serve.add_argument("--namespace", default=env("AMBASSADOR_NAMESPACE"),
                       help="namespace of objects without one (env AMBASSADOR_NAMESPACE)")
    serve.add_argument("--drain-timeout", type=float, default=env("EDGE_DRAIN_TIMEOUT"),
                       help="seconds in-flight requests get on SIGTERM (env EDGE_DRAIN_TIMEOUT; "
                            f"default {WORKER.drain_timeout:g})")
    serve.add_argument("--header-timeout", type=float, default=env("EDGE_HEADER_TIMEOUT"),
                       help="seconds a client has to send its request head, else 408 (env EDGE_HEADER_TIMEOUT; "
                            f"default {WORKER.header_timeout:g})")
    serve.add_argument("--idle-timeout", type=float, default=env("EDGE_IDLE_TIMEOUT"),
                       help="seconds an idle keep-alive client connection stays open (env EDGE_IDLE_TIMEOUT; "
                            f"default {WORKER.idle_timeout:g})")
    serve.add_argument("--send-timeout", type=float, default=env("EDGE_SEND_TIMEOUT"),
                       help="seconds a client may take none of a response edge holds for it (an HTTP/2 "
                            f"window kept shut) before its connection is closed (env EDGE_SEND_TIMEOUT; "
                            f"default {WORKER.send_timeout:g})")
    serve.add_argument("--heartbeat-timeout", type=float, default=env("EDGE_HEARTBEAT_TIMEOUT"),
                       help="seconds without a worker heartbeat before it is replaced (env EDGE_HEARTBEAT_TIMEOUT)")
    serve.add_argument("--dns-refresh", type=float, default=env("EDGE_DNS_REFRESH"),
                       help="seconds between re-resolving service names (env EDGE_DNS_REFRESH)")
    serve.add_argument("--max-table-mb", type=float, default=env("EDGE_MAX_TABLE_MB"),
                       help="a route table encoding to more than this is rejected whole; the last good one "
                            "keeps serving (env EDGE_MAX_TABLE_MB)")
    serve.add_argument("--kubernetes", action=argparse.BooleanOptionalAction,
                       default=_env_bool("EDGE_KUBERNETES", "KUBERNETES_SERVICE_HOST" in os.environ),
                       help="watch the Kubernetes API (env EDGE_KUBERNETES; default: on when running in a pod)")
    serve.add_argument("--kubeconfig", default=env("KUBECONFIG"),
                       help="kubeconfig file (env KUBECONFIG; default: in-cluster credentials, else ~/.kube/config)")
    serve.add_argument("--single-namespace", action=argparse.BooleanOptionalAction,
                       default=bool(env("AMBASSADOR_SINGLE_NAMESPACE", "")),
                       help="watch only --namespace (env AMBASSADOR_SINGLE_NAMESPACE)")
    serve.add_argument("--label-selector", default=env("AMBASSADOR_LABEL_SELECTOR"),
                       help="read only labelled configuration objects (env AMBASSADOR_LABEL_SELECTOR)")
    serve.add_argument("--ingress-status-service", default=env("EDGE_INGRESS_STATUS_SERVICE"),
                       help="the gateway's own Service in --namespace, whose load-balancer address Ingresses "
                            "get in their status (env EDGE_INGRESS_STATUS_SERVICE)")
    serve.add_argument("--ingress-status-address", default=env("EDGE_INGRESS_STATUS_ADDRESS"),
                       help="address(es), comma-separated, to write in Ingress status instead "
                            "(env EDGE_INGRESS_STATUS_ADDRESS)")
    serve.add_argument("--ratelimit-redis", default=env("EDGE_RATELIMIT_REDIS"),
                       help="redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]: keep rate-limit counters in Redis, shared by every edge "
                            "on it (env EDGE_RATELIMIT_REDIS; default: shared memory, this node only)")
    serve.add_argument("--ratelimit-budget-ms", type=float, default=env("EDGE_RATELIMIT_BUDGET_MS"),
                       help="how long a request waits for Redis before the failure mode applies "
                            f"(env EDGE_RATELIMIT_BUDGET_MS; default {WORKER.ratelimit_budget_ms:g})")
    serve.add_argument("--ratelimit-failure-mode", choices=FAILURE_MODES, default=env("EDGE_RATELIMIT_FAILURE_MODE"),
                       help="Redis unavailable: allow (open) or refuse (deny) limited requests "
                            f"(env EDGE_RATELIMIT_FAILURE_MODE; default {WORKER.ratelimit_failure_mode})")
    serve.add_argument("--ratelimit-buckets", type=int, default=env("EDGE_RATELIMIT_BUCKETS"),
                       help="shared-memory counter buckets per worker, a power of two (env EDGE_RATELIMIT_BUCKETS)")
    serve.add_argument("--upgrade-socket", metavar="PATH", default=env("EDGE_UPGRADE_SOCKET"),
                       help="a Unix socket for upgrades without downtime: an edge started with the same PATH while "
                            "one serves there takes over its listening sockets and rate-limit counters, then the "
                            "old one drains and exits (env EDGE_UPGRADE_SOCKET)")
    serve.add_argument("--log-level", default=env("EDGE_LOG_LEVEL"),
                       help=f"env EDGE_LOG_LEVEL; default {WORKER.log_level}")

    check = sub.add_parser("check", help="compile configuration offline and print every diagnostic")
    check.add_argument("paths", nargs="+")
    check.add_argument("--ambassador-id", default=_env("AMBASSADOR_ID", "default"))
    check.add_argument("--namespace", default=_env("AMBASSADOR_NAMESPACE", "default"))
    return p


def check(paths: list[str], ambassador_id: str, namespace: str, out=None) -> int:
    """Print diagnostics; 1 if any object is invalid (or a file unreadable), else 0."""
    out = out or sys.stdout
    snapshot = files.load(paths, namespace)
    table, diags = compiler.compile(snapshot.objects, compiler.CompileOptions(
        ambassador_id=ambassador_id, admin_address=compiler.DEFAULT_ADMIN_ADDRESS))
    all_diags = list(snapshot.diagnostics) + diags
    for d in all_diags:
        print(d.format(), file=out)
    errors = sum(1 for d in all_diags if d.severity == "error")
    print(f"{len(snapshot.objects)} objects, {len(table.routes)} routes, {len(table.listeners)} listeners, "
          f"{errors} invalid", file=out)
    return 1 if errors else 0


def serve_options(args: argparse.Namespace):
    """The supervisor's Options from `edge serve`'s arguments: what was not given keeps the
    Options default. Exits with a message on a bad value."""
    from edge.supervisor.main import Options

    given = {name: getattr(args, name) for name in _OPTIONS if getattr(args, name) is not None}
    if args.max_table_mb is not None:
        given["max_table_bytes"] = int(args.max_table_mb * (1 << 20))
    given["workers"] = max(1, args.workers if args.workers is not None else cpus.available())
    paths = args.config or [p for p in _env("EDGE_CONFIG", "").split(":") if p]
    opts = Options(config_paths=paths, **given)
    if opts.ratelimit_buckets <= 0 or opts.ratelimit_buckets & (opts.ratelimit_buckets - 1):
        sys.exit(f"edge serve: --ratelimit-buckets must be a power of two, got {opts.ratelimit_buckets}")
    if opts.ratelimit_redis:
        from edge.worker.redislink import parse_redis_url
        try:
            parse_redis_url(opts.ratelimit_redis)
        except ValueError as exc:
            sys.exit(f"edge serve: --ratelimit-redis: {exc}")
    try:
        workerspec.tls_ticket_keys()
    except ValueError as exc:
        sys.exit(f"edge serve: {exc}")
    if not paths and not opts.kubernetes:
        sys.exit("edge serve: give configuration with -c PATH (or EDGE_CONFIG), or --kubernetes")
    return opts


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        sys.exit(check(args.paths, args.ambassador_id, args.namespace))
    from edge.shm import NoSpace
    from edge.supervisor.admin import AdminBindError
    from edge.supervisor.handover import HandoverFailed
    from edge.supervisor.sources import CredentialsError
    from edge.supervisor.main import run

    opts = serve_options(args)
    logging.basicConfig(level=opts.log_level, format="%(asctime)s supervisor %(levelname)s %(message)s")
    try:
        run(opts)
    except (NoSpace, CredentialsError, HandoverFailed, AdminBindError) as exc:
        sys.exit(f"edge serve: {exc}")  # before anything started: one line that says what to do
