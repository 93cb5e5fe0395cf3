"""CORS as Envoy's cors filter serves a route's policy (edge.worker.cors), without sockets."""

from __future__ import annotations

import pytest

from edge import codec
from edge.model import CorsPolicy
from edge.resources.base import RawObject
from edge.supervisor.compile import compile
from edge.worker import cors
from edge.worker.plan import LocalReply

FULL = CorsPolicy(("https://a.example", "https://b.example"), "GET, POST", "content-type, x-auth", "x-request-id",
                  "86400", True)
ANY = CorsPolicy(("*",))
ECHO = CorsPolicy(("https://a.example",), methods="*", headers="*")


def preflight_headers(origin=b"https://a.example", method=b"PUT", requested=None):
    headers = [(b"host", b"api.example")]
    if origin is not None:
        headers.append((b"origin", origin))
    if method is not None:
        headers.append((b"access-control-request-method", method))
    if requested is not None:
        headers.append((b"access-control-request-headers", requested))
    return headers


def test_a_preflight_from_an_allowed_origin_is_answered_with_the_policy():
    reply = cors.preflight(FULL, preflight_headers(b"https://b.example"))
    assert reply == LocalReply(200, b"", False,
                               b"access-control-allow-origin: https://b.example\r\n"
                               b"access-control-allow-credentials: true\r\n"
                               b"access-control-allow-methods: GET, POST\r\n"
                               b"access-control-allow-headers: content-type, x-auth\r\n"
                               b"access-control-max-age: 86400\r\n")


def test_a_minimal_policy_answers_the_origin_alone():
    assert cors.preflight(ANY, preflight_headers(b"https://anyone.example")).extra == \
        b"access-control-allow-origin: https://anyone.example\r\n"


@pytest.mark.parametrize("requested, extra", [
    (b"x-a, x-b", b"access-control-allow-origin: https://a.example\r\naccess-control-allow-methods: PUT\r\n"
                  b"access-control-allow-headers: x-a, x-b\r\n"),
    (None, b"access-control-allow-origin: https://a.example\r\naccess-control-allow-methods: PUT\r\n"),
])
def test_a_star_echoes_what_the_preflight_asked_for(requested, extra):
    assert cors.preflight(ECHO, preflight_headers(requested=requested)).extra == extra


@pytest.mark.parametrize("headers", [
    preflight_headers(b"https://evil.example"),  # not allowed: Envoy forwards it to the upstream
    preflight_headers(b"https://A.example"),  # origins are compared exactly
    preflight_headers(b"https://a.example:443"),
    preflight_headers(method=None),  # no Access-Control-Request-Method: not a preflight
    preflight_headers(method=b""),
    preflight_headers(origin=None),
    preflight_headers(origin=b""),
])
def test_what_is_not_an_allowed_preflight_is_proxied(headers):
    assert cors.preflight(FULL, headers) is None


def test_the_origin_given_by_the_caller_is_used():
    reply = cors.preflight(ANY, [(b"access-control-request-method", b"GET")], b"https://c.example")
    assert reply.extra == b"access-control-allow-origin: https://c.example\r\n"


@pytest.mark.parametrize("policy, origin, extra", [
    (FULL, b"https://a.example", b"access-control-allow-origin: https://a.example\r\n"
                                 b"access-control-allow-credentials: true\r\n"
                                 b"access-control-expose-headers: x-request-id\r\n"),
    (ANY, b"null", b"access-control-allow-origin: null\r\n"),  # "*" allows any origin, echoed as sent
    (FULL, b"https://evil.example", b""),
    (CorsPolicy(("https://a.example",)), b"https://a.example", b"access-control-allow-origin: https://a.example\r\n"),
])
def test_the_response_to_an_allowed_origin_gets_its_headers(policy, origin, extra):
    assert cors.response_extra(policy, origin) == extra


@pytest.mark.parametrize("headers, origin", [
    ([(b"host", b"h"), (b"origin", b"https://a.example")], b"https://a.example"),
    ([(b"origin", b"https://a.example"), (b"origin", b"https://b.example")], b"https://a.example"),
    ([(b"origin", b"")], None),
    ([(b"host", b"h")], None),
])
def test_origin_of(headers, origin):
    assert cors.origin_of(headers) == origin


def test_a_policys_header_bytes_are_built_once():
    policy = CorsPolicy(("https://once.example",), "GET")
    cors.response_extra(policy, b"https://once.example")
    wire = cors._wire(policy)
    assert cors._wire(policy) is wire
    same = CorsPolicy(("https://once.example",), "GET")  # equal, another object: its own entry
    assert cors._wire(same) is not wire and cors._wire(same).policy is same


def test_a_table_with_cors_round_trips_through_the_codec():
    objs = [RawObject("Module", "default", "ambassador", "t.yaml", {"config": {"cors": {"origins": "*"}}}),
            RawObject("Mapping", "default", "a", "t.yaml", {"prefix": "/a/", "service": "10.0.0.1",
                                                             "cors": {"origins": ["https://a.example"],
                                                                      "credentials": True, "max_age": 5}}),
            RawObject("Mapping", "default", "b", "t.yaml", {"prefix": "/b/", "service": "10.0.0.1"})]
    table, diags = compile(objs)
    assert diags == []
    assert {t.cors for r in table.routes for t in r.targets} == {
        CorsPolicy(("https://a.example",), max_age="5", credentials=True), CorsPolicy(("*",))}
    payload = codec.encode(table)
    assert codec.decode(payload) == table
    assert codec.encode(compile(objs)[0]) == payload
