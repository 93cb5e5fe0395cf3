"""HTTP/2 downstream through the real `edge serve` (2 workers) with real clients: curl
(prior-knowledge h2c and h2 over TLS by ALPN), h2load, the h2 library, and h2spec."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from xml.etree import ElementTree

import h2.config
import h2.connection
import h2.events
import pytest

from tests.conftest import ROOT, mapping, resource
from tests.integration.test_tls import tls_secret
from tests.tlscerts import make_ca, make_leaf

pytestmark = pytest.mark.integration



def find_h2spec() -> str | None:
    """h2spec is no package: H2SPEC, the PATH, or the shared tools beside the repository
    (../shared/tools/bin, see ../shared/tools/h2spec.md)."""
    candidates = [os.environ.get("H2SPEC"), shutil.which("h2spec"), ROOT.parent / "shared/tools/bin/h2spec",
                  "/work/shared/tools/bin/h2spec"]
    return next((str(c) for c in candidates if c and os.access(c, os.X_OK)), None)


PATTERN = bytes(range(256)) * 256  # the upstream's /bytes/N body, repeated


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = make_ca()
    where = tmp_path_factory.mktemp("pki")
    (where / "ca.pem").write_text(ca.cert_pem)
    return {"ca": ca, "ca_file": str(where / "ca.pem"), "leaf": make_leaf(ca, "h2.test", "127.0.0.1")}


@pytest.fixture
def h2_edge(make_edge, upstream, pki):
    return make_edge({
        "secrets.yaml": tls_secret("cert", pki["leaf"]),
        "hosts.yaml": resource("Host", "h2", {"hostname": "*", "tlsSecret": {"name": "cert"},
                                              "requestPolicy": {"insecure": {"action": "Route"}}}),
        # the root Mapping has no route timeout: long downloads (Emissary cuts a response at 3 s by default)
        "m.yaml": mapping("api", upstream.service, "/api/") + mapping("root", upstream.service, "/", rewrite="", timeout_ms=0),
    }, protocol="HTTPS")


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=40)


def test_curl_with_prior_knowledge_speaks_h2c(h2_edge):
    done = curl("--http2-prior-knowledge", "-D", "-", h2_edge.url("/api/hello?x=1"))
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    data = json.loads(body)
    assert data["path"] == "/hello?x=1"
    names = {n.lower(): v for n, v in data["headers"]}
    assert names["host"] == f"127.0.0.1:{h2_edge.port}" and names["x-forwarded-proto"] == "http"


def test_curl_over_tls_picks_h2_by_alpn(h2_edge, pki):
    done = curl("--http2", "--cacert", pki["ca_file"], "-D", "-", f"https://127.0.0.1:{h2_edge.port}/api/tls")
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    names = {n.lower(): v for n, v in json.loads(body)["headers"]}
    assert names["x-forwarded-proto"] == "https"
    # a client that offers only http/1.1 keeps HTTP/1.1 on the same port
    done = curl("--http1.1", "--cacert", pki["ca_file"], "-D", "-", f"https://127.0.0.1:{h2_edge.port}/api/tls")
    assert done.stdout.startswith(b"HTTP/1.1 200"), done.stdout[:100]


def test_large_bodies_both_ways_arrive_whole(h2_edge, tmp_path):
    upload = tmp_path / "up.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    upload.write_bytes(payload)
    done = curl("--http2-prior-knowledge", "--data-binary", f"@{upload}", h2_edge.url("/upload"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["body_size"] == len(payload) and result["body_sha256"] == hashlib.sha256(payload).hexdigest()
    size = 8 * 1024 * 1024
    done = curl("--http2-prior-knowledge", h2_edge.url(f"/bytes/{size}"))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) == size and done.stdout[:len(PATTERN)] == PATTERN


def test_many_streams_on_one_connection_with_the_h2_library(h2_edge):
    """100 concurrent streams on one connection: every one answered, in any order."""
    with socket.create_connection(("127.0.0.1", h2_edge.port), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.increment_flow_control_window(16 * 1024 * 1024)
        ids = []
        for i in range(100):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(b":method", b"GET"), (b":path", f"/api/s{i}".encode()), (b":scheme", b"http"),
                                    (b":authority", b"h2.test")], end_stream=True)
            ids.append(sid)
        sock.sendall(conn.data_to_send())
        status, bodies, ended = {}, {}, set()
        while len(ended) < len(ids):
            data = sock.recv(65536)
            assert data, "edge closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status[event.stream_id] = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            sock.sendall(conn.data_to_send())
    assert set(status.values()) == {b"200"}
    assert sorted(json.loads(bodies[sid])["path"] for sid in ids) == sorted(f"/s{i}" for i in range(100))


def test_no_route_and_local_replies_are_per_stream(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("api", upstream.service, "/api/")})
    for path, status in (("/nowhere", "404"), ("/api/ok", "200")):
        done = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", edge.url(path))
        assert done.stdout.decode() == f"{status} 2", done


@pytest.fixture(scope="session")
def h2load():
    path = shutil.which("h2load")
    if path is None:
        pytest.fail("h2load is missing: `make test` installs Debian's nghttp2-client")
    return path


def test_h2load_with_100_streams_per_connection_gets_every_answer(h2_edge, h2load):
    done = subprocess.run([h2load, "-n", "4000", "-c", "4", "-m", "100", h2_edge.url("/api/load")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                      done.stdout)
    assert found, done.stdout
    total, started, finished, succeeded, failed, errored = map(int, found.groups())
    assert (finished, succeeded, failed, errored) == (4000, 4000, 0, 0), done.stdout
    assert "status codes: 4000 2xx" in done.stdout, done.stdout


# On a port that also serves HTTP/1, bytes that are not the HTTP/2 preface are HTTP/1 and
# get HTTP/1's 400: h2spec's "invalid connection preface" over h2c expects a GOAWAY there
# instead. Over TLS, ALPN has said h2 before any byte, and edge answers with the GOAWAY.
H2C_ONLY_FAILURE = {"http2/3.5: Sends invalid connection preface"}


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_h2spec_passes_every_test(h2_edge, tls, tmp_path):
    h2spec = find_h2spec()
    if h2spec is None:
        pytest.skip("no h2spec binary here (H2SPEC, PATH or ../shared/tools/bin/h2spec): the conformance "
                    "suite is not a package; curl, h2load and the h2 library tests above still ran")
    report = tmp_path / "h2spec.xml"
    args = [h2spec, "-h", "127.0.0.1", "-p", str(h2_edge.port), "-o", "5", "-j", str(report)]
    if tls:
        args += ["-t", "-k"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    summary = re.search(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed", done.stdout)
    assert summary, done.stdout[-3000:]
    total, passed, skipped, failed = map(int, summary.groups())
    assert total == 146 and skipped == 0, summary.group(0)
    failing = {f"{case.get('package')}: {case.get('classname')}" for case in ElementTree.parse(report).iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None}
    expected = set() if tls else H2C_ONLY_FAILURE
    assert len(failing) == failed and failing == expected, f"h2spec: {summary.group(0)}: {sorted(failing)}\n" \
        + done.stdout[-4000:]


def test_an_h2_stream_runs_through_50_table_swaps(h2_edge, upstream):
    """A rate-limited 64 MiB download over one HTTP/2 stream while 50 tables are published
    (a Mapping added and removed each time): the stream and its connection never reset."""
    size = 64 * 1024 * 1024
    download = subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", "--limit-rate", "8M", "-o", "-",
                                 "-w", "%{http_version} %{http_code} %{size_download}",
                                 h2_edge.url(f"/bytes/{size}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    generation = h2_edge.config()["generation"]
    for i in range(50):
        extra = mapping(f"churn-{i}", upstream.service, f"/churn-{i}/") if i % 2 == 0 else ""
        h2_edge.write("churn.yaml", extra or "---\n")
        generation += 1
        h2_edge.wait_generation(generation, timeout=10)
    assert download.poll() is None, "the download ended before the last swap: make it longer"
    out, err = download.communicate(timeout=120)
    assert download.returncode == 0, err
    body, _, summary = out.rpartition(b"2 200 ")
    assert summary == str(size).encode() and len(body) == size and body[:len(PATTERN)] == PATTERN
