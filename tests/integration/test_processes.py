"""Supervisor and workers as processes: reloads, worker death, accept queues, drain."""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from edge import cpus
from edge.supervisor.main import Options
from tests.conftest import mapping

pytestmark = pytest.mark.integration
HEARTBEAT_TIMEOUT = Options.heartbeat_timeout  # edge serve's default: make_edge does not change it


def test_config_edit_served_by_every_worker_within_1s(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/old/")})
    generation = edge.config()["generation"]
    written = time.monotonic()
    edge.write("m.yaml", mapping("m", upstream.service, "/new/"))
    edge.wait_generation(generation + 1, timeout=1.0)
    assert time.monotonic() - written < 1.0
    # fresh connections land on both workers; every one sees the new route
    statuses = {httpx.get(edge.url("/new/"), headers={"connection": "close"}).status_code for _ in range(20)}
    assert statuses == {200}
    assert httpx.get(edge.url("/old/")).status_code == 404


def test_sighup_forces_a_reread(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/aaa/")})
    path = edge.dir / "m.yaml"
    stat = os.stat(path)
    generation = edge.config()["generation"]
    # same size, same mtime, same inode: invisible to the watcher's poll; written through a
    # hard link outside the watched directory: invisible to its inotify watch too
    hidden = edge.dir.parent / "hidden-link.yaml"
    os.link(path, hidden)
    with open(hidden, "r+") as f:
        text = f.read()
        f.seek(0)
        f.write(text.replace("/aaa/", "/bbb/"))
    os.utime(hidden, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(0.5)
    assert edge.config()["generation"] == generation
    edge.proc.send_signal(signal.SIGHUP)
    edge.wait_generation(generation + 1, timeout=2.0)
    assert httpx.get(edge.url("/bbb/")).status_code == 200


def _load(edge, stop: threading.Event, results: list):
    with httpx.Client(base_url=edge.url(""), timeout=5) as c:
        while not stop.is_set():
            try:
                results.append(c.get("/m/").status_code)
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)


def test_kill_9_worker_is_replaced_and_its_queue_is_served(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")})
    victim_slot, victim = 0, edge.worker_pids()[0]
    survivor = edge.worker_pids()[1]
    stop, results = threading.Event(), []
    loaders = [threading.Thread(target=_load, args=(edge, stop, results)) for _ in range(2)]
    for t in loaders:
        t.start()
    queued = []
    try:  # a failure must still stop the load threads (or pytest never exits) and close sockets
        time.sleep(0.3)
        # Freeze the victim so connections pile up in its socket's accept queue, then kill it.
        os.kill(victim, signal.SIGSTOP)
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", edge.port), timeout=10)
            s.sendall(b"GET /m/queued HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n")
            queued.append(s)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # The replacement is started on SIGCHLD, not after a missed heartbeat: its process
        # exists within 1 s. Loading the table is a Python start (0.2 s idle, over a second
        # on a busy 2-core machine), so that is bounded by what it must beat: the heartbeat
        # timeout, after which a silent worker would have been replaced anyway.
        replaced_in = serving_in = None
        while serving_in is None:
            workers = edge.config()["workers"]
            pid = workers[victim_slot]["pid"]
            now = time.monotonic() - killed
            if pid not in (None, victim):
                replaced_in = replaced_in if replaced_in is not None else now
                if workers[victim_slot]["generation"]:
                    serving_in = now
            assert now < HEARTBEAT_TIMEOUT, workers
            time.sleep(0.02)
        answers = []
        for s in queued:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            answers.append(data[:12])
    finally:
        stop.set()
        for t in loaders:
            t.join()
        for s in queued:
            s.close()
    assert replaced_in < 1.0 and serving_in < HEARTBEAT_TIMEOUT
    assert answers == [b"HTTP/1.1 200"] * 16, answers
    assert edge.worker_pids()[1] == survivor
    failures = [r for r in results if r != 200]
    # only requests in flight on the killed worker may fail: at most one per client thread
    assert len(failures) <= len(loaders), failures
    assert results.count(200) > 50


def test_sigterm_drains_in_flight_requests(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/", timeout_ms=5000)})
    results = []

    def slow():
        results.append(httpx.get(edge.url("/m/delay/1500"), timeout=10).status_code)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    edge.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert edge.proc.wait(timeout=10) == 0
    assert results == [200] * 4
    with pytest.raises(httpx.ConnectError):
        httpx.get(edge.url("/m/"), timeout=2)


def test_worker_crash_loop_backs_off(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")}, workers=1)
    pids = set()
    for _ in range(3):
        pid = edge.worker_pids()[0]
        pids.add(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while edge.worker_pids()[0] in (pid, None):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    workers = edge.config()["workers"]
    assert workers[0]["restarts"] == 3 and len(pids) == 3
    assert httpx.get(edge.url("/m/")).status_code == 200
    assert "restart in 0.4s" in edge.output()  # 0.1, 0.2, 0.4: exponential, not a tight loop


def test_a_stopped_worker_is_detected_by_its_heartbeat_and_replaced(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")})
    victim = edge.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        while True:
            workers = edge.config()["workers"]
            if workers[0]["pid"] not in (None, victim) and workers[0]["generation"]:
                break
            assert time.monotonic() - stopped < 5.0, workers
            time.sleep(0.05)
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert 2.5 < time.monotonic() - stopped < 5.0  # the heartbeat timeout (3 s), not a crash
    assert httpx.get(edge.url("/m/")).status_code == 200


def test_a_table_over_its_memory_budget_is_rejected_whole(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")}, extra_args=("--max-table-mb", "0.02"))
    generation = edge.config()["generation"]
    big = "".join(mapping(f"x{i}", upstream.service, f"/x-{i}/") for i in range(300))
    edge.write("big.yaml", big)
    deadline = time.monotonic() + 5
    while not any(d["kind"] == "RouteTable" for d in edge.config()["diagnostics"]):
        assert time.monotonic() < deadline, edge.config()["diagnostics"]
        time.sleep(0.02)
    config = edge.config()
    [rejection] = [d for d in config["diagnostics"] if d["kind"] == "RouteTable"]
    assert rejection["severity"] == "error" and rejection["field"] == "size"
    assert "over the budget of 20,971 bytes" in rejection["message"]
    assert f"generation {generation} keeps serving" in rejection["message"]
    assert config["generation"] == generation
    assert b"edge_tables_rejected_total 1" in edge.admin("/metrics")[1]
    assert httpx.get(edge.url("/m/")).status_code == 200
    assert httpx.get(edge.url("/x-1/")).status_code == 404
    # a later edit that fits is published, and the rejection is gone
    edge.write("big.yaml", mapping("x1", upstream.service, "/x-1/"))
    edge.wait_generation(generation + 1)
    assert httpx.get(edge.url("/x-1/")).status_code == 200
    assert not any(d["kind"] == "RouteTable" for d in edge.config()["diagnostics"])


def test_slow_downloads_and_idle_connections_survive_reloads_of_their_own_route(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/dl/", rewrite="/")})
    size = 30_000_000
    download = socket.create_connection(("127.0.0.1", edge.port), timeout=10)
    download.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    download.sendall(b"GET /dl/bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
    idle = socket.create_connection(("127.0.0.1", edge.port), timeout=10)
    idle.sendall(b"GET /dl/status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert _response(idle).startswith(b"HTTP/1.1 200")
    received = download.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % size in head
    got = len(body)
    generation = edge.config()["generation"]
    for i in range(21):  # 21 reloads, the route edited, removed and back, while the download crawls
        if i % 3 == 1:
            edge.write("m.yaml", "---\n")
        else:
            edge.write("m.yaml", mapping("m", upstream.service, "/dl/", rewrite="/", timeout_ms=i * 1000 + 30000))
        generation += 1
        edge.wait_generation(generation)
        got += len(download.recv(65536))
    assert got < size, "the download finished before the reloads: the test proves nothing"
    while got < size:
        chunk = download.recv(1 << 20)
        assert chunk, f"the download was cut after {got} of {size} bytes"
        got += len(chunk)
    assert got == size
    # the idle keep-alive connection is still open and takes the current table
    idle.sendall(b"GET /dl/status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert _response(idle).startswith(b"HTTP/1.1 200")
    download.close()
    idle.close()


def _response(sock: socket.socket) -> bytes:
    """One whole Content-Length response from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    assert len(body) == length, "more than one response"
    return head + b"\r\n\r\n" + body


def test_sigterm_under_load_completes_every_request_sent_before_it(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/", timeout_ms=5000)})
    outcomes: list[tuple[float, object]] = []  # (when the request was sent, status or error)
    stop = threading.Event()

    def client(path: bytes):
        while not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", edge.port), timeout=10)
            except OSError:
                return  # listeners closed: the drain has begun
            with sock:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
                        answer = _response(sock)
                    except (OSError, IndexError, ValueError) as exc:
                        outcomes.append((sent, type(exc).__name__))
                        break
                    outcomes.append((sent, int(answer[9:12])))
                    if b"\r\nconnection: close\r\n" in answer.lower():
                        break

    threads = [threading.Thread(target=client, args=(p,)) for p in [b"/m/x"] * 6 + [b"/m/delay/300"] * 2]
    for t in threads:
        t.start()
    try:  # a failure must still stop the client threads, or pytest never exits
        time.sleep(0.7)
        signalled = time.monotonic()
        edge.proc.send_signal(signal.SIGTERM)
        assert edge.proc.wait(timeout=15) == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    before = [outcome for sent, outcome in outcomes if sent < signalled]
    assert len(before) > 100, "the load barely ran"
    assert set(before) == {200}, collections.Counter(before)


@pytest.mark.parametrize("cpuset", [{0}, {0, 1}], ids=["taskset-c-0", "taskset-c-0,1"])
def test_without_workers_one_worker_per_cpu_it_may_use(make_edge, upstream, cpuset):
    if not cpuset <= os.sched_getaffinity(0):
        pytest.skip(f"this test may run on CPUs {sorted(os.sched_getaffinity(0))}, not {sorted(cpuset)}")
    quota = cpus.host_quota()
    if quota is not None and cpus.usable(len(cpuset), quota) < len(cpuset):
        pytest.skip(f"this machine's cgroup quota ({quota:g} CPUs) allows fewer workers than {len(cpuset)}")
    # as `taskset -c 0 edge serve -c DIR`, with neither --workers nor EDGE_WORKERS
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/m/")}, workers=None, env={"EDGE_WORKERS": None},
                     preexec_fn=lambda: os.sched_setaffinity(0, cpuset))
    workers = edge.config()["workers"]
    assert len(workers) == len(cpuset), workers
    for worker in workers:
        assert os.sched_getaffinity(worker["pid"]) == cpuset  # inherited: they run where edge may
    assert httpx.get(edge.url("/m/")).status_code == 200
