"""The proxies under test and their shared upstream, as processes on free loopback ports.

Every proxy is configured as an equivalent keep-alive reverse proxy to one nginx upstream
that serves a small fixed body (/bench/) and a 1 MiB file (/bench/big).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.tlsbench import Certificate, host_yaml, no_tickets_env, secret_yaml

ROOT = Path(__file__).resolve().parent.parent
BIG = 1 << 20
SMALL_BODY = "hello from the upstream"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Target:
    """A running server: `procs` are what we started; CPU is summed over them and
    their children (edge's workers); `tls`: it takes HTTPS (only, or besides cleartext)."""

    name: str
    port: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    admin: int | None = None
    tls: bool = False
    grpc: bool = False  # it speaks h2c only (prior knowledge), gRPC behind: ready when a call succeeds

    def pids(self) -> list[int]:
        found = []
        todo = [p.pid for p in self.procs]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
        return found

    def rss_mib(self) -> dict[int, float]:
        """Resident memory of each process, by pid."""
        out = {}
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1]) / 1024
            except OSError:
                pass
        return out

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the target's processes so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def admin_json(admin: int, path: str) -> dict:
    """GET a JSON document from edge's admin API."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as r:
        return json.loads(r.read())


def wait_http(port: int, path: str = "/bench/", tls: bool = False) -> None:
    """Until `path` answers 2xx (over HTTPS without verifying the certificate when `tls`)."""
    deadline = time.monotonic() + 30
    context = ssl._create_unverified_context() if tls else None
    while True:
        try:
            urllib.request.urlopen(f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}", timeout=2,
                                   context=context).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers on port {port}") from None
            time.sleep(0.05)


# one gRPC message (the 5-byte frame header, then b"hi") and the response the upstream sends
GRPC_PATH = "/echo.Echo/Unary"
GRPC_REQUEST = b"\x00\x00\x00\x00\x02hi"
GRPC_RESPONSE = b"\x00\x00\x00\x00\x02ok"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def wait_grpc(port: int) -> None:
    """Until a unary call (h2load, h2c) answers 2xx."""
    deadline = time.monotonic() + 30
    data = Path(tempfile.mkdtemp(prefix="edge-bench-grpc-")) / "request"
    data.write_bytes(GRPC_REQUEST)
    while True:
        done = subprocess.run(["h2load", "-n1", "-c1", "-d", str(data), *(a for h in GRPC_HEADERS for a in ("-H", h)),
                               f"http://127.0.0.1:{port}{GRPC_PATH}"], capture_output=True, text=True)
        if "1 succeeded" in done.stdout and "1 2xx" in done.stdout:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no gRPC call succeeds on port {port}:\n{done.stdout[-1000:]}")
        time.sleep(0.1)


def grpc_upstream(work: Path) -> Target:
    """nghttpd (h2c, compiled): a POST to GRPC_PATH answers GRPC_RESPONSE with the trailer
    grpc-status: 0, a valid unary gRPC response (grpcio accepts it) at over 100,000 calls/s
    here, so the proxies, not the upstream, are what a grpc scenario measures."""
    port = free_port()
    root = work / "grpc-htdocs"
    (root / GRPC_PATH.strip("/").split("/")[0]).mkdir(parents=True, exist_ok=True)
    (root / GRPC_PATH.strip("/")).write_bytes(GRPC_RESPONSE)
    proc = subprocess.Popen(["nghttpd", "--no-tls", "-d", str(root), "--trailer", "grpc-status: 0", "-a", "127.0.0.1",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Target("grpc-upstream", port, [proc], grpc=True)


def nginx_grpc(work: Path, up: int) -> Target:
    """nginx (1 worker) taking h2c and passing gRPC to the upstream (grpc_pass, kept-alive).
    grpc_pass holds one upstream connection per call in flight (no multiplexing), so the
    keep-alive pool is as big as the other targets' (512, above grpc_unary's 400 calls in
    flight): with 64, most calls opened a new upstream connection (thousands in TIME_WAIT)."""
    port = free_port()
    target = _nginx(work, "nginx-grpc", port, f"""
  upstream grpcs {{ server 127.0.0.1:{up}; keepalive 512; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{port} http2 backlog=4096; http2_max_concurrent_streams 128;
    location / {{ grpc_pass grpc://grpcs; }} }}""")
    return replace(target, grpc=True)


def edge_grpc(work: Path, name: str, up: int, workers: int, tree: Path = ROOT) -> Target:
    """edge with a Mapping `grpc: true` to the upstream (h2c downstream, prior knowledge)."""
    port = free_port()
    directory = work / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "edge.yaml").write_text(listener_yaml(port) + f"""---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {{name: grpc}}
spec: {{prefix: "/echo.Echo/", rewrite: "/echo.Echo/", service: "127.0.0.1:{up}", grpc: true}}
""")
    return replace(edge_serving(directory, name, port, workers, tree=tree), grpc=True)


def _nginx(work: Path, name: str, port: int, body: str, tls: bool = False) -> Target:
    conf = work / f"{name}.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {work}/{name}-body; proxy_temp_path {work}/{name}-proxy;
  fastcgi_temp_path {work}/{name}-fcgi; uwsgi_temp_path {work}/{name}-uwsgi; scgi_temp_path {work}/{name}-scgi;
  keepalive_requests 1000000;
  {body}
}}
""")
    return Target(name, port, [subprocess.Popen(["nginx", "-c", str(conf)])], tls=tls)


def upstream(work: Path) -> Target:
    work.chmod(0o755)  # nginx's workers run as nobody and must read the 1 MiB file
    (work / "big").write_bytes(os.urandom(BIG))
    (work / "big").chmod(0o644)
    port = free_port()
    return _nginx(work, "upstream", port, f"""
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location = /bench/big {{ alias {work}/big; }}
    location / {{ return 200 '{SMALL_BODY}'; }} }}""")


def nginx(work: Path, up: int) -> Target:
    port = free_port()
    return _nginx(work, "nginx", port, f"""
  upstream backend {{ server 127.0.0.1:{up}; keepalive 512; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{port} backlog=4096;
    {_NGINX_PROXY} }}""")


_NGINX_PROXY = """location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection '';
      proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k; proxy_max_temp_file_size 0; }"""


def nginx_tls(work: Path, up: int, cert: Certificate, http2: bool = False) -> Target:
    """nginx as above over TLS only (HTTP/1.1, TLS 1.2 and 1.3), without session resumption:
    no session cache and no tickets, so every new connection is a full handshake (edge has no
    resumption across workers yet). `http2`: nginx-h2, which also offers h2 by ALPN (up to
    128 concurrent streams per connection, nginx's default; keepalive_requests bounds the
    requests of an HTTP/2 connection too)."""
    port = free_port()
    return _nginx(work, "nginx-h2" if http2 else "nginx-tls", port, f"""
  upstream backend {{ server 127.0.0.1:{up}; keepalive 512; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{port} ssl{' http2' if http2 else ''} backlog=4096;
    ssl_certificate {cert.cert}; ssl_certificate_key {cert.key}; ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off; ssl_session_tickets off;
    {_NGINX_PROXY} }}""", tls=True)


def haproxy(work: Path, up: int) -> Target:
    port = free_port()
    conf = work / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server up 127.0.0.1:{up} maxconn 2000
""")
    return Target("haproxy", port, [subprocess.Popen(["haproxy", "-db", "-f", str(conf)])])


