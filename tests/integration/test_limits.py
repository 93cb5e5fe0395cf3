"""The real `edge serve` at the machine's limits: file descriptors, a small /dev/shm, and an
admin port reachable from other hosts."""

from __future__ import annotations

import errno
import fcntl
import http.client
import ipaddress
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, free_port, mapping

pytestmark = pytest.mark.integration

HELD = 2_500  # idle connections: more than two workers hold with 1,024 descriptors each


def metrics(edge) -> dict[str, float]:
    return {name: float(value) for name, value in
            (line.split() for line in edge.admin("/metrics")[1].decode().splitlines() if line)}


def limits_of(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a running process."""
    with open(f"/proc/{pid}/limits") as f:
        [line] = [line for line in f if line.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


# ---- file descriptors --------------------------------------------------------------------

@pytest.fixture
def own_fd_limit():
    """This test process opens the idle connections: it needs more than 1,024 descriptors too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096 and os.geteuid() != 0:
        pytest.skip(f"the hard RLIMIT_NOFILE here is {hard}, under 4,096, and may not be raised: "
                    f"{HELD:,} connections cannot be held on both ends")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 8192), max(hard, 8192)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def soft_limit_1024(hard: int):
    """preexec_fn: what systemd gives a service by default, soft 1,024 under a higher hard limit."""
    def limit() -> None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, max(hard, 8192)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    return limit


def test_2500_idle_connections_with_a_soft_fd_limit_of_1024_and_requests_still_served(
        own_fd_limit, make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")}, workers=2,
                     preexec_fn=soft_limit_1024(own_fd_limit))
    soft, hard = limits_of(edge.proc.pid)
    if hard < 4096:
        pytest.skip(f"edge's hard RLIMIT_NOFILE is {hard}, under 4,096")
    assert (soft, hard) == (hard, hard)  # the supervisor raised it, and its workers inherited that
    assert f"file descriptors: soft limit raised from 1024 to {hard}" in edge.output()
    for pid in edge.worker_pids():
        assert limits_of(pid) == (hard, hard)

    idle = []
    try:
        for _ in range(HELD):
            idle.append(socket.create_connection(("127.0.0.1", edge.port), timeout=30))
        deadline = time.monotonic() + 60
        while (m := metrics(edge))["edge_active_connections"] < HELD:
            assert time.monotonic() < deadline, (m["edge_active_connections"], m["edge_accept_errors_total"],
                                                 edge.output())
            time.sleep(0.1)
        # the idle ones are held, and new clients are still served through to the upstream
        for _ in range(20):
            response = httpx.get(edge.url("/m/"), headers={"connection": "close"}, timeout=30)
            assert response.status_code == 200 and response.headers["x-upstream"] == "a"
        with httpx.Client(timeout=30) as client:  # and on one keep-alive connection
            assert {client.get(edge.url(f"/m/{i}")).status_code for i in range(20)} == {200}
        m = metrics(edge)
        assert m["edge_active_connections"] >= HELD
        assert m["edge_accept_errors_total"] == 0
        for sock in idle:  # none was closed or reset by edge
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in idle:
            sock.close()
    assert "accept on port" not in edge.output()


# ---- a small /dev/shm --------------------------------------------------------------------

def _fill(where, leave: int) -> str:
    """A ballast file leaving `leave` bytes free: the tmpfs is (nearly) full."""
    st = os.statvfs(where)
    path = os.path.join(where, "ballast")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - leave)
    finally:
        os.close(fd)
    return path


def big_config(upstream, count: int) -> str:
    # about 2.1 kB each once encoded: 2,100 of them outgrow the first 4 MiB slot
    pad = {"x-pad": "p" * 2000}
    return "".join(mapping(f"x{i}", upstream.service, f"/x-{i}/", add_request_headers=pad) for i in range(count))


def test_a_table_that_outgrows_its_segment_when_shm_is_full_is_rejected_whole(make_tmpfs, make_edge, upstream):
    shm_dir = make_tmpfs("32m")
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")}, env={"EDGE_SHM_DIR": str(shm_dir)},
                     extra_args=("--ratelimit-buckets", "1024"))
    segments = sorted(os.listdir(shm_dir))
    assert len(segments) == 3 and any(s.endswith("-routes-0") for s in segments), segments
    assert not any(os.path.exists(os.path.join("/dev/shm", s)) for s in segments)
    generation = edge.config()["generation"]
    ballast = _fill(shm_dir, leave=4 << 20)

    edge.write("big.yaml", big_config(upstream, 2100))
    deadline = time.monotonic() + 60
    while not any(d["kind"] == "RouteTable" for d in edge.config()["diagnostics"]):
        assert time.monotonic() < deadline, edge.output()
        time.sleep(0.05)
    config = edge.config()
    [rejection] = [d for d in config["diagnostics"] if d["kind"] == "RouteTable"]
    message = rejection["message"]
    assert rejection["severity"] == "error" and message.startswith("rejected whole: the route table encodes to ")
    assert "needs a bigger routes segment: cannot reserve" in message
    assert re.search(r"for segment edge-\S+-routes-1 in " + re.escape(str(shm_dir)), message), message
    assert "emptyDir" in message and f"generation {generation} keeps serving" in message
    assert message in edge.output()  # logged too
    assert config["generation"] == generation
    assert metrics(edge)["edge_tables_rejected_total"] == 1
    assert httpx.get(edge.url("/m/")).status_code == 200  # the last good table serves
    assert httpx.get(edge.url("/x-1/")).status_code == 404
    assert sorted(os.listdir(shm_dir)) == sorted(segments + ["ballast"])  # nothing half-made

    # room again: the next edit is published in a bigger segment, and every worker follows
    os.unlink(ballast)
    edge.write("big.yaml", big_config(upstream, 2101))
    edge.wait_generation(generation + 1, timeout=60)
    assert httpx.get(edge.url("/x-2100/")).status_code == 200
    assert httpx.get(edge.url("/m/")).status_code == 200
    assert not any(d["kind"] == "RouteTable" for d in edge.config()["diagnostics"])
    assert any(s.endswith("-routes-1") for s in os.listdir(shm_dir))


