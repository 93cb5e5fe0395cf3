"""TLS origination (issue 18) on the compile side, without sockets: `service: https://`,
Mapping `tls` (a TLSContext's name, or `true`), what a TLSContext gives the client side
(secret, ca_secret, sni, versions, ciphers, ALPN), missing or unusable TLSContexts, TLS
clusters apart from cleartext ones, the certificates shared with termination, and a
deterministic table. The worker side (ClientContexts, the client TLSTransport) is in
tests/test_tls_client.py, the whole path in tests/integration/test_tls_origination.py."""

from __future__ import annotations

import random

import pytest

from edge import codec
from edge.resources.base import RawObject
from edge.resources.mapping import parse_service
from edge.supervisor.compile import compile
from tests.certgen import pki, secret_obj


@pytest.fixture(scope="session")
def certs():
    return pki()


def obj(kind, name, spec, ns="default"):
    return RawObject(kind, ns, name, "f.yaml", spec, {})


def mapping(name, service, prefix=None, ns="default", **spec):
    return obj("Mapping", name, {"prefix": prefix or f"/{name}/", "service": service, **spec}, ns)


def context(name, ns="default", **spec):
    return obj("TLSContext", name, spec, ns)


def errors(diags):
    return [(d.kind, d.name, d.field) for d in diags if d.severity == "error"]


def cluster_of(table, mapping_name, ns="default"):
    target = next(t for r in table.routes for t in r.targets if t.mapping == f"{ns}/{mapping_name}")
    return next(c for c in table.clusters if c.name == target.cluster)


def client_of(table, mapping_name, ns="default"):
    c = cluster_of(table, mapping_name, ns)
    return table.client_tls[c.tls] if c.tls >= 0 else None


def secrets(certs, ns="default"):
    return [secret_obj("client-cert", certs.leaf.cert_pem, certs.leaf.key_pem, ns),
            secret_obj("upstream-ca", certs.ca.cert_pem, "", ns)]


@pytest.mark.parametrize("text, host, port, scheme", [
    ("https://api.example.com", "api.example.com", 443, "https"),
    ("HTTPS://api.example.com:8443", "api.example.com", 8443, "https"),
    ("https://[::1]", "::1", 443, "https"),
    ("http://api.example.com", "api.example.com", 80, "http"),
    ("api.example.com", "api.example.com", 80, ""),
])
def test_service_schemes_and_their_default_ports(text, host, port, scheme):
    svc = parse_service(text)
    assert (svc.host, svc.port, svc.scheme) == (host, port, scheme)


def test_tls_without_a_port_defaults_to_443_as_in_emissary():
    assert parse_service("api.example.com", tls=True).port == 443
    assert parse_service("api.example.com:8080", tls=True).port == 8080


def test_service_https_originates_tls_with_emissarys_null_context():
    table, diags = compile([mapping("a", "https://10.0.0.1"), mapping("b", "https://10.0.0.2:8443")])
    assert diags == []
    a, b = cluster_of(table, "a"), cluster_of(table, "b")
    assert (a.name, a.port, a.endpoints[0].port) == ("cluster_10_0_0_1_443_otls", 443, 443)
    assert (b.name, b.port) == ("cluster_10_0_0_2_8443_otls", 8443)
    assert a.tls == b.tls == 0
    # no certificate, no verification of the upstream, no SNI, no ALPN: Envoy's UpstreamTlsContext
    # from Emissary's null context is empty
    (entry,) = table.client_tls
    assert (entry.name, entry.certificate, entry.ca_certificate, entry.sni, entry.alpn_protocols) == \
        ("no-cert-upstream", -1, -1, "", ())
    assert table.certificates == ()


def test_legacy_tls_true_is_tls_without_a_context_and_false_is_none():
    table, diags = compile([mapping("on", "10.0.0.1", tls=True), mapping("off", "10.0.0.1", tls=False)])
    assert diags == []
    assert cluster_of(table, "on").port == 443 and client_of(table, "on").name == "no-cert-upstream"
    assert cluster_of(table, "off").port == 80 and client_of(table, "off") is None