def forwarder(up: int) -> Target:
    """bench.forwarder: a bare Python byte relay on edge's reactor (no HTTP work)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.forwarder", str(port), str(up)], cwd=ROOT)
    return Target("py-forwarder", port, [proc])


def listener_yaml(port: int, protocol: str = "HTTP") -> str:
    return f"""apiVersion: getambassador.io/v3alpha1
kind: Listener
metadata: {{name: {protocol.lower()}}}
spec: {{port: {port}, protocol: {protocol}, securityModel: XFP, hostBinding: {{namespace: {{from: ALL}}}}}}
"""


# a limit per client address that a benchmark never reaches: the cost of checking it
RATE_LIMIT_LABELS = 'labels: {ambassador: [{per_client: [remote_address, {generic_key: {value: bench}}]}]}'
RATE_LIMIT = """apiVersion: getambassador.io/v3alpha1
kind: RateLimit
metadata: {name: bench}
spec:
  domain: ambassador
  limits: [{pattern: [{remote_address: ""}, {generic_key: bench}], rate: 1000000000, unit: second}]
"""


def edge_config(directory: Path, port: int, up: int, mappings: int, rate_limited: bool = False,
                cert: Certificate | None = None) -> None:
    """A Listener and `mappings` prefix Mappings; /bench/ is the one in the middle, with
    a rate limit that never triggers when `rate_limited`. With `cert`: an HTTPS Listener
    and a Host for every name with that certificate (in secrets.yaml, as a kubernetes.io/tls Secret)."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = [listener_yaml(port, "HTTPS" if cert else "HTTP")]
    if cert:
        (directory / "secrets.yaml").write_text(secret_yaml("bench-tls", cert))
        docs.append(host_yaml("bench-tls"))
    middle = mappings // 2
    for i in range(mappings):
        prefix = "/bench/" if i == middle else f"/svc-{i}/"
        labels = f", {RATE_LIMIT_LABELS}" if rate_limited and i == middle else ""
        docs.append(f"""apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {{name: m{i}}}
spec: {{prefix: "{prefix}", rewrite: "", service: "127.0.0.1:{up}"{labels}}}
""")
    if rate_limited:
        docs.append(RATE_LIMIT)
    (directory / "edge.yaml").write_text("---\n".join(docs))


