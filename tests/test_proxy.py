"""Proxy decisions, pure: normalisation, rewrite, header rebuild."""

from __future__ import annotations

import re

import pytest

from edge.model import HeaderOp, Target
from edge.worker.proto.h1 import ClientError
from edge.worker.proto.messages import NO_TOKENS, connection_tokens
from edge.worker.heads import request_head, response_head
from edge.worker.proxy import header_rules, normalize_path, rewrite_path, split_target


@pytest.mark.parametrize("raw, merge, expected", [
    ("/a/b", False, "/a/b"), ("/a/./b/../c", False, "/a/c"), ("/../a", False, "/a"),
    ("/%61%2fb", False, "/a%2Fb"), ("/a//b", False, "/a//b"), ("/a//b", True, "/a/b"), ("/a/..", False, "/"),
])
def test_normalize(raw, merge, expected):
    assert normalize_path(raw, merge) == expected


def test_bad_escapes_and_targets():
    with pytest.raises(ClientError):
        normalize_path("/%zz")
    with pytest.raises(ClientError):
        split_target(b"foo")
    assert split_target(b"http://h/x?y=1") == ("/x", "y=1")


def test_rewrite():
    assert rewrite_path("/api/v1/x", 5, "/", None, "") == "/v1/x"
    assert rewrite_path("/api/v1/x", 5, None, None, "") == "/api/v1/x"
    assert rewrite_path("/a/b", 3, "/x/", re.compile("/a/(.*)"), r"/z/\1") == "/z/b"


def _rules(suppress_envoy=False, **kw):
    base = dict(mapping="default/m", cluster="c", weight=100, rewrite="/", regex_rewrite_pattern=None,
                regex_rewrite_substitution="", host_rewrite=None, add_request_headers=(), add_response_headers=(),
                remove_request_headers=(), remove_response_headers=(), timeout_ms=3000, idle_timeout_ms=0)
    base.update(kw)
    return header_rules(Target(**base), suppress_envoy)


def test_request_head_hop_by_hop_and_forwarding():
    head = request_head(b"GET", "/x", "q=1", [(b"host", b"h"), (b"connection", b"close, x-private"),
                                              (b"x-private", b"p"), (b"te", b"trailers"), (b"x-forwarded-for", b"1.2.3.4"),
                                              (b"x-forwarded-proto", b"https"), (b"x-request-id", b"r")],
                        connection=connection_tokens([b"close, X-Private"]), client_ip="127.0.0.9", xfp=b"http", trust_xff=False, original_path="/api/x?q=1",
                        rules=_rules(add_request_headers=(HeaderOp("x-a", "1", True),)),
                        suppress_envoy=False, chunked=False, content_length=None)
    assert head.startswith(b"GET /x?q=1 HTTP/1.1\r\nhost: h\r\n")
    for gone in (b"connection:", b"x-private", b"te:"):
        assert gone not in head
    assert b"x-forwarded-for: 1.2.3.4, 127.0.0.9\r\n" in head and b"x-forwarded-proto: http\r\n" in head
    assert b"x-request-id: r\r\n" in head and b"x-envoy-original-path: /api/x?q=1\r\n" in head
    assert head.endswith(b"x-a: 1\r\nx-envoy-expected-rq-timeout-ms: 3000\r\n\r\n")


def test_response_head():
    head = response_head(200, b"", [(b"server", b"up"), (b"keep-alive", b"t=5"), (b"x-b", b"2"), (b"x-c", b"3")],
                         connection=NO_TOKENS, rules=_rules(remove_response_headers=("x-c",), add_response_headers=(HeaderOp("x-b", "9", False),)),
                         server=b"edge", service_time_ms=7, framing=b"content-length: 0\r\n", close=True)
    assert head == (b"HTTP/1.1 200 OK\r\nx-b: 9\r\nserver: edge\r\nx-envoy-upstream-service-time: 7\r\n"
                    b"content-length: 0\r\nconnection: close\r\n\r\n")


