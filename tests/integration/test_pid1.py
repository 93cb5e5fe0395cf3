"""`edge serve` as the image runs it, where no image builder exists: PID 1 of its own PID
namespace (no init: unshare --pid --fork --mount-proc), its own network namespace (the
image's ports 8080 and 8877), uid/gid 8888, a read-only root filesystem with fresh tmpfs
on /tmp and /dev/shm (docker run's 64 MiB), the Dockerfile's ENV, ENTRYPOINT and CMD, its
/etc/edge being config/container/. The Dockerfile is read by tests/test_dockerfile.py's
parser, so what runs here is what the image would run; only the interpreter and the
installed edge are the repository's .venv instead of the image's /opt/edge.

What PID 1 must do that no other process does: reap orphans re-parented to it (else they
stay zombies), and handle SIGTERM itself (the kernel drops signals PID 1 has no handler for).
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.test_dockerfile import argv, baked_config, env, healthcheck, runtime

pytestmark = pytest.mark.integration

SCRIPTS = sysconfig.get_path("scripts")  # .venv/bin: the image's /opt/edge/bin
PYTHON = str(Path(SCRIPTS) / "python")
UID = GID = 8888
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the python image's


def _unshare_works() -> str | None:
    if not all(shutil.which(tool) for tool in ("unshare", "nsenter", "setpriv", "ip")):
        return "needs unshare, nsenter, setpriv (util-linux) and ip (iproute2)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "--mount", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make PID, mount and network namespaces here (root needed): {probe.stderr.strip()}"
    return None


def stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of host PID `pid`, None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out.extend(int(p) for p in f.read().split())
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def reachable_interpreter() -> list[str]:
    """Shell commands that let uid 8888 reach .venv's base interpreter in the container's
    mount namespace: here it lives under /root (mode 0700), the image's does not
    (/usr/local/bin). A tmpfs (0755) goes over each such directory, with the one entry
    on the interpreter's path bind-mounted back from a staging tmpfs on /media."""
    out = []
    path = Path(os.path.realpath(PYTHON))
    for d in reversed(path.parents):
        if d == Path("/") or os.stat(d).st_mode & 0o001:
            continue
        entry = path.relative_to(d).parts[0]
        out += ["mount -t tmpfs -o size=1m,mode=755 tmpfs /media", "mkdir /media/keep",
                f"mount --bind {d / entry} /media/keep", f"mount -t tmpfs -o size=1m,mode=755 tmpfs {d}",
                f"mkdir {d / entry}", f"mount --move /media/keep {d / entry}", "umount /media"]
    return out


def kept_under_tmp() -> list[Path]:
    """The repository and the venv, where they live under /tmp (the outermost of them)."""
    needed = sorted({Path(sys.prefix).resolve(), Path(__file__).resolve().parents[2]})
    return [p for p in needed if Path("/tmp") in p.parents and not any(q in p.parents for q in needed)]


