"""The compiler, table-driven: Emissary semantics and per-object diagnostics."""

from __future__ import annotations

import pytest

from edge.resources.base import RawObject
from edge.supervisor.compile import CompileOptions, canary_weights, compile, hostglob_matches


def obj(kind, name, spec, labels=None, ns="default", source="f.yaml"):
    return RawObject(kind, ns, name, source, spec, labels or {})


def m(name, prefix="/", service="10.0.0.1:8080", **spec):
    return obj("Mapping", name, {"prefix": prefix, "service": service, **spec})


@pytest.mark.parametrize("weights, expected", [
    ([None], [100]),
    ([None, None], [50, 100]),
    ([20, None], [20, 100]),
    ([30, None, None], [30, 65, 100]),
    ([50, 50], [50, 100]),
    ([60, 50], None),
    ([10, 10], [50, 100]),  # given weights under 100 are scaled
])
def test_canary_weights(weights, expected):
    assert canary_weights(weights) == expected


@pytest.mark.parametrize("a, b, ok", [
    ("*", "x.com", True), ("x.com", "x.com", True), ("*.x.com", "a.x.com", True),
    ("*.x.com", "x.org", False), ("a.*", "a.b", True), ("*.x.com", "*.com", True), ("a.com", "b.com", False),
])
def test_hostglob(a, b, ok):
    assert hostglob_matches(a, b) is ok


def test_defaults_order_and_rewrite():
    table, diags = compile([m("short", "/a/"), m("long", "/a/b/"), m("prec", "/z/", precedence=5),
                            m("keep", "/k/", rewrite="")])
    assert diags == []
    assert [r.path for r in table.routes] == ["/z/", "/a/b/", "/a/", "/k/"]
    assert table.routes[2].targets[0].rewrite == "/" and table.routes[3].targets[0].rewrite is None
    assert table.routes[0].targets[0].timeout_ms == 3000
    assert [lst.port for lst in table.listeners] == [8080]  # Emissary's default listener


@pytest.mark.parametrize("spec, field, words", [
    ({"service": "a"}, "spec.prefix", "required"),
    ({"prefix": "/a"}, "spec.service", "required"),
    ({"prefix": "/(", "prefix_regex": True, "service": "a"}, "spec.prefix", "regular expression"),
    ({"prefix": "a", "service": "a"}, "spec.prefix", "start with"),
    ({"prefix": "/a", "service": "a", "timeout_ms": "soon"}, "spec.timeout_ms", "integer"),
    ({"prefix": "/a", "service": "a", "weight": 101}, "spec.weight", "at most 100"),
    ({"prefix": "/a", "service": "ftp://a"}, "spec.service", "scheme"),
    ({"prefix": "/a", "service": "a:99999"}, "spec.service", "bad port"),
    ({"prefix": "/a", "service": "a", "headers": ["x"]}, "spec.headers", "mapping"),
    ({"prefix": "/a", "service": "a", "regex_headers": {"x": "("}}, "spec.regex_headers.x", "regular expression"),
])
def test_invalid_mappings_are_dropped_with_a_diagnostic(spec, field, words):
    table, diags = compile([obj("Mapping", "bad", spec), m("good", "/good/")])
    errors = [d for d in diags if d.severity == "error"]
    assert len(errors) == 1
    d = errors[0]
    assert (d.kind, d.namespace, d.name, d.field, d.source) == ("Mapping", "default", "bad", field, "f.yaml")
    assert words in d.message
    assert [r.path for r in table.routes] == ["/good/"]


def test_ambassador_id_and_duplicates():
    table, diags = compile([m("a", "/a/", ambassador_id="other"), m("b", "/b/", ambassador_id=["x", "mine"]),
                            obj("Mapping", "b", {"prefix": "/dup/", "service": "a", "ambassador_id": "mine"}, source="g.yaml")],
                           CompileOptions(ambassador_id="mine"))
    assert [r.path for r in table.routes] == ["/b/"]
    assert any(d.name == "b" and "duplicate" in d.message for d in diags)


def test_listener_and_module_validation():
    table, diags = compile([
        obj("Listener", "l1", {"port": 8081, "protocol": "HTTP", "securityModel": "XFP"}),
        obj("Listener", "l2", {"port": 8081, "protocol": "HTTP", "securityModel": "XFP"}),
        obj("Listener", "l3", {"port": 8082, "protocol": "HTTP", "securityModel": "NOPE"}),
        obj("Module", "ambassador", {"config": {"max_request_headers_kb": "lots"}}),
    ])
    fields = {(d.name, d.field) for d in diags if d.severity == "error"}
    assert fields == {("l2", "spec.port"), ("l3", "spec.securityModel"), ("ambassador", "spec.config.max_request_headers_kb")}
    assert [lst.port for lst in table.listeners] == [8081]


