"""TLS origination in the worker without the worker: ClientContexts (one client context
per ClientTLS entry, reused across tables while unchanged) and the client-side
TLSTransport, handshaking with edge's own server-side one over a socketpair, both
non-blocking and driven in turn as the reactor drives them (no threads, no network)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import replace

import pytest

from edge.model import Certificate, ClientTLS, RouteTable, ServerTLS, Settings
from edge.worker.tls import ClientContexts, ServerContexts, TLSTransport
from tests.tlscerts import make_ca, make_leaf


@pytest.fixture(scope="module")
def pki():
    ca, clients = make_ca("upstream CA"), make_ca("client CA")
    return {"ca": ca, "clients": clients, "other_ca": make_ca("other CA"),
            "server": make_leaf(ca, "upstream.test"), "other": make_leaf(ca, "other.test"),
            "client": make_leaf(clients, "edge client", client=True)}


_open: list[socket.socket] = []


@pytest.fixture(autouse=True)
def close_sockets():
    yield
    while _open:
        _open.pop().close()


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    _open.extend((ours, theirs))
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


NAMES = ("ca", "clients", "client", "other", "other_ca", "server")


def table(pki, *client: ClientTLS) -> RouteTable:
    """Certificates in NAMES order; the upstream serves `server` for upstream.test and
    `other` for anything else, and asks for client certificates signed by `clients`."""
    certs = tuple(Certificate(f"default/{n}", pki[n].cert_pem, pki[n].key_pem) for n in NAMES)
    at = NAMES.index
    server = (ServerTLS("Host default/up", ("upstream.test",), at("server"), ca_certificate=at("clients")),
              ServerTLS("Host default/other", ("*",), at("other"), ca_certificate=at("clients")))
    return RouteTable(Settings(), (), (), (), (), certificates=certs, server_tls=server, client_tls=client)


def at(name: str) -> int:
    return NAMES.index(name)


def connect(pki, entry: ClientTLS, rounds: int = 50):
    """A client transport for `entry` and an upstream's server transport over a socketpair,
    handshaken. Returns (client, server); raises what the client's handshake raised."""
    t = table(pki, entry)
    origin = ClientContexts(t).origin(t, 0)
    ours, theirs = pair()
    client = TLSTransport(ours, origin.ctx, server_side=False, server_hostname=origin.sni)
    server = ServerContexts(t).wrap(theirs)
    for _ in range(rounds):
        done = client.do_handshake()
        try:
            server.recv_into(bytearray(16))
        except BlockingIOError:
            pass
        except ssl.SSLError:
            pass  # the upstream refused us: the client's next turn raises
        if done and server.handshake is not None:
            return client, server
    raise AssertionError("no handshake")


def exchange(client: TLSTransport, server: TLSTransport, request: bytes, reply: bytes) -> tuple[bytes, bytes]:
    assert client.send(request) == len(request)
    buf = bytearray(65536)
    n = server.recv_into(buf)
    got = bytes(buf[:n])
    assert server.send(reply) == len(reply)
    n = client.recv_into(buf)
    return got, bytes(buf[:n])


def subject(der: bytes | None) -> str | None:
    if der is None:
        return None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_the_null_context_handshakes_without_sni_certificate_or_checks(pki):
    client, server = connect(pki, ClientTLS("no-cert-upstream"))
    assert exchange(client, server, b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n") == \
        (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n")
    assert subject(client.handshake.peer_cert) == "CN=other.test"  # no SNI: the upstream's fallback
    assert server.handshake.peer_cert is None and client.handshake.alpn is None


def test_sni_alpn_and_the_client_certificate_reach_the_upstream(pki):
    entry = ClientTLS("TLSContext default/up", certificate=at("client"), ca_certificate=at("ca"),
                      sni="upstream.test", alpn_protocols=("http/1.1",))
    client, server = connect(pki, entry)
    assert subject(client.handshake.peer_cert) == "CN=upstream.test"
    assert subject(server.handshake.peer_cert) == "CN=edge client"
    assert client.handshake.alpn == "http/1.1"  # what compile kept is offered (the server also speaks h2)
    assert exchange(client, server, b"ping", b"pong") == (b"ping", b"pong")
    grpc_client, _ = connect(pki, replace(entry, alpn_protocols=("h2",)))  # a gRPC cluster's
    assert grpc_client.handshake.alpn == "h2"