def fresh_tmp() -> list[str]:
    """Shell commands for a fresh tmpfs on /tmp that keeps what edge runs from: the
    repository (its editable install) and the venv, which a clone under /tmp has there
    too (CI's may). They are bind-mounted to a staging tmpfs on /media first, then moved
    back onto empty directories of the new /tmp."""
    keep = kept_under_tmp()
    out = ["mount -t tmpfs -o size=1m,mode=755 tmpfs /media"] if keep else []
    for i, p in enumerate(keep):
        out += [f"mkdir /media/keep{i}", f"mount --bind {p} /media/keep{i}"]
    out.append("mount -t tmpfs -o size=16m,mode=1777 tmpfs /tmp")
    for i, p in enumerate(keep):
        out += [f"mkdir -p {p}", f"mount --move /media/keep{i} {p}"]
    return out + (["umount /media"] if keep else [])


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV as docker run gives it, /opt/edge/bin being .venv/bin."""
    out = {"PATH": BASE_PATH, "HOME": "/nonexistent"}
    for name, value in env(runtime()).items():
        out[name] = value.replace("$PATH", out.get("PATH", "")).replace("/opt/edge/bin", SCRIPTS)
    return out


class Container:
    """edge started the way the image starts it, as PID 1 of fresh namespaces."""

    def __init__(self, log: Path, shm_size: str = "64m"):
        target, source = baked_config()
        command = [c.replace(target, str(source)) for c in argv()]  # ENTRYPOINT + CMD; /etc/edge's files
        setup = " && ".join([
            "ip link set lo up",
            *fresh_tmp(),
            f"mount -t tmpfs -o size={shm_size},mode=1777 tmpfs /dev/shm",
            *reachable_interpreter(),
            "mount -o remount,bind,ro /",  # this mount namespace's view only (MS_BIND)
            'exec setpriv --reuid {uid} --regid {gid} --clear-groups -- env -i "$@"'.format(uid=UID, gid=GID),
        ])
        self.env = image_env()
        envs = [f"{k}={v}" for k, v in self.env.items()]
        self.log = open(log, "w+")
        # unshare forks: its child, PID 1 inside, execs sh, then setpriv, env and edge
        self.unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--mount", "--kill-child",
             "sh", "-c", setup, "sh", *envs, *command],
            stdout=self.log, stderr=subprocess.STDOUT, cwd="/")
        try:
            self.pid = self._pid1()
        except BaseException:
            for kid in children(self.unshare.pid) if self.unshare.poll() is None else []:
                os.kill(kid, signal.SIGKILL)
            self.stop()
            raise

    def _pid1(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.unshare.poll() is None, self.output()
            kids = children(self.unshare.pid)
            if kids and cmdline(kids[0]).startswith(PYTHON):  # past sh, setpriv and env: edge's shebang
                return kids[0]
            time.sleep(0.02)
        raise AssertionError("edge did not start:\n" + self.output())

    def nsenter(self, *command: str, user: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `command` in the container (network, mount and PID namespaces; as uid 8888
        with the image's environment, as docker exec and the HEALTHCHECK do)."""
        who = ["--setuid", str(UID), "--setgid", str(GID)] if user else []
        return subprocess.run(["nsenter", "-t", str(self.pid), "-n", "-m", "-p", *who, "--", "env", "-i",
                               *(f"{k}={v}" for k, v in self.env.items()), *command],
                              capture_output=True, text=True, timeout=timeout, cwd="/")

    def get(self, url: str) -> tuple[int, str]:
        script = ("import sys, urllib.request, urllib.error\n"
                  "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status, r.read().decode())\n"
                  "except urllib.error.HTTPError as e:\n print(e.code, e.read().decode())\n")
        done = self.nsenter("python", "-c", script, url)
        assert done.returncode == 0, done.stderr
        status, _, body = done.stdout.partition(" ")
        return int(status), body

    def wait_healthy(self, timeout: float = 30) -> float:
        """Seconds until the image's HEALTHCHECK command succeeds."""
        _, command = healthcheck(runtime())
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.unshare.poll() is None, self.output()
            if self.nsenter(*command).returncode == 0:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError("HEALTHCHECK never passed:\n" + self.output())

    def workers(self) -> list[int]:
        return [p for p in children(self.pid) if "edge.worker" in cmdline(p)]

    def zombies(self) -> list[int]:
        return [p for p in children(self.pid) if (stat(p) or ("", 0))[0] == "Z"]

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-6000:]

    def stop(self) -> None:
        """SIGKILL to PID 1 ends its whole namespace (the workers and any orphan too).
        unshare's --kill-child alone would not do: setpriv's change of uid clears the
        parent-death signal it sets."""
        if self.unshare.poll() is None:
            pid = getattr(self, "pid", None)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.unshare.wait(10)
            except subprocess.TimeoutExpired:
                self.unshare.kill()
                self.unshare.wait(10)
        self.log.close()


