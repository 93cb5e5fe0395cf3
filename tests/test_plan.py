"""plan(): the per-request decision every protocol shares, tested without a socket."""

from __future__ import annotations

import dataclasses

import pytest

from edge.resources.base import RawObject
from edge.supervisor.compile import compile
from edge.worker.plan import LocalReply, Plan, plan
from edge.worker.proto.messages import Request
from edge.worker.router import Router


def obj(kind, name, spec):
    return RawObject(kind, "default", name, "t.yaml", spec)


def mapping(name, prefix, service="10.0.0.1:80", **spec):
    return obj("Mapping", name, {"prefix": prefix, "service": service, **spec})


def router(*objects) -> Router:
    table, diags = compile(objects)
    assert not [d for d in diags if d.severity == "error"], diags
    return Router(table)


def request(target=b"/", host=b"example.com", method=b"GET", headers=(), upgrade=False) -> Request:
    head = [(b"host", host)] if host is not None else []
    head += list(headers)
    return Request(method=method, target=target, version="1.1", headers=head, keep_alive=True, chunked=False,
                   content_length=None, host=host, expect_continue=False, upgrade=upgrade,
                   connection=frozenset(), has_body=False)


TABLE = router(
    mapping("api", "/api/", "10.0.0.1:80"),
    mapping("kept", "/kept/", "10.0.0.2:80", rewrite=""),
    mapping("moved", "/old/", "10.0.0.3:80", rewrite="/new/"),
    mapping("rx", "/rx/", "10.0.0.4:80", regex_rewrite={"pattern": "^/rx/([a-z]+)$", "substitution": "/x/\\1"}),
    mapping("only-b", "/b/", "10.0.0.5:80", host="b.example.com"),
    mapping("posts", "/post/", "10.0.0.6:80", method="POST"),
)


@pytest.mark.parametrize("target, host, method, service, path, query, original", [
    (b"/api/users", b"example.com", b"GET", "10.0.0.1:80", "/users", "", "/api/users"),
    (b"/api/users?id=7&x", b"example.com", b"GET", "10.0.0.1:80", "/users", "id=7&x", "/api/users?id=7&x"),
    (b"/kept/a/b", b"example.com", b"GET", "10.0.0.2:80", "/kept/a/b", "", None),
    (b"/old/page", b"example.com", b"GET", "10.0.0.3:80", "/new/page", "", "/old/page"),
    (b"/rx/abc", b"example.com", b"GET", "10.0.0.4:80", "/x/abc", "", "/rx/abc"),
    (b"/b/x", b"B.Example.com", b"GET", "10.0.0.5:80", "/x", "", "/b/x"),
    (b"/post/1", b"example.com", b"POST", "10.0.0.6:80", "/1", "", "/post/1"),
    # absolute-form keeps only its path; dot segments and escapes are normalised first
    (b"http://example.com/api/v?q=1", b"example.com", b"GET", "10.0.0.1:80", "/v", "q=1", "/api/v?q=1"),
    (b"/kept/a/../b", b"example.com", b"GET", "10.0.0.2:80", "/kept/b", "", None),
    (b"/%61pi/x", b"example.com", b"GET", "10.0.0.1:80", "/x", "", "/api/x"),
])
def test_a_matched_request_gets_its_target_and_rewritten_path(target, host, method, service, path, query, original):
    decided = plan(TABLE, 8080, "192.0.2.1", request(target, host, method))
    assert type(decided) is Plan
    assert decided.cluster.service == service
    assert (decided.path, decided.query, decided.original_path) == (path, query, original)
    assert decided.listener.port == 8080 and decided.router is TABLE
    assert decided.limits == [] and decided.trust_xff is False


@pytest.mark.parametrize("target, host, method, status, close", [
    (b"/nowhere", b"example.com", b"GET", 404, False),
    (b"/b/x", b"a.example.com", b"GET", 404, False),  # host-bound Mapping
    (b"/post/1", b"example.com", b"GET", 404, False),  # method-bound Mapping
    (b"/api/\xff", b"example.com", b"GET", 400, True),
    (b"/api/%zz", b"example.com", b"GET", 400, True),
    (b"ftp://example.com/api/", b"example.com", b"GET", 400, True),
    (b"*", b"example.com", b"OPTIONS", 400, True),
])
def test_local_replies_say_whose_fault_and_whether_the_stream_survives(target, host, method, status, close):
    decided = plan(TABLE, 8080, "192.0.2.1", request(target, host, method))
    assert type(decided) is LocalReply
    assert (decided.status, decided.close) == (status, close)


