"""TLS in the worker without the worker: ServerContexts (SNI, versions, client
certificates, ALPN) and TLSTransport's socket-like contracts, against the stdlib client
over a socketpair."""

from __future__ import annotations

import select
import socket
import ssl
import threading

import pytest

from edge.model import Certificate, RouteTable, ServerTLS, Settings
from edge.worker.reactor import flush_kept, send_or_keep
from edge.worker.tls import ServerContexts
from tests.tlscerts import make_ca, make_leaf


@pytest.fixture(scope="module")
def pki():
    ca = make_ca()
    return {"ca": ca, "a": make_leaf(ca, "a.example.com"), "wild": make_leaf(ca, "*.example.com"),
            "deep": make_leaf(ca, "*.deep.example.com"), "any": make_leaf(ca, "fallback.test"),
            "client": make_leaf(ca, "client one", client=True), "other_ca": make_ca("another CA")}


def table(pki, *entries: tuple[str, tuple[str, ...], dict]) -> RouteTable:
    certs = [Certificate(f"default/{key}", pki[key].cert_pem, pki[key].key_pem) for key in sorted(pki)]
    index = {c.name.split("/")[1]: i for i, c in enumerate(certs)}
    server = tuple(ServerTLS(f"Host default/{key}", names, index[key],
                             **{k: index[v] if k == "ca_certificate" else v for k, v in extra.items()})
                   for key, names, extra in entries)
    return RouteTable(Settings(), (), (), (), (), certificates=tuple(certs), server_tls=server)


def client_context(pki, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki["ca"].cert_pem)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def serve_once(contexts: ServerContexts, client_ctx: ssl.SSLContext, sni: str | None, request: bytes = b"ping",
               reply: bytes = b"pong", sndbuf: int | None = None):
    """Handshake a stdlib client (in a thread, blocking) with a TLSTransport (here,
    non-blocking, driven like the reactor drives it); the client sends `request` and reads
    `reply` to its end. Returns (what the server read, the client's view, the server
    transport)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    seen: dict = {}

    def client():
        try:
            with client_ctx.wrap_socket(theirs, server_hostname=sni) as tls:
                seen["cert"] = tls.getpeercert()
                seen["alpn"] = tls.selected_alpn_protocol()
                seen["version"] = tls.version()
                tls.sendall(request)
                got = bytearray()
                while len(got) < len(reply):
                    data = tls.recv(1 << 20)
                    if not data:
                        break
                    got += data
                seen["reply"] = bytes(got)
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc
            theirs.close()

    thread = threading.Thread(target=client)
    thread.start()
    transport = contexts.wrap(ours)
    buf = bytearray(65536)
    got = bytearray()
    try:
        while len(got) < len(request):
            select.select([ours], [ours] if transport.pending_output else [], [], 5)
            if transport.pending_output:
                transport.flush()
            try:
                n = transport.recv_into(buf)
            except BlockingIOError:
                continue
            if n == 0:
                break
            got += buf[:n]
        kept = send_or_keep(transport, None, reply) if len(got) == len(request) else None
        while kept:
            select.select([], [ours], [], 5)
            kept = flush_kept(transport, kept)
    except ssl.SSLError as exc:
        seen["server_error"] = exc
    thread.join(10)
    ours.close()
    return bytes(got), seen, transport


def subject(seen) -> str:
    return dict(x[0] for x in seen["cert"]["subject"])["commonName"]


def test_sni_picks_the_exact_name_then_the_longest_wildcard_then_the_fallback(pki):
    contexts = ServerContexts(table(pki, ("wild", ("*.example.com",), {}), ("a", ("a.example.com",), {}),
                                    ("deep", ("*.deep.example.com",), {}), ("any", ("*",), {})))
    ctx = client_context(pki)
    ctx.check_hostname = False
    for sni, expected in [("a.example.com", "a.example.com"), ("b.example.com", "*.example.com"),
                          ("x.deep.example.com", "*.deep.example.com"), ("A.Example.COM", "a.example.com"),
                          ("example.com", "fallback.test"), ("other.test", "fallback.test"), (None, "fallback.test")]:
        got, seen, _ = serve_once(contexts, ctx, sni)
        assert got == b"ping" and seen.get("reply") == b"pong", (sni, seen)
        assert subject(seen) == expected, sni


def test_without_a_star_entry_the_first_entry_is_the_fallback(pki):
    contexts = ServerContexts(table(pki, ("a", ("a.example.com",), {}), ("wild", ("*.example.com",), {})))
    ctx = client_context(pki)
    ctx.check_hostname = False
    _, seen, _ = serve_once(contexts, ctx, "unknown.test")
    assert subject(seen) == "a.example.com"


def test_a_verifying_client_accepts_the_chain_and_gets_http1_by_alpn(pki):
    contexts = ServerContexts(table(pki, ("a", ("a.example.com",), {"alpn_protocols": ("h2", "http/1.1")})))
    ctx = client_context(pki)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    got, seen, transport = serve_once(contexts, ctx, "a.example.com")
    assert seen["reply"] == b"pong" and "error" not in seen
    assert seen["alpn"] == "h2"  # the worker speaks both and prefers h2
    assert transport.handshake.alpn == "h2" and transport.handshake.peer_cert is None


def test_a_large_reply_through_a_small_socket_buffer_arrives_whole(pki):
    """The socket takes part of the ciphertext at a time: the transport keeps the rest and
    the caller's kept bytes drive the retries (send_or_keep / flush_kept, as conn.py)."""
    contexts = ServerContexts(table(pki, ("a", ("a.example.com",), {})))
    reply = bytes(range(256)) * 16384  # 4 MiB
    got, seen, _ = serve_once(contexts, client_context(pki), "a.example.com", reply=reply, sndbuf=8192)
    assert seen.get("reply") == reply


