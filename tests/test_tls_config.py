"""The compile side of TLS termination (issue 18), table-driven and without sockets:
Secrets (the files source reads kubectl's YAML), Host tlsSecret / tls / tlsContext,
requestPolicy.insecure, TLSContexts, client certificates, HTTPS Listeners, per-object
diagnostics for every bad input, and a deterministic table."""

from __future__ import annotations

import base64

import pytest
import yaml

from edge import codec
from edge.resources import kubernetes as k8s
from edge.resources.base import RawObject
from edge.resources.listener import parse_listener
from edge.resources.base import Invalid
from edge.supervisor.compile import CompileOptions, compile
from edge.supervisor.sources import files
from tests.certgen import b64, kubectl_secret, pki, secret_obj


@pytest.fixture(scope="session")
def certs():
    return pki()


def obj(kind, name, spec, ns="default", source="f.yaml", labels=None):
    return RawObject(kind, ns, name, source, spec, labels or {})


def host(name, hostname, ns="default", **spec):
    return obj("Host", name, {"hostname": hostname, **spec}, ns)


def tls_host(name, hostname, secret, ns="default", **spec):
    return host(name, hostname, ns, tlsSecret={"name": secret}, **spec)


def mapping(name, prefix="/", hostname="*", **spec):
    return obj("Mapping", name, {"prefix": prefix, "service": "10.0.0.1:80", "hostname": hostname, **spec})


def leaf_secret(certs, name="a-cert", ns="default"):
    return secret_obj(name, certs.leaf.cert_pem, certs.leaf.key_pem, ns)


def errors(diags):
    return [(d.kind, d.name, d.field) for d in diags if d.severity == "error"]


def vhost(table, name):
    return next(v for v in table.virtual_hosts if v.name == name)


# ---- Secrets through the files source ------------------------------------------------------

def test_kubectls_secret_yaml_in_the_config_directory_terminates_a_hosts_tls(tmp_path, certs):
    # exactly what `kubectl create secret tls a-cert --cert=c --key=k --dry-run=client -o yaml` prints
    (tmp_path / "secret.yaml").write_text(yaml.safe_dump(kubectl_secret("a-cert", certs.leaf.cert_pem,
                                                                        certs.leaf.key_pem)))
    (tmp_path / "edge.yaml").write_text("""
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: a}
spec: {hostname: A.Example.com, tlsSecret: {name: a-cert}, ambassador_id: [blue]}
---
apiVersion: v1
kind: Secret
metadata: {name: plain, namespace: other}
type: Opaque
stringData: {tls.crt: "not used", password: hunter2}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
""")
    snapshot = files.load([str(tmp_path)])
    assert snapshot.diagnostics == ()
    secrets = {o.name: o for o in snapshot.objects if o.kind == "Secret"}
    assert sorted(secrets) == ["a-cert", "plain"]
    assert "password" not in secrets["plain"].spec["stringData"]  # only what TLS reads is kept
    # Secrets are read by reference: the ambassador_id does not select them
    table, diags = compile(snapshot.objects, CompileOptions(ambassador_id="blue"))
    assert errors(diags) == []
    assert [(c.name, c.chain_pem, c.key_pem) for c in table.certificates] == [
        ("default/a-cert", certs.leaf.cert_pem, certs.leaf.key_pem)]
    (st,) = table.server_tls
    assert (st.name, st.server_names, st.certificate, st.ca_certificate) == ("Host default/a", ("a.example.com",), 0, -1)
    assert vhost(table, "default/a").tls == 0