def test_an_upgrade_is_refused_until_upgrades_are_served():
    decided = plan(TABLE, 8080, "192.0.2.1", request(b"/api/ws", upgrade=True))
    assert type(decided) is LocalReply and decided.status == 501 and decided.close


def test_an_unknown_port_has_no_routes():
    assert plan(TABLE, 9999, "192.0.2.1", request(b"/api/")) == LocalReply(404)


def test_the_host_port_is_stripped_only_when_the_module_says_so():
    objs = (mapping("h", "/h/", host="h.example.com"),)
    plain = router(*objs)
    strip = router(*objs, obj("Module", "ambassador", {"config": {"strip_matching_host_port": True}}))
    on_port = request(b"/h/", b"h.example.com:8080")
    assert plan(plain, 8080, "p", on_port) == LocalReply(404)  # the Mapping's host is compared with the port
    assert type(plan(strip, 8080, "p", on_port)) is Plan
    assert plan(strip, 8080, "p", request(b"/h/", b"h.example.com:8081")) == LocalReply(404)  # not the Listener's


def test_the_canary_roll_picks_by_cumulative_weight():
    canary = router(mapping("main", "/c/", "10.0.1.1:80"), mapping("canary", "/c/", "10.0.1.2:80", weight=10))
    picks = {roll: plan(canary, 8080, "p", request(b"/c/"), rand=lambda: roll).cluster.service
             for roll in (0.0, 0.099, 0.10, 0.999)}
    assert picks == {0.0: "10.0.1.2:80", 0.099: "10.0.1.2:80", 0.10: "10.0.1.1:80", 0.999: "10.0.1.1:80"}


def test_forwarded_headers_are_trusted_only_behind_trusted_hops():
    behind = router(mapping("api", "/api/"), obj("Listener", "l", {"port": 8080, "protocol": "HTTP",
                                                                    "securityModel": "XFP", "l7Depth": 1}))
    hops = router(mapping("api", "/api/"), obj("Module", "ambassador", {"config": {"xff_num_trusted_hops": 1}}))
    assert plan(behind, 8080, "p", request(b"/api/")).trust_xff is True
    assert plan(hops, 8080, "p", request(b"/api/")).trust_xff is True


LIMITED = (
    mapping("per-user", "/u/", labels={"ambassador": [{"g": [{"request_headers": {"key": "user",
                                                                                  "header_name": "x-user"}}]}]}),
    mapping("per-peer", "/p/", labels={"ambassador": [{"g": ["remote_address"]}]}),
    obj("RateLimit", "rl", {"domain": "ambassador", "limits": [
        {"pattern": [{"user": "ann"}], "rate": 1, "unit": "minute"},
        {"pattern": [{"remote_address": "192.0.2.1"}], "rate": 5, "unit": "minute"}]}),
)


def test_limits_are_matched_from_the_request_headers_and_the_peer():
    table = router(*LIMITED)
    ann = plan(table, 8080, "192.0.2.1", request(b"/u/", headers=[(b"x-user", b"ann")]))
    bob = plan(table, 8080, "192.0.2.1", request(b"/u/", headers=[(b"x-user", b"bob")]))
    peer = plan(table, 8080, "192.0.2.1", request(b"/p/"))
    other = plan(table, 8080, "198.51.100.1", request(b"/p/"))
    assert [r.pattern[0].value for r, _ in ann.limits] == ["ann"]
    assert bob.limits == [] and other.limits == []
    assert [r.pattern[0].value for r, _ in peer.limits] == ["192.0.2.1"]


def test_limits_that_depend_on_the_connection_alone_are_reused_on_it():
    table = router(*LIMITED)
    first = plan(table, 8080, "192.0.2.1", request(b"/p/"))
    again = plan(table, 8080, "192.0.2.1", request(b"/p/"), prior=first)
    assert again.limits is first.limits
    # a new table, or a target whose descriptors read headers, matches again
    reloaded = router(*LIMITED)
    assert plan(reloaded, 8080, "192.0.2.1", request(b"/p/"), prior=first).limits is not first.limits
    ann = plan(table, 8080, "192.0.2.1", request(b"/u/", headers=[(b"x-user", b"ann")]))
    bob = plan(table, 8080, "192.0.2.1", request(b"/u/", headers=[(b"x-user", b"bob")]), prior=ann)
    assert ann.limits and bob.limits == []