def test_versions_are_bounded_as_configured(pki):
    contexts = ServerContexts(table(pki, ("a", ("a.example.com",), {"min_version": "v1.3"})))
    old = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    _, seen, _ = serve_once(contexts, old, "a.example.com")
    assert "error" in seen and "server_error" in seen
    _, seen, _ = serve_once(contexts, client_context(pki), "a.example.com")
    assert seen["version"] == "TLSv1.3"
    capped = ServerContexts(table(pki, ("a", ("a.example.com",), {"max_version": "v1.2"})))
    _, seen, _ = serve_once(capped, client_context(pki), "a.example.com")
    assert seen["version"] == "TLSv1.2"


def test_client_certificates_are_required_and_verified_against_the_ca(pki, tmp_path):
    contexts = ServerContexts(table(pki, ("a", ("a.example.com",), {"ca_certificate": "ca", "cert_required": True})))
    _, seen, _ = serve_once(contexts, client_context(pki), "a.example.com")
    assert "reply" not in seen or seen["reply"] != b"pong"  # no certificate: no exchange
    ctx = client_context(pki)
    ctx.load_cert_chain(*_files(pki["client"], tmp_path))
    got, seen, transport = serve_once(contexts, ctx, "a.example.com")
    assert seen["reply"] == b"pong" and transport.handshake.peer_cert is not None
    stranger = make_leaf(pki["other_ca"], "stranger", client=True)
    ctx = client_context(pki)
    ctx.load_cert_chain(*_files(stranger, tmp_path))
    _, seen, _ = serve_once(contexts, ctx, "a.example.com")
    assert seen.get("reply") != b"pong"


def test_unchanged_entries_keep_their_context_across_tables(pki):
    first = ServerContexts(table(pki, ("a", ("a.example.com",), {}), ("wild", ("*.example.com",), {})))
    second = ServerContexts(table(pki, ("a", ("a.example.com",), {}), ("wild", ("*.example.com",), {"min_version": "v1.3"})),
                            first)
    assert second.select("a.example.com") is first.select("a.example.com")
    assert second.select("b.example.com") is not first.select("b.example.com")


def test_a_table_without_tls_has_no_contexts(pki):
    assert not ServerContexts(table(pki))


def test_a_client_that_hangs_up_mid_handshake_is_an_end_of_stream(pki):
    contexts = ServerContexts(table(pki, ("a", ("a.example.com",), {})))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.sendall(b"\x16\x03\x01\x00\x05\x01\x00")  # the start of a ClientHello, then nothing
    theirs.close()
    transport = contexts.wrap(ours)
    assert transport.recv_into(bytearray(100)) == 0
    ours.close()


def test_garbage_instead_of_a_client_hello_fails_the_handshake(pki):
    contexts = ServerContexts(table(pki, ("a", ("a.example.com",), {})))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.sendall(b"\x16\x03\x01\x00\x10" + b"\xff" * 16)
    transport = contexts.wrap(ours)
    with pytest.raises(ssl.SSLError):
        transport.recv_into(bytearray(100))
    assert theirs.recv(100)[:1] == b"\x15"  # an alert told the client why
    ours.close()
    theirs.close()


def _files(issued, where):
    cert, key = where / f"{issued.cert.serial_number}.crt", where / f"{issued.cert.serial_number}.key"
    cert.write_text(issued.cert_pem)
    key.write_text(issued.key_pem)
    return str(cert), str(key)