def edge(work: Path, name: str, up: int, workers: int, mappings: int = 1, rate_limited: bool = False,
         cert: Certificate | None = None, tree: Path = ROOT) -> Target:
    """`tree`: the checkout whose edge runs (another revision's, for a before/after in one run)."""
    port = free_port()
    edge_config(work / name, port, up, mappings, rate_limited, cert)
    # over TLS, no session tickets (bench.tlsbench.NO_TICKETS): nothing resumes, as with nginx_tls
    return edge_serving(work / name, name, port, workers, tls=cert is not None,
                        env=no_tickets_env(work) if cert else None, tree=tree)


def edge_serving(directory: Path, name: str, port: int, workers: int, tls: bool = False,
                 env: dict[str, str] | None = None, tree: Path = ROOT) -> Target:
    """`edge serve` on a configuration directory whose Listener is on `port`; the admin
    port is in `target.admin`; `tls`: that Listener is HTTPS; `env`: added to the environment;
    `tree`: the checkout whose `edge` package runs."""
    admin = free_port()
    environ = {**os.environ, **(env or {})}
    if tree != ROOT:
        environ["PYTHONPATH"] = str(tree)  # ahead of the editable install of this checkout
    proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", "-c", str(directory), "--workers", str(workers),
                             "--admin-addr", f"127.0.0.1:{admin}", "--log-level", "WARNING"], cwd=tree, env=environ)
    return Target(name, port, [proc], admin, tls)


def checkout(work: Path, rev: str) -> Path:
    """A worktree of this repository at `rev` with its compiled modules built in place, for
    running that revision's edge beside this one. Raises SystemExit if git or the build fails."""
    tree = work / f"rev-{rev}"
    for cmd in (["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]):
        done = subprocess.run(cmd, cwd=tree if cmd[0] == sys.executable else ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return tree


def drop_checkout(tree: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def require(*tools: str, hint: str = "run `make bench`, which installs them") -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: {hint}")