def test_edge_serve_without_room_for_its_segments_exits_with_one_line(make_tmpfs, tmp_path):
    shm_dir = make_tmpfs("4m")  # the routes segment alone wants 8 MiB
    config = tmp_path / "config"
    config.mkdir()
    (config / "m.yaml").write_text(mapping("m", "127.0.0.1:9", "/m/"))
    done = subprocess.run(
        [sys.executable, "-m", "edge", "serve", "-c", str(config), "--workers", "2",
         "--admin-addr", f"127.0.0.1:{free_port()}"],
        env={**os.environ, "EDGE_SHM_DIR": str(shm_dir)}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if "cannot reserve" in line] == [lines[-1]]
    assert re.fullmatch(
        r"edge serve: cannot reserve 8,388,864 bytes of shared memory for segment edge-\S+-routes-0 in "
        + re.escape(str(shm_dir)) + r" \([\d,]+ bytes free: No space left on device\); mount a larger "
        r"memory-backed emptyDir at " + re.escape(str(shm_dir)) + r" \(emptyDir.medium: Memory\)", lines[-1]), lines
    assert os.listdir(shm_dir) == []  # the stats segment made before it is removed


def test_edge_serve_failing_at_start_leaves_no_segment(make_tmpfs, tmp_path):
    shm_dir = make_tmpfs("32m")
    done = subprocess.run(
        [sys.executable, "-m", "edge", "serve", "--kubernetes", "--kubeconfig", str(tmp_path / "missing"),
         "--workers", "1", "--admin-addr", f"127.0.0.1:{free_port()}"],
        env={**os.environ, "EDGE_SHM_DIR": str(shm_dir)}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert os.listdir(shm_dir) == []  # made before the kubeconfig was read, removed when it failed


# ---- the admin port from another host ------------------------------------------------------

def own_ipv4_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (SIOCGIFADDR on each interface)."""
    found = []
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address on it
                continue
        address = socket.inet_ntoa(packed[20:24])
        if not ipaddress.ip_address(address).is_loopback:
            found.append(address)
    return found


def admin_request(address: str, port: int, method: str, path: str) -> int:
    """`method path` sent from `address` (the peer the admin server sees)."""
    conn = http.client.HTTPConnection(address, port, timeout=10, source_address=(address, 0))
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_restarted(edge, before: list[int]) -> None:
    deadline = time.monotonic() + 60
    while True:
        pids = edge.worker_pids()
        retiring = metrics(edge)["edge_workers_retiring"]
        if None not in pids and set(pids).isdisjoint(before) and retiring == 0:
            return
        assert time.monotonic() < deadline, (before, pids, edge.output())
        time.sleep(0.05)


@pytest.fixture
def own_address():
    addresses = own_ipv4_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to call the admin port from")
    return addresses[0]


def test_admin_on_every_address_refuses_restart_from_another_host(make_edge, upstream, own_address):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")}, admin_host="0.0.0.0")
    port = edge.admin_port
    before = edge.worker_pids()
    assert admin_request(own_address, port, "POST", "/edge/v1/restart") == 403
    for path in ("/ambassador/v0/check_ready", "/ambassador/v0/check_alive", "/metrics", "/edge/v1/config"):
        assert admin_request(own_address, port, "GET", path) == 200, path
    assert edge.worker_pids() == before and metrics(edge)["edge_workers_retiring"] == 0
    assert admin_request("127.0.0.1", port, "POST", "/edge/v1/restart") == 202  # loopback may
    wait_restarted(edge, before)


def test_admin_allow_remote_restart(make_edge, upstream, own_address):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")}, admin_host="0.0.0.0",
                     extra_args=("--admin-allow-remote-restart",))
    port = edge.admin_port
    before = edge.worker_pids()
    assert admin_request(own_address, port, "POST", "/edge/v1/restart") == 202
    assert admin_request(own_address, port, "POST", "/edge/v1/restart") in (202, 409)  # 409 while one runs
    wait_restarted(edge, before)
    assert httpx.get(edge.url("/m/")).status_code == 200