def test_a_tlscontext_gives_the_client_side_everything_it_says(certs):
    ctx = context("upstream", secret="client-cert", ca_secret="upstream-ca", sni="api.internal",
                  alpn_protocols="http/1.1", min_tls_version="v1.2", max_tls_version="v1.3",
                  cipher_suites=["ECDHE-ECDSA-AES128-GCM-SHA256"], ecdh_curves=["P-256"])
    table, diags = compile([*secrets(certs), ctx, mapping("m", "api.internal:8443", tls="upstream")])
    assert errors(diags) == []
    c = cluster_of(table, "m")
    assert c.name == "cluster_api_internal_8443_otls_upstream_default" and c.port == 8443
    entry = client_of(table, "m")
    assert entry.name == "TLSContext default/upstream"
    assert table.certificates[entry.certificate].name == "default/client-cert"
    assert table.certificates[entry.certificate].key_pem == certs.leaf.key_pem
    assert table.certificates[entry.ca_certificate].name == "default/upstream-ca"
    assert table.certificates[entry.ca_certificate].chain_pem == certs.ca.cert_pem
    assert (entry.sni, entry.alpn_protocols, entry.min_version, entry.max_version) == \
        ("api.internal", ("http/1.1",), "v1.2", "v1.3")
    assert entry.cipher_suites == ("ECDHE-ECDSA-AES128-GCM-SHA256",) and entry.ecdh_curves == ("prime256v1",)


def test_without_ca_secret_the_upstream_is_not_verified_as_in_envoy(certs):
    table, diags = compile([*secrets(certs), context("c", sni="x.test"), mapping("m", "10.0.0.1", tls="c")])
    assert errors(diags) == []
    assert client_of(table, "m").ca_certificate == -1 and client_of(table, "m").certificate == -1


def test_a_missing_tlscontext_drops_the_mapping_with_an_error_naming_spec_tls():
    table, diags = compile([mapping("m", "10.0.0.1", tls="nowhere"), mapping("ok", "10.0.0.2")])
    assert [t.mapping for r in table.routes for t in r.targets] == ["default/ok"]
    (d,) = [d for d in diags if d.severity == "error"]
    assert (d.name, d.field) == ("m", "spec.tls") and "TLSContext nowhere not found" in d.message
    assert table.client_tls == ()


@pytest.mark.parametrize("ctx_spec, words", [
    ({"secret": "no-such-secret"}, "field spec.secret: secret default/no-such-secret not found"),
    ({"secret": "upstream-ca"}, "no tls.key"),  # a certificate without its key cannot be presented
    ({"ca_secret": "no-such-ca"}, "field spec.ca_secret: secret default/no-such-ca not found"),
    ({"min_tls_version": "1.2"}, "is invalid"),
])
def test_a_tlscontext_that_cannot_be_used_drops_the_mapping(certs, ctx_spec, words):
    table, diags = compile([*secrets(certs), context("c", **ctx_spec), mapping("m", "10.0.0.1", tls="c")])
    assert not table.routes and table.client_tls == ()
    d = next(d for d in diags if d.kind == "Mapping")
    assert (d.severity, d.field) == ("error", "spec.tls") and words in d.message, d.message


@pytest.mark.parametrize("value", [7, ["ctx"], "two words"])
def test_a_tls_value_that_is_no_name_is_an_error(value):
    table, diags = compile([mapping("m", "10.0.0.1", tls=value)])
    assert errors(diags) == [("Mapping", "m", "spec.tls")] and not table.routes


def test_an_unknown_scheme_is_an_error():
    table, diags = compile([mapping("m", "ftp://10.0.0.1")])
    assert errors(diags) == [("Mapping", "m", "spec.service")]


def test_http_scheme_with_a_context_originates_tls_with_a_warning_as_emissary(certs):
    table, diags = compile([*secrets(certs), context("c"), mapping("m", "http://10.0.0.1", tls="c")])
    assert client_of(table, "m").name == "TLSContext default/c"
    assert cluster_of(table, "m").port == 443  # ircluster.py: no port, TLS originated: 443, whatever the scheme
    assert [(d.severity, d.field) for d in diags if d.kind == "Mapping"] == [("warning", "spec.tls")]


def test_tls_clusters_are_apart_from_cleartext_and_from_each_other(certs):
    table, diags = compile([
        *secrets(certs), context("one", sni="one.test"), context("two", sni="two.test"),
        mapping("plain", "10.0.0.1:8443"), mapping("https", "https://10.0.0.1:8443"),
        mapping("one", "10.0.0.1:8443", tls="one"), mapping("one-again", "10.0.0.1:8443", tls="one"),
        mapping("two", "10.0.0.1:8443", tls="two"),
    ])
    assert errors(diags) == []
    names = {m: cluster_of(table, m).name for m in ("plain", "https", "one", "one-again", "two")}
    assert len({names["plain"], names["https"], names["one"], names["two"]}) == 4
    assert names["one"] == names["one-again"]
    assert cluster_of(table, "plain").tls == -1
    assert client_of(table, "one").sni == "one.test" and client_of(table, "two").sni == "two.test"
    assert len(table.client_tls) == 3  # one per distinct client side in use


