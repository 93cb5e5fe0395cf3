"""HTTP/1.1 proxying through the real gateway: errors, smuggling, pipelining, streaming."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import httpx
import pytest

from tests.conftest import free_port, mapping, raw_exchange, resource

pytestmark = pytest.mark.integration


def wait_metric(edge, name: str, at_least: int, timeout: float = 3.0) -> int:
    """The metric's value once it reaches `at_least` (workers publish counters every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = edge.admin("/metrics")[1].decode().splitlines()
        value = int(float(next(line.split()[1] for line in lines if line.startswith(name + " "))))
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def edge(make_edge, upstream):
    files = {"m.yaml": "".join([
        mapping("up", upstream.service, "/up/"),
        mapping("slow", upstream.service, "/slow/", timeout_ms=300),
        mapping("stream", upstream.service, "/stream/", timeout_ms=0),
        mapping("idle", upstream.service, "/idle/", timeout_ms=5000, idle_timeout_ms=200),
        mapping("refused", f"127.0.0.1:{free_port()}", "/refused/"),
        mapping("nodns", "no-such-host.invalid", "/nodns/"),
    ])}
    return make_edge(files, extra_args=("--header-timeout", "1"))


def test_error_statuses(edge):
    with httpx.Client(base_url=edge.url("")) as c:
        assert c.get("/missing").status_code == 404
        r = c.get("/refused/")
        assert r.status_code == 502 and "connect" in r.text
        r = c.get("/nodns/")
        assert r.status_code == 503 and r.text == "no healthy upstream"
        r = c.get("/slow/delay/1000")
        assert r.status_code == 504 and r.text == "upstream request timeout"
        assert c.get("/slow/delay/10").status_code == 200
        r = c.get("/idle/delay/1000")
        assert r.status_code == 504 and r.text == "upstream idle timeout"
    diag = edge.config()["diagnostics"]
    assert any("no-such-host.invalid" in d["message"] for d in diag)
    # 502, 503, 504 (timeout) and 504 (idle): counted by the workers, summed in /metrics
    assert wait_metric(edge, "edge_upstream_errors_total", 4) == 4


def test_404_does_not_contact_upstream(edge):
    before = httpx.get(edge.url("/up/")).json()["served"]
    for _ in range(3):
        assert httpx.get(edge.url("/elsewhere/")).status_code == 404
    assert httpx.get(edge.url("/up/")).json()["served"] == before + 1


SMUGGLING = [
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 5\r\n\r\nabcde",
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"POST /up/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"GET /up/ HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /up/ HTTP/1.1\nHost: a\n\n",
    b"GET /up/ HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    b"GET /up/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /up/ HTTP/1.1\r\n\r\n",
    b"POST /up/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /up/%zz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET up HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00",
]


