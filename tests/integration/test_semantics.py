"""Emissary semantics through the real `edge serve` (2 workers) and a real upstream."""

from __future__ import annotations

import collections
import json
import socket

import httpx
import pytest

from tests.conftest import mapping, resource

pytestmark = pytest.mark.integration


def echo(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.json()


def header(data: dict, name: str) -> list[str]:
    return [v for n, v in data["headers"] if n.lower() == name]


def test_prefix_rewrite_and_path_matching(make_edge, upstream):
    s = upstream.service
    edge = make_edge({"m.yaml": "".join([
        mapping("strip", s, "/strip/"),
        mapping("keep", s, "/keep/", rewrite=""),
        mapping("other", s, "/other/", rewrite="/new/"),
        mapping("exact", s, "/exact", prefix_exact=True, rewrite=""),
        mapping("regex", s, "/re/[0-9]+", prefix_regex=True, rewrite=""),
        mapping("nocase", s, "/NoCase/", case_sensitive=False),
        mapping("rr", s, "/rr/", regex_rewrite={"pattern": "/rr/([a-z]+)/(.*)", "substitution": "/\\2/\\1"}),
    ])})
    with httpx.Client(base_url=edge.url("")) as c:
        data = echo(c.get("/strip/a/b?q=1"))
        assert data["path"] == "/a/b?q=1"
        assert header(data, "x-envoy-original-path") == ["/strip/a/b?q=1"]
        kept = echo(c.get("/keep/x"))
        assert kept["path"] == "/keep/x" and header(kept, "x-envoy-original-path") == []
        assert echo(c.get("/other/y"))["path"] == "/new/y"
        assert echo(c.get("/exact"))["path"] == "/exact"
        assert c.get("/exactly").status_code == 404
        assert echo(c.get("/re/123"))["path"] == "/re/123"
        assert c.get("/re/12a").status_code == 404
        assert echo(c.get("/nocase/z"))["path"] == "/z"
        assert echo(c.get("/rr/abc/tail"))["path"] == "/tail/abc"
        # the path is normalised before matching
        assert echo(c.get("/keep/../strip/%61x"))["path"] == "/ax"
        assert c.get("/nothing-here").status_code == 404


def test_route_order_and_conditions(make_edge, upstream, upstream_b):
    a, b = upstream.service, upstream_b.service
    edge = make_edge({"m.yaml": "".join([
        mapping("short", a, "/p/"),
        mapping("long", b, "/p/long/"),
        mapping("hdr", b, "/p/", headers={"x-canary": "yes"}),
        mapping("hdr-re", b, "/h/", regex_headers={"x-v": "^v[0-9]$"}),
        mapping("hdr-plain", a, "/h/"),
        mapping("query", b, "/q/", query_parameters={"beta": "1"}),
        mapping("query-plain", a, "/q/"),
        mapping("post", b, "/m/", method="POST"),
        mapping("any-method", a, "/m/"),
        mapping("low", a, "/prec/", precedence=0),
        mapping("high", b, "/prec/x", precedence=-1),
        mapping("host", b, "/host/", host="api.example.com"),
        mapping("host-glob", a, "/host/", hostname="*.example.org"),
        mapping("host-re", b, "/hre/", host="^v[0-9]+[.]api[.]test$", host_regex=True),
        mapping("query-re", b, "/qre/", regex_query_parameters={"id": "^[0-9]+$"}),
        mapping("query-re-plain", a, "/qre/"),
    ])})
    with httpx.Client(base_url=edge.url("")) as c:
        assert echo(c.get("/p/x"))["upstream"] == "a"
        assert echo(c.get("/p/long/x"))["upstream"] == "b"
        assert echo(c.get("/p/x", headers={"x-canary": "yes"}))["upstream"] == "b"
        assert echo(c.get("/h/", headers={"x-v": "v7"}))["upstream"] == "b"
        assert echo(c.get("/h/", headers={"x-v": "v77"}))["upstream"] == "a"
        assert echo(c.get("/q/?beta=1"))["upstream"] == "b"
        assert echo(c.get("/q/?beta=2"))["upstream"] == "a"
        assert echo(c.post("/m/", content=b"x"))["upstream"] == "b"
        assert echo(c.get("/m/"))["upstream"] == "a"
        # precedence beats prefix length
        assert echo(c.get("/prec/xyz"))["upstream"] == "a"
        assert echo(c.get("/host/", headers={"host": "api.example.com"}))["upstream"] == "b"
        assert echo(c.get("/host/", headers={"host": "www.example.org"}))["upstream"] == "a"
        assert c.get("/host/", headers={"host": "other.net"}).status_code == 404
        assert echo(c.get("/hre/", headers={"host": "v2.api.test"}))["upstream"] == "b"
        assert c.get("/hre/", headers={"host": "vx.api.test"}).status_code == 404
        assert echo(c.get("/qre/?id=42"))["upstream"] == "b"
        assert echo(c.get("/qre/?id=4x"))["upstream"] == "a"


def test_headers_added_removed_and_forwarding(make_edge, upstream):
    s = upstream.service
    edge = make_edge({"m.yaml": "".join([
        mapping("h", s, "/h/",
                add_request_headers={"x-add": "one", "x-replace": {"value": "new", "append": False}},
                add_response_headers={"x-resp": "r", "x-hop": {"value": "replaced", "append": False}},
                remove_request_headers=["x-secret"], remove_response_headers=["x-upstream"],
                host_rewrite="rewritten.internal"),
    ])})
    with httpx.Client(base_url=edge.url("")) as c:
        r = c.get("/h/", headers={"x-add": "zero", "x-replace": "old", "x-secret": "s", "connection": "keep-alive, x-drop",
                                  "x-drop": "d", "x-request-id": "rid-1", "x-forwarded-for": "10.0.0.1",
                                  "x-forwarded-proto": "https"})
        data = echo(r)
        assert header(data, "x-add") == ["zero", "one"]
        assert header(data, "x-replace") == ["new"]
        assert header(data, "x-secret") == [] and header(data, "x-drop") == []
        assert header(data, "host") == ["rewritten.internal"]
        assert header(data, "x-request-id") == ["rid-1"]
        assert header(data, "x-forwarded-for") == ["10.0.0.1, 127.0.0.1"]
        assert header(data, "x-forwarded-proto") == ["http"]  # l7Depth 0: not trusted
        assert r.headers["x-resp"] == "r"
        assert r.headers.get_list("x-hop") == ["replaced"]
        assert "x-upstream" not in r.headers
        assert "keep-alive" not in r.headers
        assert r.headers["server"] == "edge"
        assert int(r.headers["x-envoy-upstream-service-time"]) >= 0
        generated = echo(c.get("/h/"))
        assert len(header(generated, "x-request-id")[0]) == 36


def test_l7depth_trusts_forwarded_proto(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/")})
    edge.write("00-listener.yaml", resource("Listener", "http", {
        "port": edge.port, "protocol": "HTTP", "securityModel": "XFP", "l7Depth": 1,
        "hostBinding": {"namespace": {"from": "ALL"}}}))
    edge.wait_generation(2)
    data = echo(httpx.get(edge.url("/x"), headers={"x-forwarded-proto": "https"}))
    assert header(data, "x-forwarded-proto") == ["https"]


def test_module_xff_num_trusted_hops_trusts_forwarded_proto(make_edge, upstream):
    module = resource("Module", "ambassador", {"config": {"xff_num_trusted_hops": 1}})
    edge = make_edge({"m.yaml": module + mapping("m", upstream.service, "/")})
    data = echo(httpx.get(edge.url("/x"), headers={"x-forwarded-proto": "https"}))
    assert header(data, "x-forwarded-proto") == ["https"]


def test_service_by_dns_name(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", f"http://localhost:{upstream.port}", "/dns/")})
    assert echo(httpx.get(edge.url("/dns/")))["upstream"] == "a"
    cluster_diags = [d for d in edge.config()["diagnostics"] if d["kind"] == "Cluster"]
    assert cluster_diags == []


def test_listener_host_binding_selector(make_edge, upstream):
    edge = make_edge({"m.yaml": resource("Host", "public", {"hostname": "pub.test"}, labels={"expose": "yes"})
                      + resource("Host", "private", {"hostname": "priv.test"})
                      + mapping("m", upstream.service, "/")})
    generation = edge.config()["generation"]
    edge.write("00-listener.yaml", resource("Listener", "http", {
        "port": edge.port, "protocol": "HTTP", "securityModel": "XFP",
        "hostBinding": {"namespace": {"from": "ALL"}, "selector": {"matchLabels": {"expose": "yes"}}}}))
    edge.wait_generation(generation + 1)
    assert echo(httpx.get(edge.url("/"), headers={"host": "pub.test"}))["upstream"] == "a"
    assert httpx.get(edge.url("/"), headers={"host": "priv.test"}).status_code == 404


def test_canary_weights(make_edge, upstream, upstream_b):
    edge = make_edge({"m.yaml": mapping("stable", upstream.service, "/c/")
                      + mapping("canary", upstream_b.service, "/c/", weight=20)})
    counts = collections.Counter()
    with httpx.Client(base_url=edge.url("")) as c:
        for _ in range(400):
            counts[echo(c.get("/c/"))["upstream"]] += 1
    # 20% +- a generous margin for 400 draws (sd ~ 8)
    assert 40 <= counts["b"] <= 130, counts
    assert counts["a"] + counts["b"] == 400


def test_hosts_and_mapping_association(make_edge, upstream, upstream_b):
    files = {"m.yaml": "".join([
        resource("Host", "api", {"hostname": "api.example.com"}),
        resource("Host", "sel", {"hostname": "*.shop.test", "mappingSelector": {"matchLabels": {"team": "shop"}}}),
        mapping("by-hostname", upstream.service, "/a/", hostname="api.example.com"),
        mapping("by-label", upstream_b.service, "/b/", labels={"team": "shop"}, hostname="*.shop.test"),
        mapping("wrong-label", upstream_b.service, "/w/", labels={"team": "other"}, hostname="*.shop.test"),
        mapping("orphan", upstream.service, "/o/", hostname="nowhere.example.net"),
        mapping("everywhere", upstream.service, "/all/"),
    ])}
    edge = make_edge(files)
    with httpx.Client(base_url=edge.url("")) as c:
        assert echo(c.get("/a/", headers={"host": "api.example.com"}))["upstream"] == "a"
        assert c.get("/a/", headers={"host": "x.shop.test"}).status_code == 404
        assert echo(c.get("/b/", headers={"host": "x.shop.test"}))["upstream"] == "b"
        assert c.get("/b/", headers={"host": "api.example.com"}).status_code == 404
        assert c.get("/w/", headers={"host": "x.shop.test"}).status_code == 404  # selector must match too
        assert c.get("/o/", headers={"host": "nowhere.example.net"}).status_code == 404
        # no hostname: attaches to every Host without a selector, not to the selector Host
        assert echo(c.get("/all/", headers={"host": "api.example.com"}))["upstream"] == "a"
        assert c.get("/all/", headers={"host": "x.shop.test"}).status_code == 404
        # the Host port is not stripped by default for Mapping host matching
        assert c.get("/a/", headers={"host": "api.example.com:8080"}).status_code == 404


def test_module_settings(make_edge, upstream):
    module = resource("Module", "ambassador", {"config": {
        "server_name": "gw", "suppress_envoy_headers": True, "merge_slashes": True,
        "strip_matching_host_port": True, "max_request_headers_kb": 2,
        "defaults": {"httpmapping": {"rewrite": ""}}}})
    edge = make_edge({"m.yaml": module + mapping("m", upstream.service, "/d/", host="h.test")})
    with httpx.Client(base_url=edge.url("")) as c:
        r = c.get("/d//x", headers={"host": f"h.test:{edge.port}"})
        data = echo(r)
        assert data["path"] == "/d/x"  # defaults.httpmapping rewrite "" and merged slashes
        assert r.headers["server"] == "gw"
        assert "x-envoy-upstream-service-time" not in r.headers
        assert c.get("/d/", headers={"host": "h.test", "x-big": "v" * 3000}).status_code == 431


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_open_keepalive_connection_takes_the_new_table_on_its_next_request(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/k/")})
    request = b"GET /k/ HTTP/1.1\r\nHost: a\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(request)
        assert b"\r\nserver: edge\r\n" in _read_response(sock)
        generation = edge.config()["generation"]
        edge.write("module.yaml", resource("Module", "ambassador", {"config": {"server_name": "renamed"}}))
        edge.wait_generation(generation + 1)
        sock.sendall(request)  # the same connection
        assert b"\r\nserver: renamed\r\n" in _read_response(sock)


def test_ambassador_id_and_bad_objects_do_not_stop_others(make_edge, upstream):
    edge = make_edge({
        "good.yaml": mapping("good", upstream.service, "/good/"),
        "other-id.yaml": mapping("other", upstream.service, "/other/", ambassador_id=["someone-else"]),
        "bad.yaml": mapping("bad-regex", upstream.service, "/(", prefix_regex=True)
        + mapping("no-service", "", "/x/"),
        "broken.yaml": "---\nkind: Mapping\nmetadata: {name: broken\n",
    })
    assert httpx.get(edge.url("/good/")).status_code == 200
    assert httpx.get(edge.url("/other/")).status_code == 404
    diags = edge.config()["diagnostics"]
    by_name = {d["name"]: d for d in diags if d["severity"] == "error"}
    assert by_name["bad-regex"]["field"] == "spec.prefix" and "regular expression" in by_name["bad-regex"]["message"]
    assert by_name["bad-regex"]["kind"] == "Mapping" and by_name["bad-regex"]["source"].endswith("bad.yaml")
    assert by_name["no-service"]["field"] == "spec.service"
    assert any(d["kind"] == "File" and "YAML" in d["message"] for d in diags)
    # an edit still applies while the bad objects stay bad
    gen = edge.config()["generation"]
    edge.write("good.yaml", mapping("good", upstream.service, "/better/"))
    edge.wait_generation(gen + 1)
    assert httpx.get(edge.url("/better/")).status_code == 200
    diag = json.loads(edge.admin("/ambassador/v0/diag/?json=true")[1])
    assert any(e["name"] == "bad-regex" for e in diag["errors"])
    assert b"bad-regex" in edge.admin("/ambassador/v0/diag/")[1]


def test_weights_over_100_drop_the_group(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("w1", upstream.service, "/w/", weight=60)
                      + mapping("w2", upstream.service, "/w/", weight=50)
                      + mapping("fine", upstream.service, "/fine/")})
    assert httpx.get(edge.url("/w/")).status_code == 404
    assert httpx.get(edge.url("/fine/")).status_code == 200
    errors = [d for d in edge.config()["diagnostics"] if d["field"] == "spec.weight"]
    assert {d["name"] for d in errors} == {"w1", "w2"}
    assert all("over 100" in d["message"] for d in errors)