def test_plan_is_pure_the_same_request_gives_the_same_decision():
    req = request(b"/old/page?x=1")
    assert plan(TABLE, 8080, "p", req) == plan(TABLE, 8080, "p", req)


def with_insecure(table_router: Router, action: str, security_model: str = "XFP", l7_depth: int = 0) -> Router:
    """The same table, its virtual hosts given requestPolicy.insecure.action and its Listener
    a security model (what compile makes of Hosts with TLS; set by hand here)."""
    t = table_router.table
    vhosts = tuple(dataclasses.replace(v, insecure_action=action) for v in t.virtual_hosts)
    listeners = tuple(dataclasses.replace(x, security_model=security_model, l7_depth=l7_depth) for x in t.listeners)
    return Router(dataclasses.replace(t, virtual_hosts=vhosts, listeners=listeners))


ACME = mapping("acme", "/.well-known/acme-challenge/", "10.0.9.9:80")


@pytest.mark.parametrize("scheme, model, l7, xfp, action, expected", [
    (b"http", "XFP", 0, None, "Redirect", 301),
    (b"https", "XFP", 0, None, "Redirect", "routed"),
    (b"http", "XFP", 0, b"https", "Redirect", 301),  # an untrusted client's X-Forwarded-Proto is not believed
    (b"http", "XFP", 1, b"https", "Redirect", "routed"),  # behind a trusted hop it is
    (b"https", "XFP", 1, b"http", "Redirect", 301),
    (b"http", "SECURE", 0, None, "Redirect", "routed"),  # everything on a SECURE Listener is secure
    (b"https", "INSECURE", 0, None, "Redirect", 301),
    (b"http", "XFP", 0, None, "Reject", 404),
    (b"https", "XFP", 0, None, "Reject", "routed"),
    (b"http", "XFP", 0, None, "Route", "routed"),
])
def test_insecure_requests_get_their_hosts_request_policy(scheme, model, l7, xfp, action, expected):
    table = with_insecure(router(mapping("api", "/api/")), action, model, l7)
    headers = [(b"x-forwarded-proto", xfp)] if xfp else []
    decided = plan(table, 8080, "p", request(b"/api/x?q=1", b"shop.example.com", headers=headers), scheme=scheme)
    if expected == "routed":
        assert type(decided) is Plan
    else:
        assert type(decided) is LocalReply and decided.status == expected and not decided.close
    if expected == 301:
        assert decided.extra == b"location: https://shop.example.com/api/x?q=1\r\n"


def test_a_redirect_drops_the_default_http_port_and_keeps_others():
    table = with_insecure(router(mapping("api", "/api/")), "Redirect")
    assert plan(table, 8080, "p", request(b"/api/", b"shop.example.com:80")).extra == \
        b"location: https://shop.example.com/api/\r\n"
    assert plan(table, 8080, "p", request(b"/api/", b"shop.example.com:8080")).extra == \
        b"location: https://shop.example.com:8080/api/\r\n"


def test_acme_challenges_are_routed_whatever_the_policy_and_unknown_paths_stay_404():
    for action in ("Redirect", "Reject"):
        table = with_insecure(router(mapping("api", "/api/"), ACME), action)
        decided = plan(table, 8080, "p", request(b"/.well-known/acme-challenge/token"))
        assert type(decided) is Plan and decided.cluster.service == "10.0.9.9:80"
        assert plan(table, 8080, "p", request(b"/nowhere")) == LocalReply(404)  # Emissary redirects routes only


# ---- CORS: Envoy's cors filter on the matched route's policy ------------------------------

CORS = {"origins": ["https://app.example"], "methods": ["GET", "POST"], "headers": ["content-type"],
        "credentials": True, "exposed_headers": ["x-request-id"], "max_age": "600"}
CORS_TABLE = router(
    mapping("cors", "/cors/", cors=CORS),
    mapping("plain", "/plain/"),
    mapping("get-only", "/get/", method="GET", cors=CORS),
)
APP = (b"origin", b"https://app.example")
PREFLIGHT = [APP, (b"access-control-request-method", b"POST"), (b"access-control-request-headers", b"content-type")]
ALLOWED = (b"access-control-allow-origin: https://app.example\r\naccess-control-allow-credentials: true\r\n"
           b"access-control-expose-headers: x-request-id\r\n")


