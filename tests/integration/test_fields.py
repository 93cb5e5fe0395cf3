"""Fields whose meaning changes where traffic goes, and Envoy's own headers, through the
real `edge serve` (2 workers) and real upstreams."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import mapping, resource

pytestmark = pytest.mark.integration


def echo(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.json()


def from_upstream(resp: httpx.Response) -> bool:
    """Whether the test upstream (which echoes JSON with its name) answered."""
    try:
        data = resp.json()
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("upstream") == "a"


def header(data: dict, name: str) -> list[str]:
    return [v for n, v in data["headers"] if n.lower() == name]


def test_a_shadow_mapping_never_answers_a_client(make_edge, upstream, upstream_b):
    edge = make_edge({"m.yaml": "".join([
        mapping("real", upstream.service, "/svc/"),
        mapping("shadow", upstream_b.service, "/svc/", shadow=True),
        mapping("shadow-only", upstream_b.service, "/only-shadow/", shadow=True),
    ])})
    with httpx.Client(base_url=edge.url("")) as c:
        # with the shadow served as a canary, b would answer about half of these
        assert {echo(c.get(f"/svc/{i}"))["upstream"] for i in range(40)} == {"a"}
        assert c.get("/only-shadow/x").status_code == 404
    errors = [d for d in edge.config()["diagnostics"] if d["severity"] == "error"]
    assert {(d["name"], d["field"]) for d in errors} == {("shadow", "spec.shadow"), ("shadow-only", "spec.shadow")}


def test_a_host_redirect_mapping_is_never_proxied(make_edge, upstream, upstream_b):
    edge = make_edge({"m.yaml": "".join([
        mapping("redirect", upstream_b.service, "/go/", host_redirect=True, path_redirect="/elsewhere"),
        mapping("fallback", upstream.service, "/"),
    ])})
    with httpx.Client(base_url=edge.url("")) as c:
        assert echo(c.get("/go/x"))["upstream"] == "a"  # the other Mapping answers, not b, not a 503
    errors = [(d["name"], d["field"]) for d in edge.config()["diagnostics"] if d["severity"] == "error"]
    assert sorted(errors) == [("redirect", "spec.host_redirect"), ("redirect", "spec.path_redirect")]


def test_host_headers_and_envoy_headers_upstream(make_edge, upstream):
    s = upstream.service
    host = s.rsplit(":", 1)[0]
    edge = make_edge({"m.yaml": "".join([
        mapping("auto", s, "/auto/", auto_host_rewrite=True),
        mapping("both", s, "/both/", auto_host_rewrite=True, host_rewrite="given.example"),
        mapping("l5d", s, "/l5d/", add_linkerd_headers=True),
        mapping("plain", s, "/plain/", timeout_ms=1500),
        mapping("notimeout", s, "/notimeout/", timeout_ms=0),
        mapping("nost", s, "/nost/", remove_response_headers=["x-envoy-upstream-service-time"]),
    ])})
    with httpx.Client(base_url=edge.url("")) as c:
        assert header(echo(c.get("/auto/x", headers={"host": "outside.example"})), "host") == [host]
        assert header(echo(c.get("/both/x")), "host") == ["given.example"]
        assert header(echo(c.get("/l5d/x", headers={"l5d-dst-override": "evil:1"})), "l5d-dst-override") == [s]
        assert header(echo(c.get("/auto/x")), "l5d-dst-override") == []
        plain = c.get("/plain/x", headers={"x-envoy-expected-rq-timeout-ms": "1"})
        assert header(echo(plain), "x-envoy-expected-rq-timeout-ms") == ["1500"]
        assert "x-envoy-upstream-service-time" in plain.headers
        assert header(echo(c.get("/notimeout/x")), "x-envoy-expected-rq-timeout-ms") == []
        nost = c.get("/nost/x")
        assert nost.status_code == 200 and "x-envoy-upstream-service-time" not in nost.headers


def test_module_linkerd_headers_and_suppress_envoy_headers(make_edge, upstream):
    s = upstream.service
    edge = make_edge({"m.yaml": "".join([
        resource("Module", "ambassador", {"config": {"add_linkerd_headers": True, "suppress_envoy_headers": True}}),
        mapping("on", s, "/on/"),
        mapping("off", s, "/off/", add_linkerd_headers=False),
    ])})
    with httpx.Client(base_url=edge.url("")) as c:
        on = c.get("/on/x")
        data = echo(on)
        assert header(data, "l5d-dst-override") == [s]
        assert header(data, "x-envoy-expected-rq-timeout-ms") == [] and header(data, "x-envoy-original-path") == []
        assert "x-envoy-upstream-service-time" not in on.headers
        assert header(echo(c.get("/off/x")), "l5d-dst-override") == []


def test_check_paths_through_the_listener_and_diag_only_when_allowed(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("all", upstream.service, "/")})
    with httpx.Client(base_url=edge.url("")) as c:
        ready = c.get("/ambassador/v0/check_ready")
        assert ready.status_code == 200 and not from_upstream(ready)  # the admin answered
        assert c.get("/ambassador/v0/check_alive").status_code == 200
        # diag is not reachable through the Listener by default (diagnostics.allow_non_local false):
        # the catch-all Mapping gets it; the admin's own API never is
        assert echo(c.get("/ambassador/v0/diag/"))["upstream"] == "a"
        assert echo(c.get("/edge/v1/config"))["upstream"] == "a"
    edge.write("module.yaml", resource("Module", "ambassador", {"config": {"diagnostics": {"allow_non_local": True}}}))
    deadline = time.monotonic() + 20  # the file watch and publish; not a speed bound
    with httpx.Client(base_url=edge.url("")) as c:
        while True:
            diag = c.get("/ambassador/v0/diag/?json=true")
            if diag.status_code == 200 and not from_upstream(diag):
                break
            assert time.monotonic() < deadline, diag.text
            time.sleep(0.05)
        assert echo(c.get("/edge/v1/config"))["upstream"] == "a"