def test_request_head_bytes():
    rules = _rules(suppress_envoy=True, host_rewrite="inner.svc", add_request_headers=(HeaderOp("x-add", "1", True),))
    head = request_head(b"POST", "/up", "", [(b"host", b"outer"), (b"x-forwarded-proto", b"https"), (b"a", b"")],
                        connection=NO_TOKENS, client_ip="10.0.0.1", xfp=b"http", trust_xff=True,
                        original_path=None, rules=rules, suppress_envoy=True, chunked=False, content_length=1234567)
    assert re.fullmatch(rb"POST /up HTTP/1\.1\r\nhost: inner\.svc\r\na: \r\nx-forwarded-for: 10\.0\.0\.1\r\n"
                        rb"x-forwarded-proto: https\r\nx-request-id: [0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-"
                        rb"[89ab][0-9a-f]{3}-[0-9a-f]{12}\r\nx-add: 1\r\ncontent-length: 1234567\r\n\r\n", head)
    chunked = request_head(b"PUT", "/", "a=1", [(b"x-request-id", b"mine")], connection=NO_TOKENS, client_ip="::1",
                           xfp=b"http", trust_xff=False, original_path="/orig", rules=_rules(), suppress_envoy=False,
                           chunked=True, content_length=None)
    assert chunked == (b"PUT /?a=1 HTTP/1.1\r\nx-request-id: mine\r\nx-forwarded-for: ::1\r\nx-forwarded-proto: http\r\n"
                       b"x-envoy-original-path: /orig\r\nx-envoy-expected-rq-timeout-ms: 3000\r\n"
                       b"transfer-encoding: chunked\r\n\r\n")
    zero = request_head(b"GET", "/", "", [(b"x-request-id", b"r")], connection=NO_TOKENS, client_ip="c", xfp=b"http",
                        trust_xff=False, original_path=None, rules=_rules(), suppress_envoy=False, chunked=False,
                        content_length=0)
    assert zero.endswith(b"\r\ncontent-length: 0\r\n\r\n")


