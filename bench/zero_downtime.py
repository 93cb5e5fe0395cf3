"""Configuration changes under sustained load: failures, propagation time, memory.

    python -m bench.zero_downtime [--changes 200] [--duration 60] [--workers 2]
                                  [--connections 16] [--reloads 0]

edge (2 workers) proxies to one nginx upstream while the load generator keeps
`connections` keep-alive clients on the stable routes. `changes` configuration changes
(bench/churn.py: Mappings added, removed and edited, the Module changed, whole files
replaced) are spread over `duration` seconds. For each, the time from the file write to
every worker serving the new table generation is measured (admin API). Then `reloads`
more changes run back to back without load, and the RSS of every edge process is
compared before and after. Writes bench/results/zero_downtime.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import trio

from bench import targets
from bench.churn import Churn
from bench.loadgen import LoadGenerator

RESULTS = targets.ROOT / "bench" / "results"
PROPAGATION_TIMEOUT = 5.0


def served_everywhere(config: dict, generation: int) -> bool:
    return config["generation"] >= generation and all(
        w["generation"] is not None and w["generation"] >= generation for w in config["workers"])


async def apply_and_wait(churn: Churn, i: int, admin: int) -> tuple[str, float]:
    """Apply change i; seconds until every worker serves a newer generation."""
    before = (await trio.to_thread.run_sync(targets.admin_json, admin, "/edge/v1/config"))["generation"]
    kind = churn.change(i)
    start = time.monotonic()
    while time.monotonic() - start < PROPAGATION_TIMEOUT:
        config = await trio.to_thread.run_sync(targets.admin_json, admin, "/edge/v1/config")
        if served_everywhere(config, before + 1):
            return kind, time.monotonic() - start
        await trio.sleep(0.001)
    raise RuntimeError(f"change {i} ({kind}) not served by every worker after {PROPAGATION_TIMEOUT}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(edge: targets.Target, churn: Churn, args) -> dict:
    load = LoadGenerator(edge.port, churn.stable_routes, connections=args.connections)
    stop = trio.Event()
    propagation: list[float] = []
    kinds: list[str] = []
    rss_start = edge.rss_mib()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, stop)
        await trio.sleep(1)  # the load is running before the first change
        interval = args.duration / args.changes
        started = time.monotonic()
        for i in range(args.changes):
            kind, seconds = await apply_and_wait(churn, i, edge.admin)
            kinds.append(kind)
            propagation.append(seconds)
            await trio.sleep_until(trio.current_time() + max(0.0, started + (i + 1) * interval - time.monotonic()))
        await trio.sleep(1)
        stop.set()
    under_load = time.monotonic() - started
    for i in range(args.changes, args.changes + args.reloads):
        await apply_and_wait(churn, i, edge.admin)
    rss_end = edge.rss_mib()
    total = load.total()
    return {
        "changes": args.changes, "seconds_under_load": round(under_load, 1), "workers": args.workers,
        "change_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
        "requests": total.ok + total.failures, "failed_requests": total.failures,
        "server_errors": total.server_errors, "transport_errors": total.transport_errors,
        "transport_error_kinds": dict(load.errors),
        "per_route": {r: {"ok": c.ok, "failures": c.failures} for r, c in load.counts.items()},
        "propagation_ms": {"p50": round(statistics.median(propagation) * 1000, 1),
                           "p99": round(percentile(propagation, 0.99) * 1000, 1),
                           "max": round(max(propagation) * 1000, 1)},
        "reloads_without_load": args.reloads,
        "rss_mib": {str(pid): {"start": round(rss_start.get(pid, 0), 1), "end": round(mib, 1)}
                    for pid, mib in rss_end.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.zero_downtime")
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--reloads", type=int, default=0)
    args = ap.parse_args()
    targets.require("nginx")
    work = Path(tempfile.mkdtemp(prefix="edge-zd-"))
    up = targets.upstream(work)
    config = work / "edge"
    config.mkdir()
    port = targets.free_port()
    (config / "00-listener.yaml").write_text(targets.listener_yaml(port))
    churn = Churn(config, f"127.0.0.1:{up.port}")
    churn.start()
    edge = targets.edge_serving(config, "edge", port, args.workers)
    try:
        for t in (up, edge):
            targets.wait_http(t.port, churn.stable_routes[0] if t is edge else "/bench/")
        result = trio.run(measure, edge, churn, args)
    finally:
        edge.stop()
        up.stop()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zero_downtime.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_route"}, indent=2))


if __name__ == "__main__":
    main()
