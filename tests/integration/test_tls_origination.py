"""TLS origination through the real `edge serve` (2 workers): Mappings with `service:
https://...` and `tls: <TLSContext>` against a TLS upstream run here (Python's ssl, a
thread per connection) that answers JSON with what it saw of the handshake: the SNI, the
client certificate's subject, which of its connections served the request."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from tests.conftest import mapping, resource
from tests.integration.test_http1 import wait_metric
from tests.integration.test_tls import tls_secret
from tests.tlscerts import make_ca, make_leaf

pytestmark = pytest.mark.integration


class TLSUpstream:
    """An HTTP/1.1 keep-alive responder over TLS on 127.0.0.1. Client certificates are
    asked for (optional) and checked against `client_ca`. `connections`: TLS connections
    that completed a handshake."""

    def __init__(self, server, where, client_ca=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (where / "up.crt").write_text(server.cert_pem)  # load_cert_chain reads files only
        (where / "up.key").write_text(server.key_pem)
        self.ctx.load_cert_chain(where / "up.crt", where / "up.key")
        if client_ca is not None:
            self.ctx.load_verify_locations(cadata=client_ca.cert_pem)
            self.ctx.verify_mode = ssl.CERT_OPTIONAL
        self.ctx.sni_callback = self._sni
        self.ctx.set_alpn_protocols(["h2", "http/1.1"])  # h2 first: it would win if edge offered it
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = 0
        self.handshake_failures = 0
        self.sni: dict[int, str | None] = {}
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _sni(self, sslsock, name, _ctx) -> None:
        self.sni[id(sslsock)] = name

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            tls = self.ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            self.open.append(tls)
            threading.Thread(target=self._serve, args=(tls,), daemon=True).start()

    def _serve(self, tls: ssl.SSLSocket) -> None:
        try:
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError):
                with self.lock:
                    self.handshake_failures += 1
                return
            with self.lock:
                self.connections += 1
                number = self.connections
            peer = tls.getpeercert()
            subject = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
            served = 0
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = tls.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                served += 1
                body = json.dumps({"path": lines[0].split(" ")[1], "sni": self.sni.get(id(tls)),
                                   "client_cert": peer is not None, "client_subject": subject,
                                   "connection": number, "served": served, "version": tls.version(),
                                   "alpn": tls.selected_alpn_protocol(),
                                   "host": next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                                                 if ln.lower().startswith("host:")), None)}).encode()
                tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                            % (len(body), body))
        except OSError:
            return
        finally:
            tls.close()

    def stop(self) -> None:
        self.listener.close()
        for conn in self.open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


@pytest.fixture(scope="module")
def pki():
    ca = make_ca("upstream CA")
    clients = make_ca("client CA")
    return {"ca": ca, "other_ca": make_ca("some other CA"), "clients": clients,
            "server": make_leaf(ca, "upstream.test", "127.0.0.1"),
            "client": make_leaf(clients, "edge client", client=True)}


@pytest.fixture
def tls_upstream(pki, tmp_path):
    up = TLSUpstream(pki["server"], tmp_path, client_ca=pki["clients"])
    yield up
    up.stop()


def secrets(pki) -> str:
    """The CA Secrets hold the CA's key too (tls_secret writes both), which edge does not use."""
    return (tls_secret("upstream-ca", pki["ca"]) + tls_secret("other-ca", pki["other_ca"])
            + tls_secret("edge-client", pki["client"]))


def test_service_https_originates_tls_without_sni_or_checks(make_edge, tls_upstream):
    edge = make_edge({"m.yaml": mapping("up", f"https://127.0.0.1:{tls_upstream.port}", "/up/")})
    r = httpx.get(edge.url("/up/hello"), timeout=10)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == "/hello"
    # Emissary sends no SNI without a TLSContext's sni, presents no certificate, and does
    # not verify the upstream's (a CA that nothing here trusts signed it)
    assert seen["sni"] is None and seen["client_cert"] is False
    assert seen["alpn"] is None  # no alpn_protocols: none offered, as Envoy
    assert seen["host"] == f"127.0.0.1:{edge.port}"


def test_a_tlscontext_sends_its_sni_and_verifies_against_its_ca(make_edge, tls_upstream, pki):
    files = {
        "secrets.yaml": secrets(pki),
        "ctx.yaml": resource("TLSContext", "good", {"sni": "upstream.test", "ca_secret": "upstream-ca",
                                                    "alpn_protocols": "h2,http/1.1", "min_tls_version": "v1.2"})
        + resource("TLSContext", "wrong-ca", {"sni": "upstream.test", "ca_secret": "other-ca"}),
        "m.yaml": mapping("good", f"127.0.0.1:{tls_upstream.port}", "/good/", tls="good")
        + mapping("bad", f"127.0.0.1:{tls_upstream.port}", "/bad/", tls="wrong-ca"),
    }
    edge = make_edge(files)
    r = httpx.get(edge.url("/good/x"), timeout=10)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["sni"] == "upstream.test" and seen["alpn"] == "http/1.1" and seen["client_cert"] is False
    failures = tls_upstream.handshake_failures
    r = httpx.get(edge.url("/bad/x"), timeout=10)
    assert r.status_code == 503
    assert r.text.startswith("upstream connect error or disconnect/reset before headers. reset reason: connection "
                             "failure, transport failure reason: TLS error: "), r.text
    assert "CERTIFICATE_VERIFY_FAILED" in r.text
    # the upstream's thread sees the aborted handshake when edge's alert reaches it, which
    # may be after the 503 reached us: wait for it (bounded), then count exactly
    deadline = time.monotonic() + 5
    while tls_upstream.handshake_failures == failures and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tls_upstream.handshake_failures == failures + 1
    assert wait_metric(edge, "edge_upstream_errors_total", 1) == 1


