"""Fixtures that run real processes: the test upstream and `edge serve`, on free ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.targets import free_port, listener_yaml  # noqa: F401 (tests import free_port from here)
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture
def upstream():
    up = Upstream("a")
    yield up
    up.stop()


@pytest.fixture
def upstream_b():
    up = Upstream("b")
    yield up
    up.stop()



class Edge:
    """A running `edge serve` (supervisor + workers) on free ports."""

    def __init__(self, config_dir: Path, workers: int | None = 2, extra_args: tuple = (), env: dict | None = None,
                 preexec_fn=None, admin_host: str = "127.0.0.1", port: int | None = None,
                 admin_port: int | None = None, launcher: tuple = (), pass_fds: tuple = (), protocol: str = "HTTP"):
        """`workers` None: no --workers (edge picks its default); an `env` value None
        removes that variable; `preexec_fn` runs in the child before exec (affinity, rlimits);
        `admin_host` 0.0.0.0 binds the admin port on every address (still reached on loopback);
        `port`, `admin_port`: given ones instead of free ones (an edge taking over another's);
        `launcher`: python arguments before `-m edge` (a script that execs the rest, as
        systemd's socket activation does), with `pass_fds` open in the child; `protocol`:
        the Listener's (HTTPS takes TLS and cleartext)."""
        self.dir = config_dir
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        self.workers = workers
        (config_dir / "00-listener.yaml").write_text(listener_yaml(self.port, protocol))
        self.log = open(config_dir.parent / f"edge-{self.port}-{config_dir.name}.log", "w+")
        args = [sys.executable, *launcher, "-m", "edge", "serve", "-c", str(config_dir),
                *(("--workers", str(workers)) if workers is not None else ()),
                "--admin-addr", f"{admin_host}:{self.admin_port}", "--dns-refresh", "1", *extra_args]
        environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=environ, cwd=ROOT, preexec_fn=preexec_fn, pass_fds=pass_fds)
        try:
            self.wait_ready()
        except BaseException:  # not handed to make_edge: stop it here, or it outlives the test
            self.stop()
            raise

    def write(self, name: str, text: str) -> None:
        """Replace a config file atomically, as editors and kubectl-style tools do."""
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / name)

    def admin(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.status, r.read()

    def config(self) -> dict:
        return json.loads(self.admin("/edge/v1/config")[1])

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if self.admin("/ambassador/v0/check_ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("edge not ready:\n" + self.output())

    def wait_generation(self, generation: int, timeout: float = 5.0) -> float:
        """Seconds until every worker serves `generation` (or later)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            workers = self.config()["workers"]
            if all(w["generation"] is not None and w["generation"] >= generation for w in workers):
                return time.monotonic() - start
            time.sleep(0.01)
        raise AssertionError(f"workers did not load generation {generation}: {self.config()['workers']}")

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.config()["workers"]]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-5000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def real_kube(tmp_path_factory):
    """A real kube-apiserver 1.20 with RBAC and etcd on loopback, one for the session
    (tests/realkube.py): `admin_kubeconfig` (system:masters), `edge_kubeconfig` (user
    "edge", allowed nothing until a test binds a role to it). Skipped when the binary
    ../shared/tools/realkube.sh builds is not cached here."""
    from tests import realkube

    if not realkube.available():
        pytest.skip("no real kube-apiserver here: build one with ../shared/tools/realkube.sh build "
                    "(about 4 min); the same cases ran against the fake")
    kube = realkube.RealKube(tmp_path_factory.mktemp("realkube")).start()
    try:
        yield kube
    finally:
        kube.stop()


@pytest.fixture(scope="session")
def real_kubeconfig(request):
    """An admin kubeconfig of a real API server: REALKUBE_KUBECONFIG when set, else the
    session's `real_kube`."""
    given = os.environ.get("REALKUBE_KUBECONFIG")
    if given:
        return given
    return request.getfixturevalue("real_kube").admin_kubeconfig


@pytest.fixture
def fake_kube():
    from tests.fakekube import FakeKube

    kube = FakeKube().start()
    yield kube
    kube.stop()


@pytest.fixture
def make_edge(tmp_path):
    started = []

    def start(files: dict[str, str], workers: int | None = 2, extra_args: tuple = (), env: dict | None = None,
              preexec_fn=None, admin_host: str = "127.0.0.1", **more) -> Edge:
        """`more`: Edge's port, admin_port, launcher, pass_fds, protocol."""
        config = tmp_path / f"config{len(started)}"
        config.mkdir()
        for name, text in files.items():
            (config / name).write_text(text)
        edge = Edge(config, workers, extra_args, env, preexec_fn, admin_host, **more)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.stop()


@pytest.fixture
def make_tmpfs(tmp_path):
    """make_tmpfs("8m"): a real tmpfs of that size (a small /dev/shm), unmounted after the
    test. Skips, saying why, where this process may not mount one (it needs CAP_SYS_ADMIN)."""
    mounted = []

    def make(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount(8) here: cannot make a small tmpfs")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)  # still mapped by a process


def resource(kind: str, name: str, spec: dict, labels: dict | None = None, namespace: str | None = None) -> str:
    """One object as a YAML document (JSON is YAML)."""
    meta = {"name": name, **({"labels": labels} if labels else {}), **({"namespace": namespace} if namespace else {})}
    return "---\n" + json.dumps({"apiVersion": "getambassador.io/v3alpha1", "kind": kind,
                                  "metadata": meta, "spec": spec}) + "\n"


def mapping(name: str, service: str, prefix: str = "/", labels: dict | None = None, **spec) -> str:
    return resource("Mapping", name, {"prefix": prefix, "service": service, **spec}, labels)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        return b"".join(chunks)
