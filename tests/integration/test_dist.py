"""Issue 17: an install path for a VM without a compiler. `make dist` builds edge's wheel
(with the compiled parser and heads) and sdist offline; the wheel installs into a fresh venv
from the wheelhouse `make test` fills ($VENV/wheelhouse: every runtime dependency as a wheel),
with --no-index and a PATH that holds no C compiler, and `edge check` and `edge serve` run
from that venv, outside the repository."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.conftest import free_port, listener_yaml, mapping
from tests.upstream import Upstream

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
VENV = Path(sys.prefix)
WHEELHOUSE = VENV / "wheelhouse"
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc")


def version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["metadata"]["version"]


def run(args, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    return done


def shown(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """`make dist DIST=<tmp>` with this venv, offline: the wheel and the sdist."""
    assert sys.prefix != sys.base_prefix, "run the tests from the venv make test installs"
    assert (VENV / ".installed").exists(), f"{VENV} was not installed by make (make {VENV}/.installed)"
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PIP_NO_INDEX"] = "1"  # nothing in make dist may reach for a registry
    started = time.monotonic()
    done = run(["make", "-C", ROOT, "dist", f"DIST={out}", f"VENV={VENV}"], env=env)
    assert done.returncode == 0, shown(done)
    print(f"make dist: {time.monotonic() - started:.1f} s")
    wheels, sdists = list(out.glob("edge-*.whl")), list(out.glob("edge-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, (sorted(p.name for p in out.iterdir()), shown(done))
    return wheels[0], sdists[0]


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    """A fresh venv (no system site-packages) with the wheel installed from the wheelhouse
    only, under a PATH with no compiler. Returns (venv, env for running from it)."""
    assert (WHEELHOUSE / ".downloaded").exists(), \
        f"no wheelhouse at {WHEELHOUSE}: make test fills it (make {WHEELHOUSE}/.downloaded)"
    base = tmp_path_factory.mktemp("vm")
    fresh = base / "venv"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    done = run([sys.executable, "-m", "venv", fresh], env=clean)  # ensurepip: pip from Python itself
    assert done.returncode == 0, shown(done)
    assert "include-system-site-packages = false" in (fresh / "pyvenv.cfg").read_text()
    home = base / "home"
    home.mkdir()
    path = str(fresh / "bin")
    for compiler in COMPILERS:
        assert shutil.which(compiler, path=path) is None, compiler
    env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8",
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    wheel, _ = dist
    started = time.monotonic()
    done = run([fresh / "bin" / "python", "-m", "pip", "install", "--no-index", "--find-links", WHEELHOUSE,
                "--only-binary", ":all:", wheel], env=env, cwd=base)
    assert done.returncode == 0, shown(done)
    print(f"pip install: {time.monotonic() - started:.1f} s")
    done = run([fresh / "bin" / "python", "-m", "pip", "check"], env=env, cwd=base)
    assert done.returncode == 0, shown(done)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    assert ROOT not in elsewhere.resolve().parents
    return fresh, env, elsewhere


def test_sdist_has_everything_to_build_from_source(dist):
    _, sdist = dist
    top = f"edge-{version()}"
    assert sdist.name == f"{top}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(f"{top}/") for n in tar.getnames()}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "vendor").rglob("*") if p.is_file()}
    sources |= {str(p.relative_to(ROOT)) for ext in ("*.pyx", "*.pxd") for p in (ROOT / "edge").rglob(ext)}
    assert {"vendor/llhttp/src/llhttp.c", "vendor/llhttp/src/api.c", "vendor/llhttp/src/http.c",
            "vendor/llhttp/include/llhttp.h", "edge/worker/proto/h1parser.pyx",
            "edge/worker/proto/llhttp.pxd", "edge/worker/heads.pyx"} <= sources
    sources |= {"README.md", "setup.cfg", "setup.py", "pyproject.toml", "MANIFEST.in", "edge/cli.py"}
    assert sources - names == set()
    # what Cython writes and what the build leaves are not sources; nor are the tests (no conftest)
    assert [n for n in names if n.startswith("edge/") and n.endswith((".c", ".so"))] == []
    assert [n for n in names if n.startswith("tests")] == []


def test_wheel_is_a_platform_wheel_with_the_compiled_parts(dist):
    wheel, _ = dist
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheel.name == f"edge-{version()}-{py}-{py}-{platform}.whl"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        meta = whl.read(f"edge-{version()}.dist-info/WHEEL").decode()
    assert {f"edge/worker/proto/h1parser{suffix}", f"edge/worker/heads{suffix}", "edge/cli.py"} <= names
    assert "Root-Is-Purelib: false" in meta
    assert [n for n in names if n.endswith((".pyx", ".pxd", ".c"))] == []


def test_the_fresh_venv_imports_its_own_edge(venv):
    fresh, env, elsewhere = venv
    code = ("import json, sys, edge, edge.worker.proto.h1parser as p, edge.worker.heads as h; "
            "print(json.dumps([sys.prefix, edge.__file__, p.__file__, h.__file__]))")
    done = run([fresh / "bin" / "python", "-c", code], env=env, cwd=elsewhere)
    assert done.returncode == 0, shown(done)
    prefix, *files = json.loads(done.stdout)
    assert Path(prefix) == fresh
    site = Path(sysconfig.get_path("purelib", vars={"base": str(fresh), "platbase": str(fresh)}))
    for file in map(Path, files):
        assert file.is_relative_to(site) and not file.resolve().is_relative_to(ROOT), file


def test_edge_check_from_the_wheel(venv, tmp_path):
    fresh, env, elsewhere = venv
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "00-listener.yaml").write_text(listener_yaml(8080))
    (good / "m.yaml").write_text(mapping("m", "127.0.0.1:9000", "/m/"))
    (bad / "m.yaml").write_text(mapping("m", "127.0.0.1:9000", "/m/").replace('"service"', '"servce"'))
    done = run([fresh / "bin" / "edge", "check", good], env=env, cwd=elsewhere)
    assert done.returncode == 0, shown(done)
    assert "0 invalid" in done.stdout, shown(done)
    done = run([fresh / "bin" / "edge", "check", bad], env=env, cwd=elsewhere)
    assert done.returncode == 1, shown(done)
    assert "spec.service" in done.stdout and "1 invalid" in done.stdout, shown(done)


def admin_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        e.close()
        return e.code
    except OSError:
        return None


def test_edge_serve_from_the_wheel(venv, tmp_path):
    fresh, env, elsewhere = venv
    config = tmp_path / "config"
    config.mkdir()
    port, admin = free_port(), free_port()
    up = Upstream("a")
    try:
        (config / "00-listener.yaml").write_text(listener_yaml(port))
        (config / "m.yaml").write_text(mapping("m", up.service, "/m/"))
        with open(tmp_path / "edge.log", "w+") as log:
            proc = subprocess.Popen([str(fresh / "bin" / "edge"), "serve", "-c", str(config), "--workers", "2",
                                     "--admin-addr", f"127.0.0.1:{admin}"],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=elsewhere)

            def output() -> str:
                log.flush()
                log.seek(0)
                return log.read()[-5000:]

            try:
                deadline = time.monotonic() + 30
                while admin_status(admin, "/ambassador/v0/check_ready") != 200:
                    assert proc.poll() is None, output()
                    assert time.monotonic() < deadline, "edge not ready in 30 s:\n" + output()
                    time.sleep(0.1)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/m/hello?x=1", timeout=5) as r:
                    status, upstream, echo = r.status, r.headers["x-upstream"], json.loads(r.read())
                assert (status, upstream) == (200, "a"), output()
                assert (echo["method"], echo["path"]) == ("GET", "/hello?x=1"), echo
                # the workers are the fresh venv's Python too
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/edge/v1/config", timeout=5) as r:
                    workers = json.loads(r.read())["workers"]
                assert len(workers) == 2, workers
                for w in workers:
                    argv = Path(f"/proc/{w['pid']}/cmdline").read_bytes().split(b"\0")
                    assert argv[:3] == [str(fresh / "bin" / "python").encode(), b"-m", b"edge.worker"], argv
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0, output()
                assert "Traceback" not in output(), output()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        up.stop()
