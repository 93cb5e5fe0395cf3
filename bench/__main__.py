"""wrk side by side: edge, nginx and haproxy as equivalent reverse proxies, one upstream.

    python -m bench [--scenario NAME ...] [--duration 5] [--rounds 5] [--workers N]

Starts one nginx upstream, nginx and haproxy as keep-alive reverse proxies (1 worker or
thread each), edge with 1 worker and with N workers (10 Mappings), edge with 10,000
Mappings, edge with a rate limit that never triggers, and bench.forwarder (a bare Python
byte relay on edge's reactor: what the event loop alone costs, without HTTP work). Over
TLS (https_c50, tls_handshake): nginx (1 worker, `listen ssl`) and edge with 1 and N
workers (an HTTPS Listener) serve one self-signed ECDSA P-256 certificate made at start.
Over HTTP/2 (h2_streams): h2load instead of wrk, h2 by ALPN on that certificate, against
nginx-h2 (nginx-tls with `listen ssl http2`) and the same edge targets (their HTTPS Listener
offers h2); each round warms up its connections for 1 s before its measured duration.
Over gRPC (grpc_unary): h2load POSTs one gRPC message per call over h2c to nginx-grpc
(`grpc_pass`) and to edge with a `grpc: true` Mapping, both to nghttpd answering a valid
unary response with a grpc-status trailer (compiled, >100,000 calls/s: not the bottleneck).
Rounds are interleaved (every target once per round, every other round in reverse order)
and medians reported; CPU per request is the user+system time of the proxy's processes
(/proc) over the requests the load generator completed (with h2load, from when it says its
measured duration started to when it says it ended). Writes bench/results/<scenario>.json,
summary.md and summary.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from bench import h2load, report, targets, tlsbench, wrk

RESULTS = targets.ROOT / "bench" / "results"


@dataclass(frozen=True)
class Scenario:
    description: str
    path: str
    connections: int
    targets: tuple[str, ...]
    baseline: str = "nginx"
    close: bool = False
    unit: str = "requests/s"  # what one wrk request is, for the report
    streams: int = 0  # > 0: h2load with this many concurrent streams per connection, not wrk
    grpc: bool = False  # unary gRPC calls (h2load POSTs of one message) to the gRPC upstream


PROXIES = ("nginx", "haproxy", "edge-1", "edge-N")
# the floor of Python proxying (bench.forwarder: a byte relay, no HTTP), on keep-alive only
KEEP_ALIVE = (*PROXIES, "py-forwarder")
# over TLS, the same certificate: nginx (1 worker) and edge with 1 and N workers
TLS = ("nginx-tls", "edge-1-tls", "edge-N-tls")
# over HTTP/2 (h2 by ALPN), the same certificate: nginx as nginx-tls with http2, and edge's HTTPS Listener
H2 = ("nginx-h2", "edge-1-tls", "edge-N-tls")
# gRPC over h2c to a compiled h2 upstream (nghttpd): nginx's grpc_pass and edge's grpc: true Mapping
GRPC = ("nginx-grpc", "edge-1-grpc", "edge-N-grpc")
SCENARIOS = {
    "small_c50": Scenario("small GET, keep-alive, 50 connections", "/bench/", 50, KEEP_ALIVE),
    "small_c200": Scenario("small GET, keep-alive, 200 connections", "/bench/", 200, KEEP_ALIVE),
    "new_connection": Scenario("small GET, a new connection per request, 50 at a time", "/bench/", 50, PROXIES,
                               close=True),
    "large_1mib": Scenario("1 MiB responses, keep-alive, 16 connections", "/bench/big", 16, PROXIES),
    "mappings_10k": Scenario("10,000 Mappings, the request matches the one in the middle (1 worker)",
                             "/bench/", 50, ("edge-1", "edge-1-10k"), baseline="edge-1"),
    "ratelimit_c50": Scenario("a rate limit per client that never triggers, 50 connections (1 worker)",
                              "/bench/", 50, ("edge-1", "edge-1-ratelimit"), baseline="edge-1"),
    "https_c50": Scenario("small GET over HTTPS (TLS 1.3, ECDSA P-256, HTTP/1.1), keep-alive, 50 connections",
                          "/bench/", 50, TLS, baseline="nginx-tls"),
    "tls_handshake": Scenario("small GET, a new TLS connection (a full handshake) per request, 50 at a time "
                              "(TLS 1.3, ECDSA P-256; wrk would resume from tickets: nginx has no session "
                              "cache or tickets, edge none either (NumTickets 0), though its workers share ticket keys)",
                              "/bench/", 50, TLS, baseline="nginx-tls", close=True, unit="handshakes/s"),
    "h2_streams": Scenario("small GET over HTTP/2 (h2 by ALPN, TLS 1.3, ECDSA P-256), 4 connections with "
                           "100 concurrent streams each (h2load)", "/bench/", 4, H2, baseline="nginx-h2",
                           streams=100),
    "grpc_unary": Scenario("unary gRPC calls over h2c (one small message each way, grpc-status trailer), "
                           "4 connections with 100 concurrent streams each (h2load), upstream nghttpd over h2c",
                           targets.GRPC_PATH, 4, GRPC, baseline="nginx-grpc", streams=100, grpc=True),
}


def load(target: targets.Target, scenario: Scenario, duration: float, warm_up: float = 1.0,
         snapshot=lambda: None) -> tuple[dict, tuple]:
    """wrk, or h2load (after `warm_up` seconds in the same connections) for a scenario with
    streams; `snapshot()` before and after the measured requests."""
    if scenario.streams:
        return h2load.run(target.port, scenario.path, clients=scenario.connections, streams=scenario.streams,
                          duration=duration, warm_up=warm_up, tls=target.tls, snapshot=snapshot,
                          **({"data": targets.GRPC_REQUEST, "headers": targets.GRPC_HEADERS} if scenario.grpc else {}))
    before = snapshot()
    result = wrk.run(target.port, scenario.path, connections=scenario.connections, duration=duration,
                     close=scenario.close, tls=target.tls)
    return result, (before, snapshot())


def measure(target: targets.Target, scenario: Scenario, duration: float) -> dict:
    result, (before, after) = load(target, scenario, duration,
                                   snapshot=lambda: (target.cpu_seconds(), _reactor_counts(target)))
    if "output" in result:  # h2load counted errors: what it said, as it said it
        print(f"{target.name}: {result['errors']} errors; h2load printed:\n{result['output']}", flush=True)
    cpu = after[0] - before[0]
    result["cpu_us_per_request"] = cpu / max(result["requests"], 1) * 1e6
    if before[1] is not None:  # edge: scheduler round trips (reactor turns) per request
        batches, events = (a - b for a, b in zip(after[1], before[1]))
        result["reactor_turns_per_request"] = round(batches / max(result["requests"], 1), 4)
        result["events_per_reactor_turn"] = round(events / max(batches, 1), 1)
    return result


def _reactor_counts(target: targets.Target) -> tuple[int, int] | None:
    if target.admin is None:
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{target.admin}/metrics", timeout=5) as r:
        metrics = dict(line.split(" ", 1) for line in r.read().decode().splitlines() if " " in line)
    return int(float(metrics["edge_reactor_batches_total"])), int(float(metrics["edge_reactor_events_total"]))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="workers of edge-N")
    ap.add_argument("--against", metavar="REV", help="also run REV's edge with 1 worker (edge-1@REV) in the "
                    "scenarios that run edge-1: a before/after in the same run, ratios to the same nginx")
    args = ap.parse_args()
    if args.against:
        for name, s in list(SCENARIOS.items()):
            if "edge-1" in s.targets:
                at = s.targets.index("edge-1") + 1
                SCENARIOS[name] = replace(s, targets=(*s.targets[:at], f"edge-1@{args.against}", *s.targets[at:]))
    targets.require("wrk", "nginx", "haproxy")
    chosen = args.scenario or list(SCENARIOS)
    if any(SCENARIOS[name].streams for name in chosen):
        targets.require("h2load", hint="apt-get install nghttp2-client (`make test` installs it)")
    needed = {t for name in chosen for t in SCENARIOS[name].targets}
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    cert = tlsbench.self_signed(work) if needed & {*TLS, *H2} else None
    up = targets.upstream(work)
    grpc_up = targets.grpc_upstream(work) if needed & set(GRPC) else None
    running: dict[str, targets.Target] = {}
    before = targets.checkout(work, args.against) if args.against else None
    try:
        starters = {
            "nginx": lambda: targets.nginx(work, up.port),
            "haproxy": lambda: targets.haproxy(work, up.port),
            "py-forwarder": lambda: targets.forwarder(up.port),
            "edge-1": lambda: targets.edge(work, "edge-1", up.port, workers=1, mappings=10),
            "edge-N": lambda: targets.edge(work, "edge-N", up.port, workers=args.workers, mappings=10),
            "edge-1-10k": lambda: targets.edge(work, "edge-1-10k", up.port, workers=1, mappings=10_000),
            "edge-1-ratelimit": lambda: targets.edge(work, "edge-1-ratelimit", up.port, workers=1, mappings=10,
                                                     rate_limited=True),
            **({f"edge-1@{args.against}": lambda: targets.edge(work, "edge-1-before", up.port, workers=1, mappings=10,
                                                                 tree=before)} if before else {}),
            "nginx-tls": lambda: targets.nginx_tls(work, up.port, cert),
            "nginx-h2": lambda: targets.nginx_tls(work, up.port, cert, http2=True),
            "edge-1-tls": lambda: targets.edge(work, "edge-1-tls", up.port, workers=1, mappings=10, cert=cert),
            "edge-N-tls": lambda: targets.edge(work, "edge-N-tls", up.port, workers=args.workers, mappings=10,
                                               cert=cert),
            "nginx-grpc": lambda: targets.nginx_grpc(work, grpc_up.port),
            "edge-1-grpc": lambda: targets.edge_grpc(work, "edge-1-grpc", grpc_up.port, workers=1),
            "edge-N-grpc": lambda: targets.edge_grpc(work, "edge-N-grpc", grpc_up.port, workers=args.workers),
        }
        for name in sorted(needed, key=list(starters).index):
            running[name] = starters[name]()
        for t in [up, *([grpc_up] if grpc_up else []), *running.values()]:
            targets.wait_grpc(t.port) if t.grpc else targets.wait_http(t.port, tls=t.tls)
        for t in running.values():  # every TLS connection of tls_handshake must be a full handshake
            if t.tls and tlsbench.resumed(t.port):
                raise SystemExit(f"{t.name} resumes TLS sessions: its new connections would not be full handshakes")
        RESULTS.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in chosen:
            scenario = SCENARIOS[name]
            for t in scenario.targets:  # warm-up: pools, caches, the kernel's accept queues
                warm, _ = load(running[t], scenario, duration=1, warm_up=0)
                if warm["errors"]:
                    raise SystemExit(f"{name}: {t} answered {warm['errors']} errors during the warm-up"
                                     + (f"; h2load printed:\n{warm['output']}" if "output" in warm else ""))
            runs: dict[str, list[dict]] = {t: [] for t in scenario.targets}
            for r in range(args.rounds):
                # every other round in reverse: no target always runs first (or right after
                # the same neighbour) in a round, so drifts of the machine do not favour one
                order = scenario.targets if r % 2 == 0 else scenario.targets[::-1]
                for t in order:
                    runs[t].append(measure(running[t], scenario, args.duration))
            summary = report.summarize(runs, scenario.baseline)
            results[name] = {"description": scenario.description, "baseline": scenario.baseline,
                             "unit": scenario.unit,
                             "setup": {"connections": scenario.connections, "duration_s": args.duration,
                                       "rounds": args.rounds, "edge_N_workers": args.workers,
                                       "cpus": os.cpu_count(), "new_connection_per_request": scenario.close,
                                       "tls": running[scenario.baseline].tls,
                                       **({"load_generator": "h2load", "streams_per_connection": scenario.streams,
                                           "warm_up_s": 1} if scenario.streams else {})},
                             "summary": summary, "runs": runs}
            (RESULTS / f"{name}.json").write_text(json.dumps(results[name], indent=2) + "\n")
            text = report.markdown(name, scenario.description, scenario.baseline, summary, scenario.unit)
            print(text, flush=True)
        md = "\n".join(report.markdown(n, r["description"], r["baseline"], r["summary"], r["unit"])
                       for n, r in results.items())
        (RESULTS / "summary.md").write_text(md)
        try:
            report.chart(results, RESULTS / "summary.png")
        except ImportError:
            print("matplotlib is missing (pip install -e '.[bench]'): no chart")
    finally:
        for t in [*running.values(), up, *([grpc_up] if grpc_up else [])]:
            t.stop()
        if before is not None:
            targets.drop_checkout(before)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
