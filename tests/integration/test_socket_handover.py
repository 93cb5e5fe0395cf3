"""Listening sockets that outlive an edge: systemd's socket activation across a full
restart, and a binary upgrade that hands the sockets to a new edge (fd passing)."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import trio

from bench.loadgen import LoadGenerator
from tests.conftest import free_port, mapping
from tests.integration.test_ratelimit import away_from_an_hour_boundary, limited_mapping, rate_limit

pytestmark = pytest.mark.integration

# What systemd does between fork and exec for a socket-activated service: the sockets at
# fds 3..., and LISTEN_FDS / LISTEN_PID (the service's own pid) / LISTEN_FDNAMES.
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="http")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def listening_inodes(port: int) -> set[int]:
    """Inodes of every TCP socket listening on `port` on this host (/proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                    found.add(int(cols[9]))
    return found


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for link in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def activated_socket() -> socket.socket:
    """A listening socket as a .socket unit with ListenStream= and ReusePort=yes makes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(4096)
    return sock


class AdminProbe:
    """Polls check_ready in a thread: every answer's status, and every failure."""

    def __init__(self, port: int):
        self.port = port
        self.statuses: dict[int, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ambassador/v0/check_ready",
                                            timeout=30) as r:
                    status = r.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            self.statuses[status] = self.statuses.get(status, 0) + 1
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=40)


async def test_socket_activation_keeps_every_connection_across_a_full_restart(make_edge, upstream):
    sock = activated_socket()
    port = sock.getsockname()[1]
    files = {"m.yaml": mapping("a", upstream.service, "/a/")}
    # the supervisor gets its listening socket only from "systemd"
    start = dict(port=port, launcher=("-c", ACTIVATE, str(sock.fileno())), pass_fds=(sock.fileno(),))
    first = make_edge(files, **start)
    for pid in first.worker_pids():
        assert os.stat(f"/proc/{pid}").st_ino and socket_inodes(pid) >= listening_inodes(port)
    assert listening_inodes(port) == {os.fstat(sock.fileno()).st_ino}, "edge opened a socket of its own"
    fresh = LoadGenerator(port, ["/a/"], connections=4, keep_alive=False, response_timeout=30)
    kept = LoadGenerator(port, ["/a/"], connections=4, response_timeout=30)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fresh.run, stop)
        nursery.start_soon(kept.run, stop)
        await trio.sleep(0.5)
        served_by_first = fresh.total().ok
        assert await trio.to_thread.run_sync(first.stop) == 0
        # edge is down: connections wait in the socket's queue (systemd holds it) ...
        await trio.sleep(0.5)
        waiting = fresh.total().ok
        second = await trio.to_thread.run_sync(lambda: make_edge(files, **start))
        await trio.sleep(0.5)
        stop.set()
    assert listening_inodes(port) == {os.fstat(sock.fileno()).st_ino}
    for load in (fresh, kept):
        total = load.total()
        assert total.failures == 0, (dict(load.errors), total.statuses)
    assert served_by_first > 10 and fresh.total().ok > waiting + 10, "the restarted edge served nothing"
    assert "listening socket from systemd (http)" in second.output()
    sock.close()


def shm_segments(pid: int) -> list[str]:
    return glob.glob(f"/dev/shm/edge-{pid}-*")


def sequential(port: int, path: str, n: int) -> list[int]:
    statuses = []
    for _ in range(n):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                statuses.append(r.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
    return statuses


async def test_a_new_edge_takes_over_under_load_refusing_nothing_and_counting_on(make_edge, upstream, tmp_path):
    away_from_an_hour_boundary()
    path = str(tmp_path / "upgrade.sock")
    files = {"m.yaml": mapping("a", upstream.service, "/a/") + limited_mapping(upstream) + rate_limit(100)}
    old = make_edge(files, extra_args=("--upgrade-socket", path))
    assert sequential(old.port, "/limited/", 60) == [200] * 60
    probe = AdminProbe(old.admin_port)
    fresh = LoadGenerator(old.port, ["/a/"], connections=4, keep_alive=False)
    kept = LoadGenerator(old.port, ["/a/"], connections=4)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fresh.run, stop)
        nursery.start_soon(kept.run, stop)
        await trio.sleep(0.5)
        new = await trio.to_thread.run_sync(lambda: make_edge(
            files, port=old.port, admin_port=old.admin_port, extra_args=("--upgrade-socket", path)))
        with trio.fail_after(60):  # the old edge drains (its workers finish what they have) and exits
            while old.proc.poll() is None:
                await trio.sleep(0.05)
        before_alone = fresh.total().ok
        await trio.sleep(0.5)  # the new edge serves alone
        stop.set()
    probe.stop()
    assert old.proc.returncode == 0, old.output()
    for load in (fresh, kept):
        total = load.total()
        assert total.failures == 0, (dict(load.errors), total.statuses)
    assert fresh.total().ok > before_alone + 10, "the new edge served nothing"
    assert probe.failures == [] and set(probe.statuses) == {200}, (probe.failures, probe.statuses)
    config = new.config()
    assert config["pid"] == new.proc.pid and all(w["pid"] for w in config["workers"])
    # the listening sockets are the old edge's: no other was opened
    assert len(listening_inodes(old.port)) == 2  # one per worker slot
    # 60 counted by the old edge, so the new one allows 40 of the hour's 100
    assert sequential(new.port, "/limited/", 60) == [200] * 40 + [429] * 20
    assert f"took over from pid {old.proc.pid}" in new.output()
    assert "rate-limit counters carry over" in new.output()
    assert [s.rsplit("-", 1)[1] for s in shm_segments(old.proc.pid)] == ["ratelimit"]  # now the new edge's
    assert new.stop() == 0
    assert shm_segments(old.proc.pid) == [] and shm_segments(new.proc.pid) == []
    assert not os.path.exists(path)


async def test_a_taker_that_dies_leaves_the_running_edge_serving(make_edge, upstream, tmp_path):
    path = str(tmp_path / "upgrade.sock")
    files = {"m.yaml": mapping("a", upstream.service, "/a/")}
    old = make_edge(files, extra_args=("--upgrade-socket", path))
    with open(tmp_path / "taker.log", "w+") as log:
        taker = subprocess.Popen(
            [sys.executable, "-m", "edge", "serve", "-c", str(old.dir), "--workers", "2", "--upgrade-socket", path,
             "--admin-addr", f"127.0.0.1:{old.admin_port}"], stdout=log, stderr=subprocess.STDOUT)
        with trio.fail_after(20):  # it has the sockets, and starts its workers: kill it there
            while "takes over" not in old.output():
                await trio.sleep(0.01)
        taker.kill()
        taker.wait()
        log.seek(0)
        assert "took over" not in log.read()
    with trio.fail_after(10):
        while "did not take over" not in old.output():
            await trio.sleep(0.05)
    assert old.proc.poll() is None and old.config()["pid"] == old.proc.pid
    assert sequential(old.port, "/a/", 5) == [200] * 5
    assert os.path.exists(path)  # still the old edge's: the next taker finds it
    # and a later upgrade works
    new = await trio.to_thread.run_sync(lambda: make_edge(
        files, port=old.port, admin_port=old.admin_port, extra_args=("--upgrade-socket", path)))
    with trio.fail_after(60):
        while old.proc.poll() is None:
            await trio.sleep(0.05)
    assert new.config()["pid"] == new.proc.pid
    assert sequential(new.port, "/a/", 5) == [200] * 5