def test_heads_larger_than_the_first_buffer():
    # the compiled writer starts with 4 KiB and grows; each head is taken whole
    many = [(b"x-h%d" % i, b"v" * 300) for i in range(100)]
    head = response_head(599, b"Odd", many, connection=NO_TOKENS, rules=_rules(), server=b"edge",
                         service_time_ms=None, framing=b"", close=False)
    assert head == b"HTTP/1.1 599 Odd\r\n" + b"".join(b"%b: %b\r\n" % h for h in many) + b"server: edge\r\n\r\n"
    small = response_head(404, b"", [], connection=NO_TOKENS, rules=_rules(), server=b"e", service_time_ms=12345,
                          framing=b"content-length: 0\r\n", close=False)
    assert small == (b"HTTP/1.1 404 Not Found\r\nserver: e\r\nx-envoy-upstream-service-time: 12345\r\n"
                     b"content-length: 0\r\n\r\n")
    big = request_head(b"GET", "/" + "p" * 9000, "", many, connection=NO_TOKENS, client_ip="c", xfp=b"http",
                       trust_xff=False, original_path=None, rules=_rules(), suppress_envoy=False, chunked=False,
                       content_length=None)
    assert big.startswith(b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\n" + b"".join(b"%b: %b\r\n" % h for h in many))


def test_request_ids_are_version_4_uuids_and_unique():
    def head_id():
        head = request_head(b"GET", "/", "", [], connection=NO_TOKENS, client_ip="c", xfp=b"http", trust_xff=False,
                            original_path=None, rules=_rules(), suppress_envoy=False, chunked=False,
                            content_length=None)
        return re.search(rb"x-request-id: ([^\r]*)\r\n", head).group(1)
    ids = [head_id() for _ in range(40)]
    assert len(set(ids)) == 40
    for rid in ids:
        assert re.fullmatch(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rid), rid
    assert int(ids[1][-12:], 16) == (int(ids[0][-12:], 16) + 1) % (1 << 48)


def test_a_head_part_that_is_not_bytes_is_a_type_error():
    with pytest.raises(TypeError):
        response_head(200, b"", [(b"x-a", None)], connection=NO_TOKENS, rules=_rules(), server=b"e",
                      service_time_ms=None, framing=b"", close=False)
    with pytest.raises(TypeError):
        request_head(None, "/", "", [], connection=NO_TOKENS, client_ip="c", xfp=b"http", trust_xff=False,
                     original_path=None, rules=_rules(), suppress_envoy=False, chunked=False, content_length=None)
    assert response_head(200, b"", [(b"x-a", b"1")], connection=NO_TOKENS, rules=_rules(), server=b"e",
                         service_time_ms=None, framing=b"", close=False).startswith(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n")


# ---- Envoy's own headers, decided once per target ------------------------------------------

def _head(rules, headers=(), original_path="/orig", suppress_envoy=False):
    return request_head(b"GET", "/", "", [(b"x-request-id", b"r"), *headers], connection=NO_TOKENS,
                        client_ip="c", xfp=b"http", trust_xff=False, original_path=original_path, rules=rules,
                        suppress_envoy=suppress_envoy, chunked=False, content_length=None)


@pytest.mark.parametrize("rules_kw, suppress, expected", [
    # the route timeout in ms, as Envoy sends it
    ({"timeout_ms": 3000}, False, b"x-envoy-original-path: /orig\r\nx-envoy-expected-rq-timeout-ms: 3000\r\n\r\n"),
    ({"timeout_ms": 250}, False, b"x-envoy-original-path: /orig\r\nx-envoy-expected-rq-timeout-ms: 250\r\n\r\n"),
    # timeout 0 disables the timeout: Envoy sends no header
    ({"timeout_ms": 0}, False, b"x-forwarded-proto: http\r\nx-envoy-original-path: /orig\r\n\r\n"),
    # suppress_envoy_headers: neither Envoy header
    ({"timeout_ms": 3000}, True, b"x-forwarded-proto: http\r\n\r\n"),
    # a Mapping's remove_request_headers can remove it too
    ({"timeout_ms": 3000, "remove_request_headers": ("x-envoy-expected-rq-timeout-ms",)}, False,
     b"x-forwarded-proto: http\r\nx-envoy-original-path: /orig\r\n\r\n"),
])
def test_expected_rq_timeout_header(rules_kw, suppress, expected):
    head = _head(_rules(suppress_envoy=suppress, **rules_kw), suppress_envoy=suppress)
    assert head.endswith(expected), head
    assert head.count(b"x-envoy-expected-rq-timeout-ms") == expected.count(b"x-envoy-expected-rq-timeout-ms")


def test_expected_rq_timeout_from_the_client_is_replaced():
    head = _head(_rules(timeout_ms=500), headers=[(b"x-envoy-expected-rq-timeout-ms", b"99999")])
    assert b"99999" not in head and head.count(b"x-envoy-expected-rq-timeout-ms: 500\r\n") == 1


def test_expected_rq_timeout_is_rendered_into_the_rules_once():
    rules = _rules(timeout_ms=3000, add_request_headers=(HeaderOp("x-a", "1", True),))
    assert rules.request_add == b"x-a: 1\r\nx-envoy-expected-rq-timeout-ms: 3000\r\n"


@pytest.mark.parametrize("rules_kw, suppress, service_time", [
    ({}, False, True),
    ({}, True, False),  # suppress_envoy_headers
    ({"remove_response_headers": ("x-envoy-upstream-service-time",)}, False, False),
    ({"remove_response_headers": ("x-other",)}, False, True),
])
def test_upstream_service_time_can_be_removed(rules_kw, suppress, service_time):
    rules = _rules(suppress_envoy=suppress, **rules_kw)
    assert rules.service_time is service_time
