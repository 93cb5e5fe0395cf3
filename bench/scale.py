"""10,000 Mappings on 1,000 Hosts: compile, publish and load times, memory, throughput.

    python -m bench.scale [--mappings 10000] [--hosts 1000] [--duration 5] [--rounds 3]

Writes the configuration as YAML files (plus one invalid Mapping), then measures
in-process: reading and compiling the files, encoding and publishing the table into
shared memory, and a worker's load (decode + route indexes). Then it runs edge on it and
edge on 10 Mappings (1 worker each, one nginx upstream) and reports RSS per process,
wrk requests/s for each (interleaved rounds, the request matching a Mapping of the
middle Host), the invalid Mapping's diagnostic, and the time until an edit made while
serving is served by the worker. Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import targets, wrk
from edge import codec
from edge.supervisor.compile import compile
from edge.supervisor.publish import Publisher
from edge.supervisor.sources import files
from edge.worker.router import Router

RESULTS = targets.ROOT / "bench" / "results"


def doc(kind: str, name: str, spec: dict) -> str:
    return "---\n" + json.dumps({"apiVersion": "getambassador.io/v3alpha1", "kind": kind,
                                 "metadata": {"name": name}, "spec": spec}) + "\n"


def write_config(directory: Path, port: int, up: int, mappings: int, hosts: int) -> None:
    """`hosts` Hosts h<j>.example.com, `mappings` Mappings spread over them, one invalid."""
    directory.mkdir(parents=True)
    (directory / "00-listener.yaml").write_text(targets.listener_yaml(port))
    per_host = max(1, mappings // hosts)
    (directory / "hosts.yaml").write_text("".join(
        doc("Host", f"h{j}", {"hostname": f"h{j}.example.com", "requestPolicy": {"insecure": {"action": "Route"}}})
        for j in range(hosts)))
    for part in range(10):
        (directory / f"mappings-{part}.yaml").write_text("".join(
            doc("Mapping", f"m{i}", {"prefix": f"/svc-{i}/", "rewrite": "", "hostname": f"h{i // per_host}.example.com",
                                     "service": f"127.0.0.1:{up}"})
            for i in range(part, mappings, 10)))
    (directory / "invalid.yaml").write_text(doc("Mapping", "broken", {"prefix": "no-slash", "service": "x:1"}))


def wait_served(port: int, path: str, host: str, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
            if urllib.request.urlopen(req, timeout=2).status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{host}{path} not served after {timeout}s")


def in_process(directory: Path) -> dict:
    start = time.perf_counter()
    snapshot = files.load([str(directory)])
    loaded = time.perf_counter()
    table, diags = compile(snapshot.objects)
    compiled = time.perf_counter()
    publisher = Publisher(f"edge-scale-{int(time.time() * 1000)}")
    try:
        publisher.publish(table)
        published = time.perf_counter()
    finally:
        publisher.close()
    payload = codec.encode(table)
    decode_start = time.perf_counter()
    Router(codec.decode(payload))
    worker_load = time.perf_counter() - decode_start
    return {"read_yaml_s": round(loaded - start, 3), "compile_s": round(compiled - loaded, 3),
            "publish_ms": round((published - compiled) * 1000, 1), "worker_load_ms": round(worker_load * 1000, 1),
            "table_bytes": len(payload), "routes": len(table.routes), "virtual_hosts": len(table.virtual_hosts),
            "errors": [d.format() for d in diags if d.severity == "error"]}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.scale")
    ap.add_argument("--mappings", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=1_000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    targets.require("wrk", "nginx")
    work = Path(tempfile.mkdtemp(prefix="edge-scale-"))
    up = targets.upstream(work)
    running = [up]
    try:
        big_port = targets.free_port()
        big_dir = work / "edge-10k"
        write_config(big_dir, big_port, up.port, args.mappings, args.hosts)
        result = {"mappings": args.mappings, "hosts": args.hosts, "in_process": in_process(big_dir)}
        middle = args.mappings // 2
        host = f"h{middle // max(1, args.mappings // args.hosts)}.example.com"
        path = f"/svc-{middle}/"
        started = time.monotonic()
        big = targets.edge_serving(big_dir, "edge-10k", big_port, workers=1)
        small = targets.edge(work, "edge-10", up.port, workers=1, mappings=10)
        running += [big, small]
        targets.wait_http(up.port)
        wait_served(big.port, path, host, timeout=60)
        result["start_to_serving_s"] = round(time.monotonic() - started, 3)
        targets.wait_http(small.port)
        result["rss_mib"] = {"edge_10k": {str(k): round(v, 1) for k, v in big.rss_mib().items()},
                             "edge_10": {str(k): round(v, 1) for k, v in small.rss_mib().items()}}
        diag = targets.admin_json(big.admin, "/ambassador/v0/diag/?json=true")
        result["invalid_object_diagnostics"] = [e for e in diag["errors"] if e["name"] == "broken"]
        rps: dict[str, list[float]] = {"edge_10": [], "edge_10k": []}
        for _ in range(args.rounds):
            rps["edge_10"].append(wrk.run(small.port, "/bench/", connections=50, duration=args.duration)["rps"])
            rps["edge_10k"].append(wrk.run(big.port, path, connections=50, duration=args.duration,
                                           host=host)["rps"])
        result["rps"] = {k: statistics.median(v) for k, v in rps.items()}
        result["rps_ratio_10k_to_10"] = round(result["rps"]["edge_10k"] / result["rps"]["edge_10"], 3)
        # an edit while serving: a new Mapping on the middle Host
        (big_dir / "added.yaml").write_text(doc("Mapping", "added", {
            "prefix": "/added/", "rewrite": "", "hostname": host, "service": f"127.0.0.1:{up.port}"}))
        result["edit_to_served_s"] = round(wait_served(big.port, "/added/", host, timeout=10), 3)
    finally:
        for t in reversed(running):
            t.stop()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