@pytest.mark.parametrize("request_bytes", SMUGGLING)
def test_smuggling_corpus_is_rejected_and_closed(edge, request_bytes):
    answer = raw_exchange(edge.port, request_bytes + b"GET /up/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert b"HTTP/1.1 200" not in answer  # nothing after the 400 was served


def test_431_and_408(edge):
    big = b"GET /up/ HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * (70 * 1024) + b"\r\n\r\n"
    assert raw_exchange(edge.port, big).startswith(b"HTTP/1.1 431 ")
    started = time.monotonic()
    answer = raw_exchange(edge.port, b"GET /up/ HTTP/1.1\r\nHost: a\r\n", timeout=5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started < 4
    assert wait_metric(edge, "edge_client_errors_total", 2) == 2


def test_pipelined_requests_answered_in_order(edge):
    reqs = b"".join(b"GET /up/n%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    answer = raw_exchange(edge.port, reqs + b"GET /up/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 6
    positions = [answer.find(b'"path": "/n%d"' % i) for i in range(5)] + [answer.find(b'"path": "/last"')]
    assert all(p > 0 for p in positions) and positions == sorted(positions)


def test_head_204_304_and_close_delimited(edge):
    with httpx.Client(base_url=edge.url("")) as c:
        r = c.head("/up/bytes/1234")
        assert r.status_code == 200 and r.headers["content-length"] == "1234" and r.content == b""
        r = c.get("/up/status/204")
        assert r.status_code == 204 and r.content == b""
        r = c.get("/up/status/304")
        assert r.status_code == 304
        r = c.get("/up/close")
        assert r.text == "close-delimited body" and r.headers["transfer-encoding"] == "chunked"
        assert c.get("/up/after").status_code == 200  # the client connection stays usable


def test_expect_100_continue(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as s:
        s.sendall(b"POST /up/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
                  b"Connection: close\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"body_size": 5' in reply


def test_chunked_upload_and_download_keep_trailers(edge):
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
    answer = raw_exchange(edge.port, b"POST /up/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                                     b"Connection: close\r\n\r\n" + body)
    assert b'"body_size": 11' in answer and b'["x-checksum", "abc"]' in answer.lower()
    answer = raw_exchange(edge.port, b"GET /up/chunked/100000 HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n"
                                     b"Connection: close\r\n\r\n")
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert rest.endswith(b"0\r\nx-trailer: done\r\n\r\n")


def _worker_rss_mb(edge) -> float:
    peak = 0.0
    for pid in edge.worker_pids():
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def test_one_gib_each_way_streams_in_bounded_memory(edge):
    size = 1 << 30
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _worker_rss_mb(edge))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with httpx.Client(base_url=edge.url(""), timeout=120) as c:
            digest = hashlib.sha256()
            received = 0
            with c.stream("GET", f"/stream/bytes/{size}") as r:
                assert r.status_code == 200
                for piece in r.iter_raw(1 << 20):
                    received += len(piece)
                    digest.update(piece)
            assert received == size

            piece = bytes(range(256)) * 4096  # 1 MiB

            def gen():
                for _ in range(size // len(piece)):
                    yield piece

            r = c.post("/stream/upload", content=gen(), headers={"content-length": str(size)})
            expected = hashlib.sha256()
            for _ in range(size // len(piece)):
                expected.update(piece)
            assert r.json()["body_size"] == size and r.json()["body_sha256"] == expected.hexdigest()
    finally:
        done.set()
        sampler.join()
    assert 0 < peak[0] < 100, f"worker RSS peaked at {peak[0]:.1f} MB"


@pytest.fixture
def unresponsive_port():
    """A port whose accept queue is full: new connections hang in SYN_SENT."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for s in fillers + [server]:
        s.close()


def test_connect_and_module_request_timeouts(make_edge, upstream, unresponsive_port):
    module = resource("Module", "ambassador", {"config": {"cluster_request_timeout_ms": 300}})
    edge = make_edge({"m.yaml": module
                      + mapping("hang", f"127.0.0.1:{unresponsive_port}", "/hang/", connect_timeout_ms=200)
                      + mapping("slow", upstream.service, "/slow/")})
    with httpx.Client(base_url=edge.url(""), timeout=10) as c:
        started = time.monotonic()
        r = c.get("/hang/")
        assert r.status_code == 504 and "connect timeout" in r.text
        assert time.monotonic() - started < 2
        r = c.get("/slow/delay/1000")  # the Module's cluster_request_timeout_ms is the default timeout_ms
        assert r.status_code == 504 and r.text == "upstream request timeout"
        assert c.get("/slow/delay/10").status_code == 200


def test_reactor_turns_are_counted_and_batch_events(edge):
    with httpx.Client(base_url=edge.url("")) as c:
        for _ in range(50):
            assert c.get("/up/x").status_code == 200
    events = wait_metric(edge, "edge_reactor_events_total", 100)
    batches = wait_metric(edge, "edge_reactor_batches_total", 1)
    # every request is at least a client event and an upstream event; turns never exceed events
    assert events >= 100 and 1 <= batches <= events