def test_host_association_and_listener_binding():
    table, _ = compile([
        obj("Host", "h1", {"hostname": "a.com"}, ns="team1"),
        obj("Host", "h2", {"hostname": "*", "mappingSelector": {"matchLabels": {"app": "x"}}}, ns="team2"),
        obj("Listener", "l", {"port": 8080, "protocol": "HTTP", "securityModel": "XFP",
                              "hostBinding": {"namespace": {"from": "SELF"}}}, ns="team1"),
        m("plain", "/p/"),
        obj("Mapping", "labelled", {"prefix": "/l/", "service": "a"}, labels={"app": "x"}),
        m("other-host", "/o/", hostname="b.com"),
    ])
    vh = {v.name: [table.routes[i].path for i in v.routes] for v in table.virtual_hosts}
    assert sorted(vh["team1/h1"]) == ["/l/", "/p/"]
    assert vh["team2/h2"] == ["/l/"]
    listener = table.listeners[0]
    assert [table.virtual_hosts[i].name for i in listener.hosts] == ["team1/h1"]


def test_same_input_same_table():
    objs = [m(f"m{i}", f"/p{i}/") for i in range(20)]
    assert compile(objs)[0] == compile(list(reversed(objs)))[0]


def test_host_association_index_agrees_with_the_rule_on_random_configurations():
    import random

    from edge.supervisor import compile as compiler
    from edge.supervisor.compile import mapping_attaches
    rng = random.Random(11)
    names = ["a.example.com", "b.example.com", "*.example.com", "a.*", "*", "A.Example.com", "c.org", "*.org"]
    for trial in range(30):
        objs = [obj("Host", f"h{j}", {"hostname": rng.choice(names),
                                       **({"mappingSelector": {"matchLabels": {"team": "x"}}} if rng.random() < 0.2 else {})})
                for j in range(rng.randrange(1, 6))]
        for i in range(rng.randrange(1, 12)):
            spec = {}
            r = rng.random()
            if r < 0.4:
                spec["hostname"] = rng.choice(names)
            elif r < 0.5:
                spec["host"] = rng.choice([n for n in names if "*" not in n])
            elif r < 0.6:
                spec.update(host="[a-c]\\\\.example\\\\.com", host_regex=True)
            objs.append(obj("Mapping", f"m{i}", {"prefix": f"/p{i % 4}/", "service": "10.0.0.1:80", **spec},
                            labels={"team": "x"} if rng.random() < 0.5 else None))
        table, _ = compile(objs)
        # reference: every (Host, route) pair through the rule itself
        diags = compiler._Diags()
        module = compiler.compile_module([], diags)
        hosts = compiler.compile_hosts([o for o in objs if o.kind == "Host"], diags)
        resolvers = compiler.compile_resolvers({}, module, diags)
        mappings = compiler.compile_mappings([o for o in objs if o.kind == "Mapping"], module, resolvers, diags)
        routes, _ = compiler.build_routes(mappings, module, diags)
        assert len(table.virtual_hosts) == len(hosts)
        for vh in table.virtual_hosts:
            ns, name = vh.name.split("/")
            spec = next(s for o, s in hosts if o.name == name)
            expected = tuple(i for i, (_, members) in enumerate(routes) if any(mapping_attaches(spec, m) for m in members))
            assert vh.routes == expected, (trial, vh, [o.spec for o in objs])


# ---- cors: a Mapping's, else the Module's (Emissary's ircors.py and v3route.py) -------------

from edge.model import CorsPolicy  # noqa: E402

FULL_CORS = {"origins": ["https://a.example", "https://b.example"], "methods": ["GET", "POST", "OPTIONS"],
             "headers": ["content-type", "x-auth"], "exposed_headers": ["x-request-id"], "max_age": "86400",
             "credentials": True}


def _cors_of(table, prefix):
    (route,) = [r for r in table.routes if r.path == prefix]
    return route.targets[0].cors


