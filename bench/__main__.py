"""wrk side by side: edge (1 worker) and nginx as an equivalent reverse proxy, same upstream.

    python -m bench [--duration 10] [--connections 50] [--rounds 3]

The upstream is nginx serving a small fixed body with keep-alive. Rounds alternate the
two proxies; the medians and the ratio go to stdout and bench/results/http1_small.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_conf(work: Path, listen: int, upstream: str | None) -> Path:
    """One-worker nginx: the upstream itself (upstream None) or a keep-alive reverse proxy."""
    if upstream is None:
        pool, location = "", "location / { return 200 'hello from the upstream'; }"
    else:
        pool = f"upstream backend {{ server {upstream}; keepalive 64; }}"
        location = "location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ''; }"
    conf = work / f"nginx-{listen}.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx-{listen}.pid;
error_log {work}/nginx-{listen}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/body-{listen};
  proxy_temp_path {work}/proxy-{listen};
  fastcgi_temp_path {work}/fcgi-{listen}; uwsgi_temp_path {work}/uwsgi-{listen}; scgi_temp_path {work}/scgi-{listen};
  {pool}
  server {{ listen 127.0.0.1:{listen}; {location} }}
}}
""")
    return conf


def wrk(port: int, duration: int, connections: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                          f"http://127.0.0.1:{port}/bench/"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": float(p50.group(1)) * scale[p50.group(2)],
            "p99_ms": float(p99.group(1)) * scale[p99.group(2)], "non_2xx": int(errors.group(1)) if errors else 0}


def wait_http(port: int, path: str = "/bench/") -> None:
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on {port}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run `make bench`, which installs it")
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    up_port, nginx_port, edge_port, admin = free_port(), free_port(), free_port(), free_port()
    procs = [subprocess.Popen(["nginx", "-c", str(nginx_conf(work, up_port, None))])]
    procs.append(subprocess.Popen(["nginx", "-c", str(nginx_conf(work, nginx_port, f"127.0.0.1:{up_port}"))]))
    cfg = work / "edge"
    cfg.mkdir()
    (cfg / "edge.yaml").write_text(f"""
apiVersion: getambassador.io/v3alpha1
kind: Listener
metadata: {{name: http}}
spec: {{port: {edge_port}, protocol: HTTP, securityModel: XFP, hostBinding: {{namespace: {{from: ALL}}}}}}
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {{name: bench}}
spec: {{prefix: /bench/, rewrite: "", service: "127.0.0.1:{up_port}"}}
""")
    procs.append(subprocess.Popen([sys.executable, "-m", "edge", "serve", "-c", str(cfg), "--workers", "1",
                                   "--admin-addr", f"127.0.0.1:{admin}", "--log-level", "WARNING"], cwd=ROOT))
    try:
        for port in (up_port, nginx_port, edge_port):
            wait_http(port)
        results: dict[str, list[dict]] = {"edge": [], "nginx": []}
        for _ in range(args.rounds):
            for name, port in (("nginx", nginx_port), ("edge", edge_port)):
                results[name].append(wrk(port, args.duration, args.connections))
        summary = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
        summary["ratio_rps_edge_to_nginx"] = round(summary["edge"]["rps"] / summary["nginx"]["rps"], 3)
        summary["setup"] = {"connections": args.connections, "duration_s": args.duration, "rounds": args.rounds,
                            "edge_workers": 1, "nginx_workers": 1, "cpus": os.cpu_count()}
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "http1_small.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=2) + "\n")
        print(json.dumps(summary, indent=2))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