def test_the_tlscontext_secret_is_the_client_certificate(make_edge, tls_upstream, pki):
    files = {
        "secrets.yaml": secrets(pki),
        "ctx.yaml": resource("TLSContext", "mtls", {"secret": "edge-client", "ca_secret": "upstream-ca"}),
        "m.yaml": mapping("m", f"127.0.0.1:{tls_upstream.port}", "/m/", tls="mtls"),
    }
    edge = make_edge(files)
    r = httpx.get(edge.url("/m/"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["client_cert"] is True and r.json()["client_subject"] == "edge client"


def test_a_kept_alive_upstream_connection_keeps_its_tls_session(make_edge, tls_upstream, pki):
    files = {
        "secrets.yaml": secrets(pki),
        "ctx.yaml": resource("TLSContext", "good", {"sni": "upstream.test", "ca_secret": "upstream-ca"}),
        "m.yaml": mapping("m", f"127.0.0.1:{tls_upstream.port}", "/m/", tls="good")
        + mapping("plain", f"https://127.0.0.1:{tls_upstream.port}", "/plain/"),
    }
    edge = make_edge(files)
    with httpx.Client(base_url=edge.url(""), timeout=10) as client:
        seen = [client.get(f"/m/{i}").json() for i in range(20)]
    assert {s["connection"] for s in seen} == {seen[0]["connection"]}  # one upstream connection...
    assert [s["served"] for s in seen] == list(range(1, 21))  # ...that served all 20
    assert tls_upstream.connections == 1  # one client connection is one worker: one TLS handshake
    # the same host and port without the TLSContext is another cluster: its own connection
    with httpx.Client(base_url=edge.url(""), timeout=10) as client:
        plain = client.get("/plain/").json()
    assert plain["sni"] is None and plain["connection"] != seen[0]["connection"]


def test_tls_to_a_cleartext_upstream_is_a_503(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("up", f"https://{upstream.service}", "/up/")})
    r = httpx.get(edge.url("/up/"), timeout=10)
    assert r.status_code == 503 and "transport failure reason: TLS error" in r.text, r.text


def test_a_missing_tlscontext_drops_the_mapping(make_edge, tls_upstream):
    edge = make_edge({"m.yaml": mapping("m", f"127.0.0.1:{tls_upstream.port}", "/m/", tls="nowhere")
                      + mapping("ok", f"https://127.0.0.1:{tls_upstream.port}", "/ok/")})
    assert httpx.get(edge.url("/m/"), timeout=10).status_code == 404
    assert httpx.get(edge.url("/ok/"), timeout=10).status_code == 200
    (d,) = [d for d in edge.config()["diagnostics"] if d["severity"] == "error"]
    assert d["name"] == "m" and d["field"] == "spec.tls" and "TLSContext nowhere not found" in d["message"]


def test_the_connect_timeout_covers_the_handshake(make_edge):
    """An upstream that accepts and never answers the ClientHello: 504 after connect_timeout_ms."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        edge = make_edge({"m.yaml": mapping("m", f"https://127.0.0.1:{port}", "/m/", connect_timeout_ms=300)})
        start = time.monotonic()
        r = httpx.get(edge.url("/m/"), timeout=10)
        took = time.monotonic() - start
        assert r.status_code == 504 and "upstream connect timeout" in r.text, r.text
        assert 0.25 < took < 2.5
    finally:
        silent.close()


def test_an_http2_stream_originates_tls_too(make_edge, tls_upstream, pki):
    """An HTTP/2 stream is an Exchange like an HTTP/1 request: h2c in, TLS to the upstream."""
    files = {
        "secrets.yaml": secrets(pki),
        "ctx.yaml": resource("TLSContext", "good", {"sni": "upstream.test", "ca_secret": "upstream-ca"}),
        "m.yaml": mapping("m", f"127.0.0.1:{tls_upstream.port}", "/m/", tls="good"),
    }
    edge = make_edge(files)
    done = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-w", "\\n%{http_version}",
                           edge.url("/m/h2")], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    body, version = done.stdout.rsplit("\n", 1)
    seen = json.loads(body)
    assert version == "2" and seen["path"] == "/h2" and seen["sni"] == "upstream.test"