@pytest.mark.parametrize("cors, expected", [
    (FULL_CORS, CorsPolicy(("https://a.example", "https://b.example"), "GET, POST, OPTIONS", "content-type, x-auth",
                           "x-request-id", "86400", True)),
    # v2's comma-separated origins; strings kept as written; an integer max_age
    ({"origins": "https://a.example, https://b.example", "methods": "GET,POST", "max_age": 600},
     CorsPolicy(("https://a.example", "https://b.example"), "GET,POST", max_age="600")),
    ({"origins": ["*"], "credentials": False}, CorsPolicy(("*",))),
    ({"origins": ["*"], "credentials": "true", "v2CommaSeparatedOrigins": True}, CorsPolicy(("*",), credentials=True)),
    ({"origins": "*", "headers": [], "methods": ""}, CorsPolicy(("*",))),  # empty values are not sent, as in Emissary
    ({"methods": ["GET"]}, None),  # no origin is allowed: nothing to serve
    ({}, None),
    (None, None),
])
def test_a_mappings_cors_compiles_into_its_target(cors, expected):
    table, diags = compile([m("c", "/c/", cors=cors)])
    assert diags == []
    assert _cors_of(table, "/c/") == expected


MODULE_CORS = {"origins": ["https://module.example"], "methods": ["GET"]}


def test_the_modules_cors_is_for_mappings_without_their_own():
    module = obj("Module", "ambassador", {"config": {"cors": MODULE_CORS}})
    table, diags = compile([module, m("plain", "/plain/"), m("own", "/own/", cors={"origins": ["https://own.example"]}),
                            m("off", "/off/", cors={})])
    assert diags == []
    assert _cors_of(table, "/plain/") == CorsPolicy(("https://module.example",), "GET")
    assert _cors_of(table, "/own/") == CorsPolicy(("https://own.example",))  # replaced whole, not merged
    assert _cors_of(table, "/off/") is None  # a cors of its own that allows nothing hides the Module's


def test_cors_from_the_modules_mapping_defaults():
    module = obj("Module", "ambassador", {"config": {"defaults": {"httpmapping": {"cors": {"origins": ["https://d.example"]}}}}})
    table, diags = compile([module, m("d", "/d/")])
    assert diags == []
    assert _cors_of(table, "/d/") == CorsPolicy(("https://d.example",))


@pytest.mark.parametrize("cors, field, words", [
    ("yes", "spec.cors", "mapping"),
    (["*"], "spec.cors", "mapping"),
    ({"origins": 5}, "spec.cors.origins", "list of origins"),
    ({"origins": ["https://a", 7]}, "spec.cors.origins", "list of origins"),
    ({"origins": ["https://a\r\nx-evil: 1"]}, "spec.cors.origins", "CR, LF"),
    ({"origins": ["*"], "methods": {"GET": True}}, "spec.cors.methods", "list of strings"),
    ({"origins": ["*"], "headers": 3}, "spec.cors.headers", "list of strings"),
    ({"origins": ["*"], "exposed_headers": ["x\ny"]}, "spec.cors.exposed_headers", "CR, LF"),
    ({"origins": ["*"], "credentials": "maybe"}, "spec.cors.credentials", "true or false"),
    ({"origins": ["*"], "max_age": [1]}, "spec.cors.max_age", "seconds"),
    ({"origins": ["*"], "max_age": -1}, "spec.cors.max_age", "seconds"),
])
def test_a_bad_cors_drops_the_mapping_with_a_diagnostic_naming_the_field(cors, field, words):
    table, diags = compile([m("bad", "/bad/", cors=cors), m("good", "/good/")])
    errors = [d for d in diags if d.severity == "error"]
    assert [(d.kind, d.name, d.field) for d in errors] == [("Mapping", "bad", field)]
    assert words in errors[0].message
    assert [r.path for r in table.routes] == ["/good/"]


def test_a_bad_cors_in_the_module_drops_the_module():
    module = obj("Module", "ambassador", {"config": {"server_name": "mine", "cors": {"origins": {"a": 1}}}})
    table, diags = compile([module, m("plain", "/plain/")])
    assert [(d.kind, d.severity, d.field) for d in diags] == [("Module", "error", "spec.config.cors.origins")]
    assert table.settings.server_name == "edge"  # none of the Module is applied
    assert _cors_of(table, "/plain/") is None


def test_a_canary_group_has_one_cors_as_in_emissary():
    a, b = {"origins": ["https://a.example"]}, {"origins": ["https://b.example"]}
    table, diags = compile([m("m1", "/g/", cors=a), m("m2", "/g/", weight=10), m("m3", "/g/", weight=10, cors=b)])
    (route,) = table.routes
    assert {t.cors for t in route.targets} == {CorsPolicy(("https://b.example",))}  # the last one's, by name
    assert [(d.severity, d.name, d.field) for d in diags] == [("warning", "m1", "spec.cors")]
    assert "default/m3's" in diags[0].message
    table, diags = compile([m("m1", "/g/", cors=a), m("m2", "/g/", weight=10)])
    assert diags == [] and {t.cors for t in table.routes[0].targets} == {CorsPolicy(("https://a.example",))}
