"""TLS termination through the real `edge serve` (2 workers), with real clients: curl,
openssl s_client and Python's ssl. Certificates are made by the tests."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import ssl
import subprocess
import time

import pytest

from tests.conftest import mapping, resource
from tests.tlscerts import make_ca, make_leaf

pytestmark = pytest.mark.integration


def tls_secret(name: str, issued) -> str:
    """A Secret exactly as `kubectl create secret tls NAME --cert --key --dry-run=client -o yaml` writes it."""
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    return (f"---\napiVersion: v1\ndata:\n  tls.crt: {b64(issued.cert_pem)}\n  tls.key: {b64(issued.key_pem)}\n"
            f"kind: Secret\nmetadata:\n  creationTimestamp: null\n  name: {name}\ntype: kubernetes.io/tls\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = make_ca()
    where = tmp_path_factory.mktemp("pki")
    (where / "ca.pem").write_text(ca.cert_pem)
    return {"ca": ca, "ca_file": str(where / "ca.pem"), "a": make_leaf(ca, "a.test"),
            "b": make_leaf(ca, "*.b.test"), "a2": make_leaf(ca, "a.test")}


@pytest.fixture
def tls_edge(make_edge, upstream, pki):
    files = {
        "secrets.yaml": tls_secret("a-cert", pki["a"]) + tls_secret("b-cert", pki["b"]),
        "hosts.yaml": resource("Host", "a", {"hostname": "a.test", "tlsSecret": {"name": "a-cert"}})
        + resource("Host", "b", {"hostname": "*.b.test", "tlsSecret": {"name": "b-cert"},
                                 "requestPolicy": {"insecure": {"action": "Route"}}}),
        "m.yaml": mapping("api", upstream.service, "/api/"),
    }
    return make_edge(files, protocol="HTTPS")


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


def resolve(edge, name: str) -> str:
    return f"{name}:{edge.port}:127.0.0.1"


def served_certificate(edge, sni: str | None, *extra: str) -> str:
    """The subject openssl s_client sees for `sni` (None: no SNI)."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{edge.port}", *extra]
    args += ["-servername", sni] if sni else ["-noservername"]
    done = subprocess.run(args, input="", capture_output=True, text=True, timeout=20)
    found = re.search(r"subject=.*?CN\s*=\s*([^\n,/]+)", done.stdout)
    return found.group(1).strip() if found else done.stdout + done.stderr


def test_curl_over_https_is_proxied_with_the_forwarded_proto_https(tls_edge, pki):
    done = curl("--cacert", pki["ca_file"], "--resolve", resolve(tls_edge, "a.test"),
                f"https://a.test:{tls_edge.port}/api/hello")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["path"] == "/hello"
    assert ["https"] == [v for n, v in data["headers"] if n.lower() == "x-forwarded-proto"]


def test_sni_selects_the_certificate_exact_then_wildcard_then_the_fallback(tls_edge):
    assert served_certificate(tls_edge, "a.test") == "a.test"
    assert served_certificate(tls_edge, "x.b.test") == "*.b.test"
    # unknown names and no SNI get the first certificate in the table's order
    assert served_certificate(tls_edge, "other.test") == "a.test"
    assert served_certificate(tls_edge, None) == "a.test"


def test_tls_versions_negotiate_as_the_client_asks(tls_edge):
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tls_edge.port}", "-servername",
                               "a.test", flag], input="", capture_output=True, text=True, timeout=20)
        assert f"Protocol  : {version}" in done.stdout or f"New, {version}" in done.stdout, done.stdout


def test_cleartext_on_the_https_port_is_redirected_for_a_tls_host_and_routed_where_the_host_says(tls_edge):
    done = curl("-i", "--resolve", resolve(tls_edge, "a.test"), f"http://a.test:{tls_edge.port}/api/x?q=1")
    assert done.returncode == 0, done.stderr
    head = done.stdout.split("\r\n\r\n")[0].lower()
    assert head.startswith("http/1.1 301")
    assert f"location: https://a.test:{tls_edge.port}/api/x?q=1" in head
    done = curl("--resolve", resolve(tls_edge, "x.b.test"), f"http://x.b.test:{tls_edge.port}/api/y")
    assert json.loads(done.stdout)["path"] == "/y"  # insecure.action Route


