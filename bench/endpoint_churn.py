"""Endpoint churn from Kubernetes: changes absorbed per second and propagation time.

    python -m bench.endpoint_churn [--rate 1000] [--probes 100] [--services 50] [--workers 2]

edge (`--kubernetes`, 2 workers) watches the fake API server (tests/fakekube.py) with
`services` Services, each behind a Mapping with the kubernetes-endpoint resolver. A writer
thread replaces one of their EndpointSlices `rate` times per second (random ready pod
addresses). Every 100 ms a probe Service's slice is switched between two real upstreams,
and the time from that write to a request on /probe/ being answered by the new upstream
is the propagation time. The churn goes on until `probes` propagations are measured,
however long a slow machine takes for them, so the number of samples never depends on
the machine's speed. At the end every Service's endpoints in edge's published table
(/edge/v1/clusters) must equal the last slice written for it. The writes go straight into
the fake's store (its watch streams are what edge reads, through the official client),
so the writer's own HTTP cost does not limit the rate. Writes
bench/results/endpoint_churn.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import targets
from tests.fakekube import FakeKube
from tests.upstream import Upstream

RESULTS = targets.ROOT / "bench" / "results"
PROBE_EVERY = 0.1


def _slice(name: str, service: str, addresses: list[str], port: int) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


def _put(fake: FakeKube, kind, obj: dict) -> None:
    key = ("default", obj["metadata"]["name"])
    if key in fake.objects[kind]:
        fake.replace(kind, key, obj)
    else:
        fake.create(kind, "default", obj)


@dataclass
class ChurnResult:
    rate_asked: float
    changes: int = 0
    seconds: float = 0.0
    propagation_ms: list[float] = field(default_factory=list)
    probe_timeouts: int = 0
    mismatched_services: list[str] = field(default_factory=list)
    endpoint_publishes: int = 0
    supervisor_cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.changes / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        p = sorted(self.propagation_ms)
        pick = (lambda q: round(p[min(len(p) - 1, int(q * len(p)))], 1)) if p else (lambda q: None)
        return {"rate_asked": self.rate_asked, "changes": self.changes, "rate": round(self.rate, 1),
                "probes": len(p), "probe_timeouts": self.probe_timeouts,
                "propagation_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": round(max(p), 1) if p else None,
                                   "mean": round(statistics.fmean(p), 1) if p else None},
                "mismatched_services": self.mismatched_services, "endpoint_publishes": self.endpoint_publishes,
                "supervisor_cpu_seconds": round(self.supervisor_cpu_seconds, 2)}


def _admin_json(admin: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as r:
        return json.loads(r.read())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def run(rate: float, probes: int, services: int, workers: int, work: Path,
        max_seconds: float = 120.0) -> ChurnResult:
    """Run the scenario until `probes` propagations are measured (a probe times out
    after 5 s); raises AssertionError if edge does not come up or the probes take more
    than `max_seconds` in all."""
    fake = FakeKube(history=100_000).start()
    ups = [Upstream("one"), Upstream("two")]
    slice_kind, result = fake.kind("EndpointSlice"), ChurnResult(rate)
    procs = []
    try:
        for i in range(services):
            fake.create(fake.kind("Service"), "default", {"metadata": {"name": f"svc-{i}"},
                                                          "spec": {"ports": [{"name": "http", "port": 80}]}})
            fake.create(fake.kind("Mapping"), "default", {"metadata": {"name": f"svc-{i}"}, "spec": {
                "prefix": f"/svc-{i}/", "service": f"svc-{i}", "resolver": "kubernetes-endpoint"}})
            _put(fake, slice_kind, _slice(f"svc-{i}", f"svc-{i}", ["127.0.0.2"], ups[0].port))
        fake.create(fake.kind("Service"), "default", {"metadata": {"name": "probe"},
                                                      "spec": {"ports": [{"name": "http", "port": 80}]}})
        fake.create(fake.kind("Mapping"), "default", {"metadata": {"name": "probe"}, "spec": {
            "prefix": "/probe/", "service": "probe", "resolver": "kubernetes-endpoint"}})
        _put(fake, slice_kind, _slice("probe", "probe", ["127.0.0.1"], ups[0].port))
        port, admin = targets.free_port(), targets.free_port()
        (work / "listener.yaml").write_text(targets.listener_yaml(port))
        proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", "-c", str(work), "--kubernetes",
                                 "--kubeconfig", fake.kubeconfig(work.parent / "kubeconfig"), "--workers",
                                 str(workers), "--admin-addr", f"127.0.0.1:{admin}", "--log-level", "WARNING"],
                                cwd=targets.ROOT)
        procs.append(proc)
        client = httpx.Client()
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "edge did not start"
            try:
                if client.get(f"http://127.0.0.1:{port}/probe/").headers.get("x-upstream") == "one":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

        last: dict[str, tuple[list[str], int]] = {}
        stop = threading.Event()

        def churn() -> None:
            rng = random.Random(1)
            start = time.monotonic()
            n = 0
            while not stop.is_set():
                due = start + n / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                name = f"svc-{rng.randrange(services)}"
                addresses = sorted({f"127.0.{rng.randrange(1, 250)}.{rng.randrange(2, 250)}"
                                    for _ in range(rng.randint(1, 4))})
                _put(fake, slice_kind, _slice(name, name, addresses, ups[0].port))
                last[name] = (addresses, ups[0].port)
                n += 1
            result.changes, result.seconds = n, time.monotonic() - start

        cpu_before = _cpu_seconds(proc.pid)
        publishes_before = _metric(admin, "edge_endpoint_publishes_total")
        writer = threading.Thread(target=churn)
        writer.start()
        give_up = time.monotonic() + max_seconds
        turn = 1
        while len(result.propagation_ms) + result.probe_timeouts < probes:
            assert time.monotonic() < give_up, f"{probes} probes took more than {max_seconds} s"
            target = ups[turn % 2]
            written = time.monotonic()
            _put(fake, slice_kind, _slice("probe", "probe", ["127.0.0.1"], target.port))
            while True:
                r = client.get(f"http://127.0.0.1:{port}/probe/")
                if r.headers.get("x-upstream") == ("one", "two")[turn % 2]:
                    result.propagation_ms.append((time.monotonic() - written) * 1000)
                    break
                if time.monotonic() - written > 5:
                    result.probe_timeouts += 1
                    break
            turn += 1
            time.sleep(max(0.0, written + PROBE_EVERY - time.monotonic()))
        stop.set()
        writer.join()
        result.supervisor_cpu_seconds = _cpu_seconds(proc.pid) - cpu_before
        time.sleep(0.5)
        result.endpoint_publishes = int(_metric(admin, "edge_endpoint_publishes_total") - publishes_before)
        served = {c["service"]: sorted(c["endpoints"]) for c in _admin_json(admin, "/edge/v1/clusters")}
        for name, (addresses, up_port) in sorted(last.items()):
            if served.get(name) != sorted(f"{a}:{up_port}" for a in addresses):
                result.mismatched_services.append(name)
        client.close()
        return result
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        for up in ups:
            up.stop()
        fake.stop()


def _metric(admin: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--probes", type=int, default=100, help="propagations to measure (one per 100 ms at most)")
    p.add_argument("--services", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "config"
        work.mkdir()
        result = run(args.rate, args.probes, args.services, args.workers, work)
    summary = result.summary()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "endpoint_churn.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
