"""Command line: `edge serve` runs the gateway, `edge check` validates configuration."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from edge.supervisor import compile as compiler
from edge.supervisor.sources import files


def _env(name: str, default):
    return os.environ.get(name, default)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="Kubernetes-native API gateway (Emissary configuration)")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("-c", "--config", action="append", default=[],
                       help="directory or file of YAML configuration (repeatable; env EDGE_CONFIG, ':'-separated)")
    serve.add_argument("--workers", type=int, default=int(_env("EDGE_WORKERS", os.cpu_count() or 1)),
                       help="worker processes (env EDGE_WORKERS; default: CPU count)")
    serve.add_argument("--admin-addr", default=_env("EDGE_ADMIN_ADDR", "127.0.0.1:8877"),
                       help="admin HOST:PORT (env EDGE_ADMIN_ADDR)")
    serve.add_argument("--ambassador-id", default=_env("AMBASSADOR_ID", "default"), help="env AMBASSADOR_ID")
    serve.add_argument("--namespace", default=_env("AMBASSADOR_NAMESPACE", "default"),
                       help="namespace of objects without one (env AMBASSADOR_NAMESPACE)")
    serve.add_argument("--drain-timeout", type=float, default=float(_env("EDGE_DRAIN_TIMEOUT", 30)),
                       help="seconds in-flight requests get on SIGTERM (env EDGE_DRAIN_TIMEOUT)")
    serve.add_argument("--header-timeout", type=float, default=float(_env("EDGE_HEADER_TIMEOUT", 10)),
                       help="seconds a client has to send its request head, else 408 (env EDGE_HEADER_TIMEOUT)")
    serve.add_argument("--idle-timeout", type=float, default=float(_env("EDGE_IDLE_TIMEOUT", 300)),
                       help="seconds an idle keep-alive client connection stays open (env EDGE_IDLE_TIMEOUT)")
    serve.add_argument("--heartbeat-timeout", type=float, default=float(_env("EDGE_HEARTBEAT_TIMEOUT", 3)),
                       help="seconds without a worker heartbeat before it is replaced (env EDGE_HEARTBEAT_TIMEOUT)")
    serve.add_argument("--dns-refresh", type=float, default=float(_env("EDGE_DNS_REFRESH", 30)),
                       help="seconds between re-resolving service names (env EDGE_DNS_REFRESH)")
    serve.add_argument("--max-table-mb", type=float, default=float(_env("EDGE_MAX_TABLE_MB", 256)),
                       help="a route table encoding to more than this is rejected whole; the last good one "
                            "keeps serving (env EDGE_MAX_TABLE_MB)")
    serve.add_argument("--kubernetes", action=argparse.BooleanOptionalAction,
                       default=_env_bool("EDGE_KUBERNETES", "KUBERNETES_SERVICE_HOST" in os.environ),
                       help="watch the Kubernetes API (env EDGE_KUBERNETES; default: on when running in a pod)")
    serve.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                       help="kubeconfig file (env KUBECONFIG; default: in-cluster credentials, else ~/.kube/config)")
    serve.add_argument("--single-namespace", action=argparse.BooleanOptionalAction,
                       default=bool(_env("AMBASSADOR_SINGLE_NAMESPACE", "")),
                       help="watch only --namespace (env AMBASSADOR_SINGLE_NAMESPACE)")
    serve.add_argument("--label-selector", default=_env("AMBASSADOR_LABEL_SELECTOR", ""),
                       help="read only labelled configuration objects (env AMBASSADOR_LABEL_SELECTOR)")
    serve.add_argument("--ingress-status-service", default=_env("EDGE_INGRESS_STATUS_SERVICE", "edge"),
                       help="the gateway's own Service in --namespace, whose load-balancer address Ingresses "
                            "get in their status (env EDGE_INGRESS_STATUS_SERVICE)")
    serve.add_argument("--ingress-status-address", default=_env("EDGE_INGRESS_STATUS_ADDRESS", ""),
                       help="address(es), comma-separated, to write in Ingress status instead "
                            "(env EDGE_INGRESS_STATUS_ADDRESS)")
    serve.add_argument("--ratelimit-redis", default=_env("EDGE_RATELIMIT_REDIS", ""),
                       help="redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]: keep rate-limit counters in Redis, shared by every edge "
                            "on it (env EDGE_RATELIMIT_REDIS; default: shared memory, this node only)")
    serve.add_argument("--ratelimit-budget-ms", type=float, default=float(_env("EDGE_RATELIMIT_BUDGET_MS", 20)),
                       help="how long a request waits for Redis before the failure mode applies "
                            "(env EDGE_RATELIMIT_BUDGET_MS)")
    serve.add_argument("--ratelimit-failure-mode", choices=("open", "deny"),
                       default=_env("EDGE_RATELIMIT_FAILURE_MODE", "open"),
                       help="Redis unavailable: allow (open) or refuse (deny) limited requests "
                            "(env EDGE_RATELIMIT_FAILURE_MODE)")
    serve.add_argument("--ratelimit-buckets", type=int, default=int(_env("EDGE_RATELIMIT_BUCKETS", 16384)),
                       help="shared-memory counter buckets per worker, a power of two (env EDGE_RATELIMIT_BUCKETS)")
    serve.add_argument("--log-level", default=_env("EDGE_LOG_LEVEL", "INFO"))

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


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        sys.exit(check(args.paths, args.ambassador_id, args.namespace))
    from edge.supervisor.main import Options, run

    paths = args.config or [p for p in _env("EDGE_CONFIG", "").split(":") if p]
    if args.ratelimit_buckets <= 0 or args.ratelimit_buckets & (args.ratelimit_buckets - 1):
        sys.exit(f"edge serve: --ratelimit-buckets must be a power of two, got {args.ratelimit_buckets}")
    if args.ratelimit_redis:
        from edge.worker.redislink import parse_redis_url
        try:
            parse_redis_url(args.ratelimit_redis)
        except ValueError as exc:
            sys.exit(f"edge serve: --ratelimit-redis: {exc}")
    if not paths and not args.kubernetes:
        sys.exit("edge serve: give configuration with -c PATH (or EDGE_CONFIG), or --kubernetes")
    logging.basicConfig(level=args.log_level, format="%(asctime)s supervisor %(levelname)s %(message)s")
    run(Options(config_paths=paths, workers=max(1, args.workers), admin_addr=args.admin_addr,
                ambassador_id=args.ambassador_id, namespace=args.namespace, dns_refresh=args.dns_refresh,
                heartbeat_timeout=args.heartbeat_timeout, drain_timeout=args.drain_timeout,
                header_timeout=args.header_timeout, idle_timeout=args.idle_timeout, log_level=args.log_level,
                max_table_bytes=int(args.max_table_mb * (1 << 20)), kubernetes=args.kubernetes,
                kubeconfig=args.kubeconfig, single_namespace=args.single_namespace,
                label_selector=args.label_selector, ingress_status_service=args.ingress_status_service,
                ingress_status_address=args.ingress_status_address, ratelimit_buckets=args.ratelimit_buckets,
                ratelimit_redis=args.ratelimit_redis, ratelimit_budget_ms=args.ratelimit_budget_ms,
                ratelimit_failure_mode=args.ratelimit_failure_mode))
