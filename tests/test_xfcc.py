"""x-forwarded-client-cert: each forward_client_cert_details mode, Envoy's element format,
and SANITIZE (the default) done by the header rules."""

from __future__ import annotations

import hashlib
import ssl
from urllib.parse import unquote

import pytest

from edge.model import Target
from edge.resources.base import Invalid, RawObject
from edge.resources.module import parse_module
from edge.worker.heads import request_head
from edge.worker.proxy import header_rules
from edge.worker.xfcc import XFCC, XfccPolicy, client_cert, element, uri_san
from tests.tlscerts import make_ca, make_leaf

THEIRS = (XFCC, b"By=spiffe://front;Hash=00")


@pytest.fixture(scope="module")
def cert():
    ca = make_ca()
    issued = make_leaf(ca, "client.test", client=True)
    return issued, client_cert(ssl.PEM_cert_to_DER_cert(issued.cert_pem))


def test_an_element_is_envoys_by_hash_cert_chain_subject_uri_dns_in_that_order(cert):
    issued, facts = cert
    der = ssl.PEM_cert_to_DER_cert(issued.cert_pem)
    assert facts.sha256 == hashlib.sha256(der).hexdigest()
    assert element(facts, ()) == f"Hash={facts.sha256}".encode()
    full = element(facts, ("subject", "cert", "chain", "dns", "uri"), by="spiffe://edge").decode()
    keys = [part.split("=", 1)[0] for part in full.split(";")]
    assert keys == ["By", "Hash", "Cert", "Chain", "Subject", "DNS"]  # no URI SAN in this certificate
    assert 'Subject="CN=client.test"' in full and "DNS=client.test" in full
    cert_value = full.split('Cert="', 1)[1].split('"', 1)[0]
    assert "%0A" in cert_value and unquote(cert_value) == facts.pem


@pytest.mark.parametrize("mode, mtls, expected", [
    ("FORWARD_ONLY", True, [THEIRS]),
    ("FORWARD_ONLY", False, []),
    ("APPEND_FORWARD", True, [(XFCC, THEIRS[1] + b",Hash={h}")]),
    ("APPEND_FORWARD", False, []),
    ("SANITIZE_SET", True, [(XFCC, b"Hash={h}")]),
    ("SANITIZE_SET", False, []),
    ("ALWAYS_FORWARD_ONLY", False, [THEIRS]),
    ("ALWAYS_FORWARD_ONLY", True, [THEIRS]),
])
def test_each_mode_forwards_appends_sets_or_drops(cert, mode, mtls, expected):
    _, facts = cert
    headers = [(b"host", b"a"), THEIRS]
    out = XfccPolicy(mode, ()).headers(headers, facts if mtls else None)
    assert out[0] == (b"host", b"a")
    assert out[1:] == [(n, v.replace(b"{h}", facts.sha256.encode())) for n, v in expected]


def test_appending_without_a_prior_header_sets_it(cert):
    _, facts = cert
    assert XfccPolicy("APPEND_FORWARD", ()).headers([], facts) == [(XFCC, f"Hash={facts.sha256}".encode())]


def test_sanitize_is_the_header_rules_default_and_the_others_keep_the_header():
    t = Target("default/m", "c", 100, "/", None, "", None, (), (), (), (), 3000, 0)
    head = lambda rules: request_head(b"GET", "/", "", [(b"host", b"a"), THEIRS], connection=frozenset(),  # noqa: E731
                                      client_ip="192.0.2.1", xfp=b"https", trust_xff=False, original_path=None,
                                      rules=rules, suppress_envoy=False, chunked=False, content_length=None)
    assert XFCC not in head(header_rules(t)).lower()
    assert b"x-forwarded-client-cert: By=spiffe://front;Hash=00\r\n" in head(header_rules(t, sanitize_xfcc=False))


def test_the_module_fields_parse_and_bad_values_name_the_field():
    module = parse_module(RawObject("Module", "default", "ambassador", "t", {"config": {
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "uri": True, "dns": False}}}))
    assert module.settings.forward_client_cert_details == "SANITIZE_SET"
    assert module.settings.set_current_client_cert_details == ("subject", "uri")
    for config, field in (({"forward_client_cert_details": "SOMETIMES"}, "spec.config.forward_client_cert_details"),
                          ({"set_current_client_cert_details": {"serial": True}},
                           "spec.config.set_current_client_cert_details.serial")):
        with pytest.raises(Invalid) as err:
            parse_module(RawObject("Module", "default", "ambassador", "t", {"config": config}))
        assert err.value.field == field


def test_by_is_the_first_uri_san_of_our_certificate_and_uri_sans_are_listed():
    ca = make_ca()
    assert uri_san(make_leaf(ca, "edge.test").cert_pem) == ""
    ours = make_leaf(ca, "edge.test", "spiffe://edge/gw", "spiffe://edge/other")
    assert uri_san(ours.cert_pem) == "spiffe://edge/gw"
    theirs = make_leaf(ca, "client.test", "spiffe://team/app", client=True)
    facts = client_cert(ssl.PEM_cert_to_DER_cert(theirs.cert_pem))
    assert element(facts, ("uri",), by="spiffe://edge/gw") == \
        f"By=spiffe://edge/gw;Hash={facts.sha256};URI=spiffe://team/app".encode()
