"""Route lookup: the indexes must pick exactly what a walk of the ordered routes picks."""

from __future__ import annotations

import random

from edge.resources.base import RawObject
from edge.supervisor.compile import compile
from edge.worker.router import Router


def m(name, prefix, **spec):
    return RawObject("Mapping", "default", name, "f.yaml", {"prefix": prefix, "service": "10.0.0.1:80", **spec})


def linear(router: Router, port: int, host: str, path: str, method: bytes):
    """The reference: the first route of the virtual host, in table order, that matches."""
    vhost = router._vhosts[port].lookup(host)
    if vhost is None:
        return None
    for r in vhost.routes:
        if r.match_path(path) >= 0 and (r.method is None or r.method == method) and r.match_host(host):
            return r
    return None


def test_index_agrees_with_a_linear_walk_on_random_tables():
    rng = random.Random(7)
    segments = ["a", "b", "ab", "api", "v1", "A"]
    for trial in range(40):
        objs = []
        for i in range(rng.randrange(1, 40)):
            prefix = "/" + "/".join(rng.choice(segments) for _ in range(rng.randrange(0, 3)))
            if rng.random() < 0.5:
                prefix += "/"
            spec = {}
            kind = rng.random()
            if kind < 0.15:
                spec["prefix_exact"] = True
            elif kind < 0.25:
                spec["prefix_regex"] = True
                prefix = prefix.rstrip("/") + "/.*"
            if rng.random() < 0.2:
                spec["case_sensitive"] = False
            if rng.random() < 0.2:
                spec["precedence"] = rng.randrange(-2, 3)
            if rng.random() < 0.1:
                spec["method"] = "POST"
            objs.append(m(f"m{i}", prefix, **spec))
        router = Router(compile(objs)[0])
        port = next(iter(router.listeners))
        for _ in range(60):
            path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randrange(0, 4)))
            method = rng.choice([b"GET", b"POST"])
            found = router.match(port, "x.example", path, method, [], "")
            expected = linear(router, port, "x.example", path, method)
            assert (found[0] if found else None) is expected, (trial, path, [o.spec for o in objs])


def test_lookup_does_not_walk_ten_thousand_routes():
    router = Router(compile([m(f"m{i}", f"/svc-{i}/") for i in range(10_000)])[0])
    port = next(iter(router.listeners))
    vhost = router._vhosts[port].lookup("x")
    assert vhost.candidates("/svc-5000/x") == [r.order for r in vhost.routes if r.path == "/svc-5000/"]
    route, matched = router.match(port, "x", "/svc-5000/x", b"GET", [], "")
    assert route.path == "/svc-5000/" and matched == len("/svc-5000/")
    assert router.match(port, "x", "/nothing", b"GET", [], "") is None


def test_wildcard_hosts_longest_first():
    objs = [RawObject("Host", "default", name, "f.yaml", {"hostname": hostname}) for name, hostname in
            [("a", "*.example.com"), ("b", "*.api.example.com"), ("c", "api.*"), ("d", "exact.example.com")]]
    objs += [m(f"m-{h}", "/", hostname=hostname) for h, hostname in
             [("a", "*.example.com"), ("b", "*.api.example.com"), ("c", "api.*"), ("d", "exact.example.com")]]
    router = Router(compile(objs)[0])
    port = next(iter(router.listeners))

    def vhost_of(host):
        index = router._vhosts[port].lookup(host)
        return None if index is None else {r.route.host for r in index.routes}

    # each Host's virtual host holds the Mappings whose hostname globs intersect its own
    assert vhost_of("exact.example.com") == {"exact.example.com", "*.example.com"}
    assert vhost_of("x.api.example.com") == {"*.api.example.com", "*.example.com"}  # the longer suffix
    assert vhost_of("x.example.com") == {"*.example.com", "*.api.example.com", "exact.example.com"}
    assert vhost_of("api.other.org") == {"api.*"}
    assert vhost_of("nothing.org") is None


def test_an_endpoint_change_reuses_the_compiled_routes():
    from dataclasses import replace

    from edge.model import Endpoint
    table = compile([m("a", "/a/"), m("b", "/b/")])[0]
    router = Router(table, 1)
    moved = replace(table, clusters=tuple(replace(c, endpoints=(Endpoint("10.9.9.9", 81),)) for c in table.clusters))
    fast = router.with_table(moved, 2)
    assert fast.generation == 2 and fast._vhosts is router._vhosts
    assert [c.endpoints for c in fast.clusters.values()] == [(Endpoint("10.9.9.9", 81),)]
    assert router.clusters[next(iter(router.clusters))].endpoints != fast.clusters[next(iter(fast.clusters))].endpoints
    port = next(iter(fast.listeners))
    assert fast.match(port, "x", "/b/1", b"GET", [], "")[0].path == "/b/"
    rerouted = router.with_table(compile([m("a", "/a/"), m("c", "/c/")])[0], 3)
    assert rerouted._vhosts is not router._vhosts and rerouted.match(port, "x", "/c/", b"GET", [], "") is not None


def test_envoy_header_rules_follow_the_module_once_per_table():
    module = RawObject("Module", "default", "ambassador", "f.yaml", {"config": {"suppress_envoy_headers": True}})
    for objs, expected_add, service_time in [
        ([m("a", "/", timeout_ms=1234)], b"x-envoy-expected-rq-timeout-ms: 1234\r\n", True),
        ([module, m("a", "/", timeout_ms=1234)], b"", False),
    ]:
        table, _ = compile(objs)
        router = Router(table)
        route, _ = router.match(8080, "h", "/x", b"GET", [], "")
        rules = route.targets[0].headers
        assert rules.request_add == expected_add and rules.service_time is service_time