def test_same_named_tlscontexts_of_two_namespaces_are_two_clusters(certs):
    table, diags = compile([
        *secrets(certs, "a"), *secrets(certs, "b"),
        context("ctx", "a", sni="a.test"), context("ctx", "b", sni="b.test"),
        mapping("m", "10.0.0.1", ns="a", tls="ctx"), mapping("m", "10.0.0.1", ns="b", prefix="/b/", tls="ctx"),
    ])
    assert errors(diags) == []
    assert client_of(table, "m", "a").sni == "a.test" and client_of(table, "m", "b").sni == "b.test"
    assert cluster_of(table, "m", "a").name != cluster_of(table, "m", "b").name


def test_a_tlscontext_of_another_namespace_is_found_by_name_as_emissary_names_them(certs):
    table, diags = compile([*secrets(certs, "tls"), context("shared", "tls", secret="client-cert"),
                            mapping("m", "10.0.0.1", ns="apps", tls="shared")])
    assert errors(diags) == []
    assert client_of(table, "m", "apps").name == "TLSContext tls/shared"
    assert table.certificates[client_of(table, "m", "apps").certificate].name == "tls/client-cert"


def test_termination_and_origination_share_the_certificates_with_the_right_indexes(certs):
    objs = [
        *secrets(certs),
        secret_obj("a-cert", certs.leaf.cert_pem, certs.leaf.key_pem),
        obj("Host", "a", {"hostname": "a.example.com", "tlsSecret": {"name": "a-cert"},
                          "tls": {"ca_secret": "upstream-ca"}}),
        context("up", secret="client-cert", ca_secret="upstream-ca"),
        mapping("m", "10.0.0.1", hostname="a.example.com", tls="up"),
    ]
    table, diags = compile(objs)
    assert errors(diags) == []
    names = [c.name for c in table.certificates]
    assert names == sorted(names) == ["default/a-cert", "default/client-cert", "default/upstream-ca"]
    (server,) = table.server_tls
    assert table.certificates[server.certificate].name == "default/a-cert"
    assert table.certificates[server.ca_certificate].name == "default/upstream-ca"
    entry = client_of(table, "m")
    assert table.certificates[entry.certificate].name == "default/client-cert"
    assert table.certificates[entry.ca_certificate].key_pem == ""  # a CA's key is never shipped


def test_alpn_protocols_edge_does_not_speak_upstream_are_noted(certs):
    table, diags = compile([context("c", alpn_protocols="h2,http/1.1"), mapping("m", "10.0.0.1", tls="c")])
    assert client_of(table, "m").alpn_protocols == ("http/1.1",)  # what edge speaks to an HTTP/1 upstream
    assert ("notice", "TLSContext", "spec.alpn_protocols") in [(d.severity, d.kind, d.field) for d in diags]


def test_an_sni_no_mapping_uses_is_noted():
    _, diags = compile([context("c", sni="x.test")])
    assert ("notice", "spec.sni") in [(d.severity, d.field) for d in diags]
    _, diags = compile([context("c", sni="x.test"), mapping("m", "10.0.0.1", tls="c")])
    assert "spec.sni" not in [d.field for d in diags]


@pytest.mark.parametrize("explicit", [{"tls": "bool:true"}, {"tls": "", "serviceScheme": "http://"}, {}])
def test_v2_explicit_tls_is_taken_and_changes_nothing(explicit):
    table, diags = compile([mapping("m", "https://10.0.0.1", v2ExplicitTLS=explicit)])
    assert diags == [] and client_of(table, "m").name == "no-cert-upstream"
    table, diags = compile([mapping("m", "10.0.0.1", v2ExplicitTLS=explicit)])
    assert diags == [] and client_of(table, "m") is None


@pytest.mark.parametrize("explicit, field", [
    ({"tls": "yes"}, "spec.v2ExplicitTLS.tls"), ({"serviceScheme": "ftp://"}, "spec.v2ExplicitTLS.serviceScheme"),
    ("bool:true", "spec.v2ExplicitTLS"),
])
def test_v2_explicit_tls_is_validated_as_emissarys_crd(explicit, field):
    _, diags = compile([mapping("m", "10.0.0.1", v2ExplicitTLS=explicit)])
    assert errors(diags) == [("Mapping", "m", field)]


def test_the_table_is_deterministic(certs):
    objs = [*secrets(certs), context("one", sni="one.test", secret="client-cert"),
            context("two", ca_secret="upstream-ca"),
            *(mapping(f"m{i}", f"10.0.0.{i % 3}:{8000 + i % 2}", tls=["one", "two", True, None][i % 4])
              for i in range(12)),
            mapping("h", "https://10.0.0.9")]
    first, _ = compile(objs)
    assert first.client_tls and any(c.tls >= 0 for c in first.clusters)
    for seed in range(5):
        shuffled = list(objs)
        random.Random(seed).shuffle(shuffled)
        again, _ = compile(shuffled)
        assert codec.encode(again) == codec.encode(first)
    assert codec.decode(codec.encode(first)) == first