def test_the_upstream_is_verified_against_ca_secret_only_and_never_by_name(pki):
    # the chain is checked: a certificate of another CA fails the handshake
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(pki, ClientTLS("TLSContext default/x", ca_certificate=at("other_ca"), sni="upstream.test"))
    # its name is not (Envoy without match_subject_alt_names): other.test for the SNI upstream.test
    client, _ = connect(pki, ClientTLS("TLSContext default/x", ca_certificate=at("ca"), sni="elsewhere.test"))
    assert subject(client.handshake.peer_cert) == "CN=other.test"


def test_versions_are_held_to(pki):
    client, _ = connect(pki, ClientTLS("TLSContext default/v", max_version="v1.2"))
    assert client.handshake.version == "TLSv1.2"
    client, _ = connect(pki, ClientTLS("TLSContext default/v", min_version="v1.3"))
    assert client.handshake.version == "TLSv1.3"


def test_an_upstream_that_closes_during_the_handshake_fails_it(pki):
    t = table(pki, ClientTLS("no-cert-upstream"))
    origin = ClientContexts(t).origin(t, 0)
    ours, theirs = pair()
    client = TLSTransport(ours, origin.ctx, server_side=False)
    assert client.do_handshake() is False  # the ClientHello is out
    assert theirs.recv(5)[:1] == b"\x16"
    theirs.shutdown(socket.SHUT_RDWR)
    with pytest.raises((ssl.SSLError, OSError)):
        client.do_handshake()


def test_contexts_are_made_once_and_kept_across_tables_while_unchanged(pki):
    a = ClientTLS("TLSContext default/a", sni="a.test")
    b = ClientTLS("TLSContext default/b", certificate=at("client"))
    first_table = table(pki, a, b)
    first = ClientContexts(first_table)
    oa, ob = first.origin(first_table, 0), first.origin(first_table, 1)
    assert oa is not ob and oa.sni == "a.test" and ob.sni is None
    # the next table: `a` the same (its pooled connections stay usable), `b` changed
    b2 = ClientTLS("TLSContext default/b", certificate=at("client"), min_version="v1.3")
    second_table = table(pki, b2, a)
    second = ClientContexts(second_table, first)
    assert second.origin(second_table, 1) is oa
    assert second.origin(second_table, 0) is not ob
    # a Router that kept these contexts asks with an equal table of its own: the same Origins
    third_table = table(pki, b2, a)
    assert third_table.client_tls is not second_table.client_tls
    assert second.origin(third_table, 1) is oa and second.origin(second_table, 1) is oa


def test_a_rotated_client_certificate_is_a_new_context(pki):
    entry = ClientTLS("TLSContext default/b", certificate=at("client"))
    old_table = table(pki, entry)
    old = ClientContexts(old_table)
    rotated = make_leaf(pki["clients"], "edge client", client=True)
    certs = list(old_table.certificates)
    certs[at("client")] = Certificate("default/client", rotated.cert_pem, rotated.key_pem)
    new_table = RouteTable(Settings(), (), (), (), (), certificates=tuple(certs), client_tls=(entry,))
    assert ClientContexts(new_table, old).origin(new_table, 0) is not old.origin(old_table, 0)


def test_an_entry_openssl_refuses_is_an_error_for_its_clusters_only(pki):
    t = table(pki, ClientTLS("TLSContext default/bad", cipher_suites=("NOT-A-CIPHER",)), ClientTLS("no-cert-upstream"))
    contexts = ClientContexts(t)
    with pytest.raises(ssl.SSLError, match="TLSContext default/bad"):
        contexts.origin(t, 0)
    assert contexts.origin(t, 1).ctx.verify_mode == ssl.CERT_NONE
    assert len(contexts.errors) == 1


def test_server_contexts_carry_the_client_ones(pki):
    t = table(pki, ClientTLS("no-cert-upstream"))
    first = ServerContexts(t)
    again = ServerContexts(t, first)
    assert again.client.origin(t, 0) is first.client.origin(t, 0)