@pytest.mark.parametrize("shape", ["data", "stringData", "pem-in-data", "wrapped-base64"])
def test_secret_shapes_that_are_read(certs, shape):
    crt, key = certs.leaf.cert_pem, certs.leaf.key_pem
    data = {"data": {"data": {"tls.crt": b64(crt), "tls.key": b64(key)}},
            "stringData": {"stringData": {"tls.crt": crt, "tls.key": key}},
            "pem-in-data": {"data": {"tls.crt": crt, "tls.key": key}},  # Emissary takes PEM where base64 goes
            "wrapped-base64": {"data": {"tls.crt": "\n".join(b64(crt)[i:i + 76] for i in range(0, len(b64(crt)), 76)),
                                        "tls.key": b64(key)}}}[shape]
    secret = RawObject("Secret", "default", "a-cert", "f.yaml", {"type": "kubernetes.io/tls", **data}, {}, "v1")
    table, diags = compile([secret, tls_host("a", "a.example.com", "a-cert")])
    assert errors(diags) == []
    assert table.certificates[0].chain_pem == crt and table.certificates[0].key_pem == key


# ---- bad Secrets: the Host is dropped (as Emissary disables it), its routes stay ------------

def _bad(certs, case):
    crt, key = certs.leaf.cert_pem, certs.leaf.key_pem
    return {
        "missing": (None, "secret default/a-cert not found"),
        "bad-base64": (RawObject("Secret", "default", "a-cert", "f.yaml", {"type": "kubernetes.io/tls", "data": {
            "tls.crt": "%%%not base64%%%", "tls.key": b64(key)}}, {}, "v1"), "data.tls.crt: is not valid base64"),
        "not-pem": (secret_obj("a-cert", "just some text", key), "tls.crt is not PEM"),
        "garbled-pem": (secret_obj("a-cert", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", key),
                        "tls.crt holds no readable PEM certificate"),
        "key-not-pem": (secret_obj("a-cert", crt, "nope"), "tls.key is not PEM"),
        "key-mismatch": (secret_obj("a-cert", crt, certs.other_key), "tls.key does not match the certificate"),
        "no-key": (secret_obj("a-cert", crt, None), "has no tls.key"),
        "no-cert": (secret_obj("a-cert", None, key), "has no tls.crt"),
        "wrong-type": (secret_obj("a-cert", crt, key, type_="kubernetes.io/dockerconfigjson"),
                       "field type: Secrets of type 'kubernetes.io/dockerconfigjson' are not read"),
    }[case]


@pytest.mark.parametrize("case", ["missing", "bad-base64", "not-pem", "garbled-pem", "key-not-pem", "key-mismatch",
                                  "no-key", "no-cert", "wrong-type"])
def test_a_bad_or_missing_secret_is_an_error_on_the_host_naming_its_field(certs, case):
    secret, words = _bad(certs, case)
    objs = [tls_host("a", "a.example.com", "a-cert"), mapping("m", "/a/", "a.example.com"), mapping("any", "/")]
    table, diags = compile(objs + ([secret] if secret else []))
    (d,) = [d for d in diags if d.severity == "error"]
    assert (d.kind, d.namespace, d.name, d.field) == ("Host", "default", "a", "spec.tlsSecret.name")
    assert words in d.message and "Host not served" in d.message, d.message
    assert d.format().startswith("error: f.yaml: Host default/a field spec.tlsSecret.name: secret default/a-cert")
    assert "BEGIN" not in d.message  # no key material in a diagnostic
    # the Host is gone; its Mappings are still in the table, served (as Emissary's synthesized
    # cleartext Host does once no Host is left) by the implicit "*"
    assert sorted(r.path for r in table.routes) == ["/", "/a/"]
    assert [(v.name, v.tls, v.insecure_action) for v in table.virtual_hosts] == [("*", -1, "Route")]
    assert table.server_tls == () and table.certificates == ()


def test_rsa_keys_are_checked_against_their_certificate_too(certs):
    from tests.certgen import make_ca, make_leaf
    _, signer = make_ca()
    leaf = make_leaf(["r.example.com"], signer, rsa_bits=1024)
    other = make_leaf(["r.example.com"], signer, rsa_bits=1024)
    for key, ok in ((leaf.key_pem, True), (other.key_pem, False), (certs.leaf.key_pem, False)):
        table, diags = compile([secret_obj("r", leaf.cert_pem, key), tls_host("r", "r.example.com", "r")])
        assert (errors(diags) == []) is ok
        assert len(table.server_tls) == int(ok)


def test_a_dropped_host_leaves_the_other_hosts_and_their_tls(certs):
    table, diags = compile([leaf_secret(certs), tls_host("a", "a.example.com", "a-cert"),
                            tls_host("b", "b.example.com", "missing"), mapping("m", "/")])
    assert errors(diags) == [("Host", "b", "spec.tlsSecret.name")]
    assert [v.name for v in table.virtual_hosts] == ["default/a"]
    assert [st.name for st in table.server_tls] == ["Host default/a"]


# ---- requestPolicy.insecure ------------------------------------------------------------------

@pytest.mark.parametrize("with_tls, policy, action", [
    (True, None, "Redirect"),  # Emissary's default
    (False, None, "Route"),  # no TLS of its own: edge routes (Emissary would Redirect; a notice says so)
    (True, {"action": "Redirect"}, "Redirect"),
    (True, {"action": "Route"}, "Route"),
    (True, {"action": "Reject"}, "Reject"),
    (False, {"action": "Redirect"}, "Redirect"),
    (False, {"action": "Reject"}, "Reject"),
    (True, {"action": "reject"}, "Reject"),
    (True, {}, "Redirect"),
])
def test_insecure_action_defaults_and_each_value(certs, with_tls, policy, action):
    spec = {"requestPolicy": {"insecure": policy}} if policy is not None else {}
    h = tls_host("a", "a.example.com", "a-cert", **spec) if with_tls else host("a", "a.example.com", **spec)
    table, diags = compile([leaf_secret(certs), h])
    assert errors(diags) == []
    assert vhost(table, "default/a").insecure_action == action
    noticed = [d for d in diags if d.field == "spec.requestPolicy.insecure.action"]
    assert bool(noticed) == (not with_tls and not (policy or {}).get("action"))


@pytest.mark.parametrize("port, expected, warned", [(8080, 8080, False), (8081, 8081, True), (-1, -1, False)])
def test_additional_port(certs, port, expected, warned):
    table, diags = compile([leaf_secret(certs), tls_host("a", "a.example.com", "a-cert", requestPolicy={
        "insecure": {"action": "Route", "additionalPort": port}})])
    assert errors(diags) == []
    assert vhost(table, "default/a").insecure_additional_port == expected
    assert any(d.field == "spec.requestPolicy.insecure.additionalPort" for d in diags) is warned


# ---- field validation: every error names the object and field --------------------------------

@pytest.mark.parametrize("spec, field, words", [
    ({"requestPolicy": {"insecure": {"action": "Deny"}}}, "spec.requestPolicy.insecure.action", "one of"),
    ({"requestPolicy": {"insecure": {"additionalPort": 70000}}}, "spec.requestPolicy.insecure.additionalPort",
     "at most"),
    ({"requestPolicy": {"insecure": {"additionalPort": 0}}}, "spec.requestPolicy.insecure.additionalPort", "port"),
    ({"requestPolicy": "Redirect"}, "spec.requestPolicy", "mapping"),
    ({"tls": {"min_tls_version": "1.2"}}, "spec.tls.min_tls_version", "v1.0, v1.1, v1.2, v1.3"),
    ({"tls": {"maxTlsVersion": "v1.4"}}, "spec.tls.max_tls_version", "v1.3"),
    ({"tls": {"min_tls_version": "v1.3", "max_tls_version": "v1.2"}}, "spec.tls.min_tls_version", "above"),
    ({"tls": {"cipher_suites": ["NOT-A-CIPHER"]}}, "spec.tls.cipher_suites[0]", "unknown cipher"),
    ({"tls": {"cipher_suites": "ECDHE-RSA-AES128-GCM-SHA256"}}, "spec.tls.cipher_suites", "list"),
    ({"tls": {"ecdh_curves": ["P-999"]}}, "spec.tls.ecdh_curves[0]", "unknown curve"),
    ({"tls": {"alpn_protocols": 7}}, "spec.tls.alpn_protocols", "comma-separated"),
    ({"tls": {"alpn_protocols": "h2,,http/1.1"}}, "spec.tls.alpn_protocols", "bad protocol"),
    ({"tls": {"cert_required": "maybe"}}, "spec.tls.cert_required", "true or false"),
    ({"tls": {"cert_required": True}}, "spec.tls.ca_secret", "cert_required needs ca_secret"),
    ({"tls": {"cert_chain_file": "/etc/c.pem"}}, "spec.tls.cert_chain_file", "files"),
    ({"tls": {"cacertChainFile": "/etc/ca.pem"}}, "spec.tls.cacert_chain_file", "files"),
    ({"tls": {"crl_secret": "crl"}}, "spec.tls.crl_secret", "revocation"),
    ({"tls": {"ca_secret": "missing-ca"}}, "spec.tls.ca_secret", "secret default/missing-ca not found"),
    ({"tls": {"min_tls_version": "v1.2"}, "tlsContext": {"name": "ctx"}}, "spec.tlsContext", "both"),
    ({"tlsContext": {"name": "nowhere"}}, "spec.tlsContext.name", "TLSContext default/nowhere not found"),
    ({"tlsContext": {}}, "spec.tlsContext.name", "required"),
    ({"tls": ["v1.2"]}, "spec.tls", "mapping"),
])
def test_invalid_host_tls_fields_drop_the_host_with_an_error_naming_the_field(certs, spec, field, words):
    table, diags = compile([leaf_secret(certs), tls_host("bad", "a.example.com", "a-cert", **spec),
                            host("good", "b.example.com")])
    (d,) = [d for d in diags if d.severity == "error"]
    assert (d.kind, d.name, d.field) == ("Host", "bad", field), d
    assert words in d.message, d.message
    assert [v.name for v in table.virtual_hosts] == ["default/good"]


@pytest.mark.parametrize("spec, field, severity, words", [
    ({"tls": {"redirect_cleartext_from": 8080}}, "spec.tls.redirect_cleartext_from", "warning", "ignored"),
    ({"tls": {"sni": "x"}}, "spec.tls.sni", "notice", "origination"),
    ({"tls": {"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}}, "spec.tls.cipher_suites[0]", "warning", "TLS 1.3"),
    ({"tls": {"what": 1}}, "spec.tls.what", "warning", "ignored"),
    ({"acmeProvider": {"email": "a@b"}}, "spec.acmeProvider", "notice", "no ACME client"),
    ({"acmeProvider": {"authority": "none"}}, None, None, None),
    ({"previewUrl": {"enabled": True}}, "spec.previewUrl", "notice", "ignored"),
])
def test_host_fields_served_with_a_warning_or_notice(certs, spec, field, severity, words):
    table, diags = compile([leaf_secret(certs), tls_host("a", "a.example.com", "a-cert", **spec)])
    assert errors(diags) == []
    assert vhost(table, "default/a").tls == 0
    said = [d for d in diags if d.field == field]
    if field is None:
        assert [d for d in diags if d.field.startswith("spec.acme")] == []
    else:
        assert [d.severity for d in said] == [severity] and words in said[0].message


@pytest.mark.parametrize("spec, field", [
    ({"tls": {"min_tls_version": "v1.2"}}, "spec.tls"),
    ({"tlsContext": {"name": "ctx"}}, "spec.tlsContext"),
    ({"acmeProvider": {"email": "a@b"}}, "spec.acmeProvider"),
    ({"tlsSecret": {}}, "spec.tlsSecret.name"),
])
def test_tls_without_tlssecret_is_no_tls_with_a_warning(certs, spec, field):
    """Emissary terminates TLS for a Host only when tlsSecret names a Secret."""
    table, diags = compile([leaf_secret(certs), host("a", "a.example.com", **spec),
                            obj("TLSContext", "ctx", {"secret": "a-cert"})])
    assert errors(diags) == []
    assert vhost(table, "default/a").tls == -1 and table.server_tls == ()
    assert [d.severity for d in diags if d.field == field] == ["warning"]


# ---- inline tls settings ---------------------------------------------------------------------

def test_inline_tls_settings_become_the_server_tls(certs):
    table, diags = compile([leaf_secret(certs), tls_host("a", "a.example.com:8443", "a-cert", tls={
        "minTlsVersion": "v1.2", "max_tls_version": "v1.3", "alpn_protocols": "h2, http/1.1",
        "cipher_suites": ["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]", "ECDHE-RSA-AES256-GCM-SHA384"],
        "ecdhCurves": ["X25519", "P-256"]})])
    assert errors(diags) == []
    (st,) = table.server_tls
    assert st.server_names == ("a.example.com",)  # SNI carries no port (Emissary's Host.sni)
    assert (st.min_version, st.max_version, st.alpn_protocols) == ("v1.2", "v1.3", ("h2", "http/1.1"))
    assert st.cipher_suites == ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
                                "ECDHE-RSA-AES256-GCM-SHA384")
    assert st.ecdh_curves == ("X25519", "prime256v1")  # OpenSSL's name for Envoy's P-256


# ---- client certificates ------------------------------------------------------------------

@pytest.mark.parametrize("ca, required, expected_required", [
    (lambda c: secret_obj("ca", c.ca.cert_pem, type_="Opaque"), True, True),  # kubectl create secret generic
    (lambda c: secret_obj("ca", None, type_="Opaque", extra={"ca.crt": b64(c.ca.cert_pem)}), False, False),
    (lambda c: secret_obj("ca", c.ca.cert_pem, c.ca.key_pem), None, False),  # a tls Secret: its key is not shipped
    # Emissary reads a cert_required key in the CA Secret, and it wins
    (lambda c: secret_obj("ca", c.ca.cert_pem, type_="Opaque", extra={"cert_required": b64("true")}), None, True),
])
def test_ca_secret_and_cert_required(certs, ca, required, expected_required):
    tls = {"ca_secret": "ca", **({"cert_required": required} if required is not None else {})}
    table, diags = compile([leaf_secret(certs), ca(certs), tls_host("a", "a.example.com", "a-cert", tls=tls)])
    assert errors(diags) == []
    (st,) = table.server_tls
    assert [c.name for c in table.certificates] == ["default/a-cert", "default/ca"]
    ca_cert = table.certificates[st.ca_certificate]
    assert (ca_cert.name, ca_cert.chain_pem, ca_cert.key_pem) == ("default/ca", certs.ca.cert_pem, "")
    assert st.cert_required is expected_required


@pytest.mark.parametrize("ca_spec, words", [
    (lambda c: secret_obj("ca", "not pem", type_="Opaque"), "tls.crt is not PEM"),
    (lambda c: secret_obj("ca", None, type_="Opaque", extra={"other": b64("x")}), "neither tls.crt nor ca.crt"),
    (lambda c: None, "secret default/ca not found"),
])
def test_a_bad_ca_secret_drops_the_host(certs, ca_spec, words):
    ca = ca_spec(certs)
    table, diags = compile([leaf_secret(certs), tls_host("a", "a.example.com", "a-cert", tls={"ca_secret": "ca"})]
                           + ([ca] if ca else []))
    (d,) = [d for d in diags if d.severity == "error"]
    assert (d.name, d.field) == ("a", "spec.tls.ca_secret") and words in d.message


# ---- TLSContexts ----------------------------------------------------------------------------

def test_a_tlscontext_with_hosts_terminates_tls_for_them_without_a_host(certs):
    table, diags = compile([secret_obj("wild", certs.wildcard.cert_pem, certs.wildcard.key_pem, ns="certs"),
                            obj("TLSContext", "ctx", {"hosts": ["*.Example.com", "example.com"],
                                                      "secret": "wild.certs", "min_tls_version": "v1.2",
                                                      "alpn_protocols": "http/1.1"}),
                            mapping("m", "/")])
    assert errors(diags) == []
    (st,) = table.server_tls
    assert (st.name, st.server_names, st.min_version, st.alpn_protocols) == (
        "TLSContext default/ctx", ("*.example.com", "example.com"), "v1.2", ("http/1.1",))
    assert table.certificates[st.certificate].name == "certs/wild"  # secret: name.namespace
    assert [(v.name, v.tls, v.insecure_action) for v in table.virtual_hosts] == [("*", -1, "Route")]
    assert [lst.protocol for lst in table.listeners] == ["HTTPS"]  # the default Listener turns HTTPS
    assert any(d.severity == "notice" and "HTTPS" in d.message for d in diags)


@pytest.mark.parametrize("spec, field, words", [
    ({"hosts": ["a.example.com"]}, "spec.secret", "is required"),
    ({"hosts": ["a.example.com"], "secret": "nope"}, "spec.secret", "secret default/nope not found"),
    ({"hosts": ["a.example.com"], "secret": "a-cert", "ca_secret": "nope"}, "spec.ca_secret", "not found"),
    ({"hosts": ["a b"], "secret": "a-cert"}, "spec.hosts[0]", "DNS name"),
    ({"hosts": "a.example.com", "secret": "a-cert", "min_tls_version": "TLSv1.2"}, "spec.min_tls_version", "v1.2"),
    ({"hosts": ["a.example.com"], "secret": "a-cert", "private_key_file": "/k"}, "spec.private_key_file", "files"),
    ({"hosts": ["a.example.com"], "secret": "a-cert.default", "secret_namespacing": False}, "spec.secret",
     "secret default/a-cert.default not found"),
])
def test_invalid_tlscontexts_are_errors_naming_the_field(certs, spec, field, words):
    table, diags = compile([leaf_secret(certs), obj("TLSContext", "ctx", spec)])
    (d,) = [d for d in diags if d.severity == "error"]
    assert (d.kind, d.name, d.field) == ("TLSContext", "ctx", field) and words in d.message, d
    assert table.server_tls == ()


def test_a_tlscontext_without_hosts_terminates_nothing(certs):
    table, diags = compile([leaf_secret(certs), obj("TLSContext", "origination", {"secret": "a-cert", "sni": "x"})])
    assert errors(diags) == [] and table.server_tls == ()
    assert {d.field for d in diags} >= {"spec.hosts", "spec.sni"}


def test_a_host_uses_the_tlscontext_it_names(certs):
    ctx = obj("TLSContext", "shared", {"hosts": ["a.example.com", "b.example.com"], "secret": "a-cert",
                                       "min_tls_version": "v1.3", "alpn_protocols": "h2,http/1.1"})
    table, diags = compile([leaf_secret(certs), ctx, tls_host("a", "a.example.com", "a-cert", tlsContext={"name": "shared"}),
                            tls_host("b", "b.example.com", "a-cert", tlsContext={"name": "shared"})])
    assert errors(diags) == [] and [d for d in diags if d.severity == "warning"] == []
    # one ServerTLS per Host (not one for the TLSContext too), sharing one Certificate
    assert [(st.name, st.server_names, st.min_version) for st in table.server_tls] == [
        ("Host default/a", ("a.example.com",), "v1.3"), ("Host default/b", ("b.example.com",), "v1.3")]
    assert [c.name for c in table.certificates] == ["default/a-cert"]
    assert [vhost(table, n).tls for n in ("default/a", "default/b")] == [0, 1]


def test_tlscontext_reference_rules(certs):
    other = secret_obj("other-cert", certs.wildcard.cert_pem, certs.wildcard.key_pem)
    table, diags = compile([
        leaf_secret(certs), other,
        obj("TLSContext", "mismatch", {"secret": "other-cert"}),
        obj("TLSContext", "elsewhere", {"hosts": ["z.example.com"], "secret": "a-cert"}),
        obj("TLSContext", "c-context", {"min_tls_version": "v1.2"}),  # Emissary's implicit <Host>-context
        obj("TLSContext", "broken", {"min_tls_version": "9"}),
        tls_host("a", "a.example.com", "a-cert", tlsContext={"name": "mismatch"}),
        tls_host("b", "a.example.com", "a-cert", tlsContext={"name": "elsewhere"}),
        tls_host("c", "c.example.com", "a-cert"),
        tls_host("d", "d.example.com", "a-cert", tlsContext={"name": "broken"}),
    ])
    by = {(d.name, d.severity): d for d in diags if d.kind == "Host" and d.severity in ("error", "warning", "notice")}
    assert "secret info mismatch" in by[("a", "error")].message and by[("a", "error")].field == "spec.tlsContext.name"
    # hosts that do not name the Host: Emissary reports it and uses the TLSContext anyway
    assert "do not name" in by[("b", "warning")].message
    assert "c-context" in by[("c", "notice")].message
    assert "is invalid" in by[("d", "error")].message
    assert [st.name for st in table.server_tls] == ["Host default/b", "Host default/c"]
    assert table.server_tls[1].min_version == "v1.2"
    # a TLSContext a Host names is that Host's, never a second entry of its own
    assert not any(st.name.startswith("TLSContext") for st in table.server_tls)


# ---- one entry per server name, dedup, determinism -------------------------------------------

def test_two_entries_for_one_name_the_first_by_name_wins(certs):
    table, diags = compile([leaf_secret(certs), secret_obj("w", certs.wildcard.cert_pem, certs.wildcard.key_pem),
                            tls_host("b", "a.example.com", "w"), tls_host("a", "a.example.com", "a-cert"),
                            obj("TLSContext", "ctx", {"hosts": ["a.example.com", "x.example.com"], "secret": "w"})])
    assert errors(diags) == [("Host", "b", "spec.hostname"), ("TLSContext", "ctx", "spec.hosts")]
    assert [(st.name, st.server_names) for st in table.server_tls] == [
        ("Host default/a", ("a.example.com",)), ("TLSContext default/ctx", ("x.example.com",))]
    assert vhost(table, "default/b").tls == -1 and vhost(table, "default/b").insecure_action == "Redirect"


def test_two_hosts_asking_for_the_very_same_tls_share_it_without_an_error(certs):
    table, diags = compile([leaf_secret(certs), tls_host("a", "a.example.com", "a-cert"),
                            tls_host("b", "a.example.com", "a-cert",
                                     mappingSelector={"matchLabels": {"team": "b"}})])
    assert errors(diags) == []
    assert [st.name for st in table.server_tls] == ["Host default/a"]
    assert vhost(table, "default/a").tls == vhost(table, "default/b").tls == 0


def _config(certs):
    return [leaf_secret(certs, "z-cert"), leaf_secret(certs), secret_obj("ca", certs.ca.cert_pem, type_="Opaque"),
            tls_host("z", "z.example.com", "z-cert"), tls_host("a", "a.example.com", "a-cert"),
            tls_host("b", "b.example.com", "a-cert", tls={"ca_secret": "ca", "cert_required": True}),
            obj("TLSContext", "t", {"hosts": ["t.example.com"], "secret": "z-cert"}),
            mapping("m", "/", "*")]


def test_dedup_order_and_the_same_bytes_every_time(certs):
    table, _ = compile(_config(certs))
    assert [c.name for c in table.certificates] == ["default/a-cert", "default/ca", "default/z-cert"]
    assert [st.name for st in table.server_tls] == ["Host default/a", "Host default/b", "Host default/z",
                                                    "TLSContext default/t"]
    assert [st.certificate for st in table.server_tls] == [0, 0, 2, 2]
    payload = codec.encode(table)
    assert codec.encode(compile(list(reversed(_config(certs))))[0]) == payload
    assert codec.decode(payload) == table


# ---- Listeners -----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, protocol", [
    ({"protocol": "HTTPS"}, "HTTPS"), ({"protocol": "https"}, "HTTPS"), ({"protocol": "HTTP"}, "HTTP"),
    ({"protocolStack": ["TLS", "HTTP", "TCP"]}, "HTTPS"), ({"protocolStack": ["HTTP", "TCP"]}, "HTTP"),
    ({"protocolStack": ["TLS", "PROXY", "HTTP", "TCP"]}, None), ({"protocolStack": ["PROXY", "HTTP", "TCP"]}, None),
    ({"protocol": "HTTPSPROXY"}, None), ({"protocol": "TLS"}, None),
])
def test_listener_protocols(spec, protocol):
    o = obj("Listener", "l", {"port": 8443, "securityModel": "XFP", **spec})
    if protocol is None:
        with pytest.raises(Invalid) as exc:
            parse_listener(o)
        assert exc.value.field in ("spec.protocol", "spec.protocolStack")
    else:
        assert parse_listener(o).protocol == protocol


def test_tls_is_served_on_https_listeners_only_and_a_warning_says_so(certs):
    listeners = [obj("Listener", "http", {"port": 8080, "protocol": "HTTP", "securityModel": "XFP"}),
                 obj("Listener", "https", {"port": 8443, "protocol": "HTTPS", "securityModel": "XFP",
                                           "hostBinding": {"selector": {"matchLabels": {"tls": "yes"}}}})]
    table, diags = compile([leaf_secret(certs), *listeners,
                            RawObject("Host", "default", "a", "f.yaml", {"hostname": "a.example.com",
                                                                         "tlsSecret": {"name": "a-cert"}},
                                      {"tls": "yes"}),
                            tls_host("b", "b.example.com", "a-cert")])
    assert [(lst.name, lst.protocol) for lst in table.listeners] == [("default/http", "HTTP"), ("default/https", "HTTPS")]
    warned = [d.name for d in diags if d.severity == "warning" and "no HTTPS Listener" in d.message]
    assert warned == ["b"]


def test_the_default_listener_stays_http_without_tls():
    table, diags = compile([mapping("m", "/")])
    assert [(lst.name, lst.protocol) for lst in table.listeners] == [("default-http", "HTTP")]


# ---- Ingress TLS -----------------------------------------------------------------------------

def test_an_ingress_tls_entry_terminates_tls_for_its_hosts_with_its_secret(certs):
    ing = {"metadata": {"name": "web", "namespace": "shop", "annotations": {"kubernetes.io/ingress.class": "ambassador"}},
           "spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                                                                            "backend": {"service": {"name": "api", "port": {"number": 80}}}}]}}],
                    "tls": [{"hosts": ["a.example.com"], "secretName": "a.cert"}, {"secretName": "wild"}]}}
    objects, diags = k8s.ingress(ing, set(), False)
    assert diags == []
    secrets = [secret_obj("a.cert", certs.leaf.cert_pem, certs.leaf.key_pem, ns="shop", source="kubernetes"),
               secret_obj("wild", certs.wildcard.cert_pem, certs.wildcard.key_pem, ns="shop", source="kubernetes")]
    table, cdiags = compile(objects + secrets)
    assert errors(cdiags) == []
    # a dotted secretName is a Secret name, not name.namespace; no hosts means "*", as
    # Emissary's generated Host has
    assert [(st.name, st.server_names, table.certificates[st.certificate].name) for st in table.server_tls] == [
        ("TLSContext shop/web-tls-0", ("a.example.com",), "shop/a.cert"), ("TLSContext shop/web-tls-1", ("*",), "shop/wild")]
    assert not any("Emissary 1.x" in d.message for d in cdiags)  # Emissary 2+ serves Ingress TLS too


def test_secret_objects_from_kubernetes_keep_only_tls_keys(certs):
    (o,), _ = k8s.secret({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": "ca", "namespace": "x", "labels": {"a": "b"}},
                          "data": {"tls.crt": b64(certs.ca.cert_pem), "password": base64.b64encode(b"x").decode()}})
    assert (o.kind, o.namespace, o.name, o.spec) == ("Secret", "x", "ca", {"type": "Opaque", "data": {
        "tls.crt": b64(certs.ca.cert_pem)}})