def test_a_preflight_from_an_allowed_origin_is_answered_without_the_upstream():
    decided = plan(CORS_TABLE, 8080, "p", request(b"/cors/x", method=b"OPTIONS", headers=PREFLIGHT))
    assert decided == LocalReply(200, b"", False,
                                 b"access-control-allow-origin: https://app.example\r\n"
                                 b"access-control-allow-credentials: true\r\n"
                                 b"access-control-allow-methods: GET, POST\r\n"
                                 b"access-control-allow-headers: content-type\r\n"
                                 b"access-control-max-age: 600\r\n")


@pytest.mark.parametrize("method, headers, extra", [
    (b"GET", [APP], ALLOWED),  # an actual request: proxied, its response marked
    (b"POST", [APP, (b"content-type", b"application/json")], ALLOWED),
    (b"OPTIONS", [APP], ALLOWED),  # OPTIONS without Access-Control-Request-Method is not a preflight
    (b"GET", [(b"origin", b"https://evil.example")], b""),  # an origin not allowed: left as it is
    (b"OPTIONS", [(b"origin", b"https://evil.example"), (b"access-control-request-method", b"POST")], b""),
    (b"GET", [], b""),  # no Origin: not CORS
    (b"GET", [(b"origin", b"")], b""),
])
def test_other_requests_are_proxied_with_the_headers_their_response_gets(method, headers, extra):
    decided = plan(CORS_TABLE, 8080, "p", request(b"/cors/x", method=method, headers=headers))
    assert type(decided) is Plan and decided.extra == extra
    assert decided.path == "/x"


def test_without_a_policy_nothing_changes():
    for headers, method in ((PREFLIGHT, b"OPTIONS"), ([APP], b"GET")):
        decided = plan(CORS_TABLE, 8080, "p", request(b"/plain/x", method=method, headers=headers))
        assert type(decided) is Plan and decided.extra == b""
    assert plan(TABLE, 8080, "p", request(b"/api/x")).extra == b""


def test_a_preflight_only_reaches_routes_that_match_it():
    # Emissary matches the route first: an OPTIONS preflight to a GET-only Mapping finds no route
    assert plan(CORS_TABLE, 8080, "p", request(b"/get/x", method=b"OPTIONS", headers=PREFLIGHT)) == LocalReply(404)


def test_the_modules_cors_is_for_mappings_without_their_own():
    module = obj("Module", "ambassador", {"config": {"cors": {"origins": ["*"], "methods": "*"}}})
    table = router(module, mapping("plain", "/plain/"), mapping("own", "/own/", cors=CORS),
                   mapping("off", "/off/", cors={}))
    elsewhere = [(b"origin", b"https://elsewhere.example"), (b"access-control-request-method", b"DELETE")]
    assert plan(table, 8080, "p", request(b"/plain/", method=b"OPTIONS", headers=elsewhere)).extra == (
        b"access-control-allow-origin: https://elsewhere.example\r\naccess-control-allow-methods: DELETE\r\n")
    assert plan(table, 8080, "p", request(b"/plain/", headers=elsewhere[:1])).extra == \
        b"access-control-allow-origin: https://elsewhere.example\r\n"
    # the Mapping's own policy, not the Module's
    own = plan(table, 8080, "p", request(b"/own/", method=b"OPTIONS", headers=elsewhere))
    assert type(own) is Plan and own.extra == b""
    assert plan(table, 8080, "p", request(b"/own/", headers=[APP])).extra == ALLOWED
    # cors: {} allows nothing and hides the Module's
    assert plan(table, 8080, "p", request(b"/off/", headers=elsewhere[:1])).extra == b""


def test_a_canary_group_answers_alike_whichever_target_is_picked():
    # Emissary flattens a member's cors into the group's route
    table = router(mapping("main", "/c/", "10.0.1.1:80", cors={"origins": ["https://app.example"]}),
                   mapping("canary", "/c/", "10.0.1.2:80", weight=10))
    main = plan(table, 8080, "p", request(b"/c/", headers=[APP]), rand=lambda: 0.5)
    canary = plan(table, 8080, "p", request(b"/c/", headers=[APP]), rand=lambda: 0.0)
    assert (main.cluster.service, canary.cluster.service) == ("10.0.1.1:80", "10.0.1.2:80")
    assert main.extra == canary.extra == b"access-control-allow-origin: https://app.example\r\n"