@pytest.fixture
def container(tmp_path):
    reason = _unshare_works()
    if reason:
        pytest.skip(reason)
    started = []

    def start(**kw) -> Container:
        c = Container(tmp_path / f"edge-{len(started)}.log", **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def test_the_image_command_serves_as_pid1_uid_8888_on_a_read_only_root(container):
    c = container()
    took = c.wait_healthy()
    assert took < 20, c.output()
    # edge itself and its workers: uid/gid 8888 (real, effective, saved), no capabilities
    for pid in [c.pid, *c.workers()]:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines())
        assert status["Uid"].split() == ["8888"] * 4 and status["Gid"].split() == ["8888"] * 4, status["Uid"]
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert len(c.workers()) >= 1
    inside = c.nsenter("sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline").stdout  # PID 1 is edge
    assert inside.startswith(PYTHON) and " serve -c " in inside, inside
    # the default configuration answers without any upstream: the probe paths, else 404
    assert c.get("http://127.0.0.1:8080/ambassador/v0/check_ready")[0] == 200
    assert c.get("http://127.0.0.1:8080/ambassador/v0/check_alive")[0] == 200
    assert c.get("http://127.0.0.1:8080/anything")[0] == 404
    config = json.loads(c.get("http://127.0.0.1:8877/edge/v1/config")[1])
    assert config["listeners"] == {"8080": "listening"}, config
    # read-only root: edge wrote nowhere but /dev/shm (its segments); /tmp stays empty
    writable = c.nsenter("sh", "-c", "touch /etc/x 2>&1; ls -A /tmp; echo --; ls /dev/shm", user=False).stdout
    assert "Read-only file system" in writable
    tmp, _, shm = writable.partition("--")
    kept = sorted({p.relative_to("/tmp").parts[0] for p in kept_under_tmp()})  # a clone under /tmp
    assert tmp.strip().splitlines()[1:] == kept, writable
    assert shm.split(), writable


def test_the_healthcheck_fails_where_check_ready_does_not_answer():
    reason = _unshare_works()
    if reason:
        pytest.skip(reason)
    _, command = healthcheck(runtime())
    alone = subprocess.run(["unshare", "--net", "sh", "-c", 'ip link set lo up && exec env -i "$@"', "sh",
                            *(f"{k}={v}" for k, v in image_env().items()), *command],
                           capture_output=True, text=True, timeout=30)
    assert alone.returncode == 1 and "Connection refused" in alone.stderr, alone.stderr


def test_sigterm_to_pid1_drains_and_exits_0(container):
    """docker stop: SIGTERM to PID 1. edge's trio handler runs (the kernel would drop a
    signal PID 1 has no handler for): drain, workers stopped, exit 0."""
    c = container()
    c.wait_healthy()
    workers = c.workers()
    sent = time.monotonic()
    os.kill(c.pid, signal.SIGTERM)
    assert c.unshare.wait(timeout=15) == 0, c.output()  # unshare exits with PID 1's status
    took = time.monotonic() - sent
    assert took < 5, (took, c.output())  # nothing in flight: no drain wait
    assert "draining workers" in c.output()
    assert all(stat(w) is None for w in workers)


def test_orphans_reparented_to_pid1_are_reaped(container):
    """An orphan in edge's PID namespace (what `docker exec ... sh -c 'cmd &'` leaves)
    is re-parented to PID 1, edge, and reaped by it once it exits; a worker killed
    meanwhile is still seen with its own exit status (-9), not the 0 a stolen one gives."""
    c = container()
    c.wait_healthy()
    workers = c.workers()
    # nsenter's child (in the namespace) starts sleepers and exits: they are orphans (their
    # output not on nsenter's pipes, or nsenter's caller would wait until they exit)
    made = c.nsenter("sh", "-c", "for i in 1 2 3 4 5; do sleep 1 </dev/null >/dev/null 2>&1 & done", user=False)
    assert made.returncode == 0, made.stderr
    deadline = time.monotonic() + 5
    while True:
        orphans = [p for p in children(c.pid) if cmdline(p).startswith("sleep ") or
                   (stat(p) or ("", 0))[0] == "Z" and p not in workers]
        if len(orphans) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(orphans) == 5, (orphans, [cmdline(p) for p in children(c.pid)])
    assert all(stat(p)[1] == c.pid and stat(p)[0] != "Z" for p in orphans)  # re-parented to edge, running
    # they exit after 1 s; PID 1 has to wait for them (SIGCHLD wakes the arbiter's loop)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and any(stat(p) is not None for p in orphans):
        time.sleep(0.05)
    left = {p: stat(p) for p in orphans if stat(p) is not None}
    assert not left, f"orphans not reaped by PID 1 (state, ppid): {left}\n{c.output()}"
    assert c.zombies() == []
    # reaping orphans did not take a worker's status: kill -9 one, the arbiter logs -9
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while "exited with -9" not in c.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "exited with -9" in c.output(), c.output()
    assert c.wait_healthy() < 10  # replaced