def test_a_rotated_certificate_reaches_the_next_connection_and_open_ones_stay_up(tls_edge, pki, upstream):
    ctx = ssl.create_default_context(cafile=pki["ca_file"])
    kept = ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_edge.port), timeout=10), server_hostname="a.test")
    first_serial = ssl_serial(kept)
    assert first_serial == pki["a"].cert.serial_number
    assert exchange(kept).startswith(b"HTTP/1.1 200")
    generation = tls_edge.config()["generation"]
    tls_edge.write("secrets.yaml", tls_secret("a-cert", pki["a2"]) + tls_secret("b-cert", pki["b"]))
    changed = time.monotonic()
    deadline = changed + 10
    while True:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_edge.port), timeout=10),
                             server_hostname="a.test") as fresh:
            if ssl_serial(fresh) == pki["a2"].cert.serial_number:
                break
        assert time.monotonic() < deadline, "the rotated certificate was never served"
        time.sleep(0.05)
    took = time.monotonic() - changed
    assert tls_edge.config()["generation"] > generation
    assert took < 1.0, f"the rotated certificate took {took:.2f} s to reach a new connection"
    assert exchange(kept).startswith(b"HTTP/1.1 200")  # the connection from before the rotation
    kept.close()


def test_a_host_whose_secret_is_missing_is_reported_and_the_rest_keeps_serving(make_edge, upstream, pki):
    edge = make_edge({
        "secrets.yaml": tls_secret("a-cert", pki["a"]),
        "hosts.yaml": resource("Host", "a", {"hostname": "a.test", "tlsSecret": {"name": "a-cert"}})
        + resource("Host", "lost", {"hostname": "lost.test", "tlsSecret": {"name": "nowhere"}}),
        "m.yaml": mapping("api", upstream.service, "/api/"),
    }, protocol="HTTPS")
    diags = edge.config()["diagnostics"]
    assert any("lost" in d["name"] and "tlsSecret" in d["field"] for d in diags), diags
    done = curl("--cacert", pki["ca_file"], "--resolve", resolve(edge, "a.test"), f"https://a.test:{edge.port}/api/")
    assert done.returncode == 0 and json.loads(done.stdout)["path"] == "/", done.stderr


def ssl_serial(sock: ssl.SSLSocket) -> int:
    from cryptography import x509
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def exchange(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(b"GET /api/ping HTTP/1.1\r\nHost: a.test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_session_resumes_on_any_worker(tls_edge, pki):
    """All workers encrypt tickets with the supervisor's keys: each reconnect (a new source
    port, so SO_REUSEPORT picks either worker) resumes the first session."""
    before = {w["slot"]: w["requests"] for w in tls_edge.config()["workers"]}
    ctx = ssl.create_default_context(cafile=pki["ca_file"])
    session, resumed = None, []
    connections = 24
    for _ in range(connections):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_edge.port), timeout=10),
                             server_hostname="a.test", session=session) as sock:
            assert exchange(sock).startswith(b"HTTP/1.1 200")  # the tickets arrive after the handshake
            if session is not None:
                resumed.append(sock.session_reused)
            session = sock.session
    assert resumed == [True] * (connections - 1)
    deadline = time.monotonic() + 10
    while True:  # the stats cells are written on each worker's heartbeat
        served = {w["slot"]: w["requests"] - before[w["slot"]] for w in tls_edge.config()["workers"]}
        if sum(served.values()) >= connections or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sum(served.values()) == connections
    assert all(n > 0 for n in served.values()), f"one worker served every connection: {served}"


def ca_secret(name: str, issued) -> str:
    b64 = base64.b64encode(issued.cert_pem.encode()).decode()
    return f"---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: Opaque\ndata: {{ca.crt: {b64}}}\n"


def test_client_certificates_are_required_and_told_upstream_as_x_forwarded_client_cert(make_edge, upstream, pki,
                                                                                      tmp_path):
    client = make_leaf(pki["ca"], "client.test", client=True)
    (tmp_path / "client.crt").write_text(client.cert_pem)
    (tmp_path / "client.key").write_text(client.key_pem)
    edge = make_edge({
        "secrets.yaml": tls_secret("a-cert", pki["a"]) + ca_secret("clients", pki["ca"]),
        "hosts.yaml": resource("Host", "a", {"hostname": "a.test", "tlsSecret": {"name": "a-cert"},
                                             "tls": {"ca_secret": "clients", "cert_required": True}}),
        "module.yaml": resource("Module", "ambassador", {"config": {
            "forward_client_cert_details": "SANITIZE_SET", "set_current_client_cert_details": {"subject": True}}}),
        "m.yaml": mapping("api", upstream.service, "/api/"),
    }, protocol="HTTPS")
    base = ["--cacert", pki["ca_file"], "--resolve", resolve(edge, "a.test")]
    url = f"https://a.test:{edge.port}/api/who"
    refused = curl(*base, url)
    assert refused.returncode != 0  # no client certificate: the handshake fails
    done = curl(*base, "--cert", str(tmp_path / "client.crt"), "--key", str(tmp_path / "client.key"),
                "-H", "x-forwarded-client-cert: Hash=forged", url)
    assert done.returncode == 0, done.stderr
    sent = [v for n, v in json.loads(done.stdout)["headers"] if n.lower() == "x-forwarded-client-cert"]
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(client.cert_pem)).hexdigest()
    assert sent == [f'Hash={digest};Subject="CN=client.test"'], sent
