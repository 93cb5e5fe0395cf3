"""The one declaration of what edge does with each Mapping (and Module config) field:
every field of Emissary's v3alpha1 schema is in the table, and compile's diagnostics
follow it (a DROP field drops the Mapping with an error; a WARN field warns)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge.resources.base import DROP, HONOURED, WARN, RawObject
from edge.resources.mapping import FIELDS, KNOWN_FIELDS
from edge.resources.module import CONFIG_FIELDS, KNOWN_CONFIG
from edge.supervisor.compile import compile

ROOT = Path(__file__).resolve().parent.parent

# The json names of Emissary's MappingSpec, in its order, from
# emissary-ingress/emissary pkg/api/getambassador.io/v3alpha1/crd_mapping.go
# (commit 090de259653eb1537e6baf2682cf1c5e317dc6cc), with what edge does with each.
EMISSARY_V3ALPHA1_MAPPING = [
    ("ambassador_id", HONOURED), ("prefix", HONOURED), ("prefix_regex", HONOURED),
    ("prefix_exact", HONOURED), ("service", HONOURED), ("add_request_headers", HONOURED),
    ("add_response_headers", HONOURED), ("add_linkerd_headers", HONOURED),
    ("auto_host_rewrite", HONOURED), ("case_sensitive", HONOURED), ("dns_type", WARN),
    ("docs", WARN), ("enable_ipv4", WARN), ("enable_ipv6", WARN), ("circuit_breakers", DROP),
    ("keepalive", WARN), ("cors", HONOURED), ("retry_policy", DROP), ("respect_dns_ttl", WARN),
    ("grpc", HONOURED), ("host_redirect", DROP), ("host_rewrite", HONOURED), ("method", HONOURED),
    ("method_regex", DROP), ("outlier_detection", WARN), ("path_redirect", DROP),
    ("prefix_redirect", DROP), ("regex_redirect", DROP), ("redirect_response_code", DROP),
    ("priority", WARN), ("precedence", HONOURED), ("cluster_tag", WARN),
    ("remove_request_headers", HONOURED), ("remove_response_headers", HONOURED),
    ("resolver", HONOURED), ("rewrite", HONOURED), ("regex_rewrite", HONOURED), ("shadow", DROP),
    ("connect_timeout_ms", HONOURED), ("cluster_idle_timeout_ms", WARN),
    ("cluster_max_connection_lifetime_ms", WARN), ("timeout_ms", HONOURED),
    ("idle_timeout_ms", HONOURED), ("tls", HONOURED), ("health_checks", WARN), ("use_websocket", DROP),
    ("allow_upgrade", DROP), ("weight", HONOURED), ("bypass_auth", HONOURED),
    ("auth_context_extensions", WARN), ("bypass_error_response_overrides", WARN),
    ("error_response_overrides", WARN), ("modules", WARN), ("host", HONOURED),
    ("host_regex", HONOURED), ("hostname", HONOURED), ("headers", HONOURED),
    ("regex_headers", HONOURED), ("labels", HONOURED), ("envoy_override", DROP),
    ("load_balancer", DROP), ("query_parameters", HONOURED), ("regex_query_parameters", HONOURED),
    ("stats_name", WARN), ("v2ExplicitTLS", HONOURED), ("v2BoolHeaders", DROP),
    ("v2BoolQueryParameters", DROP),
]
# v2 Mapping fields that v3alpha1 no longer has
EMISSARY_V2_ONLY = [("rate_limits", DROP)]


@pytest.mark.parametrize("name, kind", EMISSARY_V3ALPHA1_MAPPING + EMISSARY_V2_ONLY)
def test_every_emissary_mapping_field_is_declared(name, kind):
    assert name in FIELDS, f"Emissary's Mapping field {name!r} is missing from edge.resources.mapping.FIELDS"
    assert FIELDS[name].kind == kind
    assert FIELDS[name].kind == HONOURED or FIELDS[name].message


def test_the_table_has_nothing_but_emissary_fields():
    assert set(FIELDS) == {n for n, _ in EMISSARY_V3ALPHA1_MAPPING + EMISSARY_V2_ONLY}
    assert KNOWN_FIELDS == {n for n, k in FIELDS.items() if k.kind == HONOURED}


def test_the_shipped_crd_fields_are_all_declared():
    # config/kubernetes/crds.yaml types a subset of Emissary's fields: each is in the table
    docs = [d for d in yaml.safe_load_all((ROOT / "config/kubernetes/crds.yaml").read_text()) if d]
    crd = next(d for d in docs if d["metadata"]["name"] == "mappings.getambassador.io")
    for version in crd["spec"]["versions"]:
        props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert set(props) <= set(FIELDS), set(props) - set(FIELDS)


def _mapping(name="m", **spec) -> RawObject:
    return RawObject("Mapping", "default", name, "t.yaml", {"prefix": "/p/", "service": "up:8080", **spec})


def _module(**config) -> RawObject:
    return RawObject("Module", "default", "ambassador", "t.yaml", {"config": config})


# a value that turns each DROP field on
ON = {
    "shadow": True, "host_redirect": True, "path_redirect": "/x", "prefix_redirect": "/x",
    "regex_redirect": {"pattern": "a", "substitution": "b"}, "redirect_response_code": 302,
    "method_regex": True, "allow_upgrade": ["websocket"], "use_websocket": True,
    "rate_limits": [{"descriptor": "a"}], "envoy_override": {"a": 1},
    "load_balancer": {"policy": "ring_hash", "header": "x-user"}, "v2BoolHeaders": ["x-a"],
    "v2BoolQueryParameters": ["q"], "retry_policy": {"retry_on": "5xx", "num_retries": 3},
    "circuit_breakers": [{"max_connections": 10}],
}


@pytest.mark.parametrize("name", sorted(n for n, r in FIELDS.items() if r.kind == DROP))
def test_a_drop_field_drops_the_mapping_with_an_error_naming_it(name):
    table, diags = compile([_mapping(**{name: ON[name]}), _mapping("other", prefix="/other/")])
    assert [t.mapping for r in table.routes for t in r.targets] == ["default/other"]
    errors = [d for d in diags if d.severity == "error"]
    assert [(d.name, d.field) for d in errors] == [("m", f"spec.{name}")]
    assert "not served" in errors[0].message or "cannot" in errors[0].message


def test_shadow_message():
    _, diags = compile([_mapping(shadow=True)])
    assert [d.message for d in diags] == [
        "shadow Mappings are not served by edge yet; Mapping dropped so the shadow service never answers clients"]


@pytest.mark.parametrize("spec", [{"shadow": False}, {"host_redirect": False}, {"grpc": False}, {"tls": ""},
                                  {"method_regex": False}, {"allow_upgrade": []}])
def test_a_drop_field_turned_off_is_served_without_a_word(spec):
    table, diags = compile([_mapping(**spec)])
    assert len(table.routes) == 1 and diags == []


def test_round_robin_is_what_edge_does_and_least_request_is_served_with_a_warning():
    table, diags = compile([_mapping(load_balancer={"policy": "round_robin"})])
    assert len(table.routes) == 1 and diags == []
    table, diags = compile([_mapping(load_balancer={"policy": "least_request"})])
    assert len(table.routes) == 1
    assert [(d.severity, d.field) for d in diags] == [("warning", "spec.load_balancer")]


def _auth(name="auth", **spec) -> RawObject:
    return RawObject("AuthService", "default", name, "t.yaml", {"auth_service": "ext-auth:3000", **spec})


def test_an_authservice_is_an_error_and_only_mappings_that_bypass_auth_are_served():
    table, diags = compile([_auth(), _mapping("open", prefix="/open/", bypass_auth=True),
                            _mapping("guarded", prefix="/guarded/"), _mapping("off", prefix="/off/", bypass_auth=False)])
    assert [t.mapping for r in table.routes for t in r.targets] == ["default/open"]
    errors = sorted((d.kind, d.name, d.field) for d in diags if d.severity == "error")
    assert errors == [("AuthService", "auth", "kind"), ("Mapping", "guarded", "spec.bypass_auth"),
                      ("Mapping", "off", "spec.bypass_auth")]
    guarded = next(d for d in diags if d.name == "guarded")
    assert "AuthService default/auth is not served" in guarded.message and "unauthenticated" in guarded.message


def test_bypass_auth_from_the_module_defaults_counts_and_without_an_authservice_nothing_is_dropped():
    defaults = _module(defaults={"httpmapping": {"bypass_auth": True}})
    table, diags = compile([_auth(), defaults, _mapping()])
    assert len(table.routes) == 1
    assert [(d.kind, d.severity) for d in diags] == [("AuthService", "error")]
    table, diags = compile([_mapping(), _mapping("b", prefix="/b/", bypass_auth=True)])
    assert len(table.routes) == 2 and diags == []


def test_an_authservice_for_another_ambassador_id_changes_nothing():
    table, diags = compile([_auth(ambassador_id=["other"]), _mapping()])
    assert len(table.routes) == 1 and diags == []


def test_kinds_edge_does_not_serve_are_warned_not_noticed():
    tcp = RawObject("TCPMapping", "default", "t", "t.yaml", {"port": 5432, "service": "db:5432"})
    table, diags = compile([tcp, _mapping()])
    assert len(table.routes) == 1
    assert [(d.kind, d.severity, d.field) for d in diags] == [("TCPMapping", "warning", "kind")]


@pytest.mark.parametrize("name", sorted(n for n, r in FIELDS.items() if r.kind == WARN))
def test_a_warn_field_is_served_with_a_warning(name):
    table, diags = compile([_mapping(**{name: {"x": 1}})])
    assert len(table.routes) == 1
    assert [(d.severity, d.field, d.message) for d in diags] == [("warning", f"spec.{name}", FIELDS[name].message)]


def test_an_unknown_field_warns():
    table, diags = compile([_mapping(not_a_field=1)])
    assert len(table.routes) == 1
    assert [(d.severity, d.field) for d in diags] == [("warning", "spec.not_a_field")]


def test_a_drop_field_from_the_module_defaults_drops_the_mapping():
    table, diags = compile([_module(defaults={"httpmapping": {"shadow": True}}), _mapping()])
    assert table.routes == ()
    assert [(d.severity, d.kind, d.field) for d in diags] == [("error", "Mapping", "spec.shadow")]
    assert "defaults.httpmapping" in diags[0].message


def test_edge_check_exits_1_on_a_dropped_field(tmp_path):
    from io import StringIO

    from edge.cli import check

    (tmp_path / "m.yaml").write_text(
        "apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: s}\n"
        "spec: {prefix: /, service: up, shadow: true}\n")
    out = StringIO()
    assert check([str(tmp_path)], "default", "default", out) == 1
    assert "field spec.shadow: shadow Mappings are not served" in out.getvalue()
    (tmp_path / "m.yaml").write_text(
        "apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: s}\n"
        "spec: {prefix: /, service: up, docs: {path: /doc}}\n")
    assert check([str(tmp_path)], "default", "default", StringIO()) == 0


# ---- the Module ---------------------------------------------------------------------------

def test_module_table():
    assert KNOWN_CONFIG == {n for n, r in CONFIG_FIELDS.items() if r.kind == HONOURED}
    for name, rule in CONFIG_FIELDS.items():
        assert rule.kind == HONOURED or rule.message, name


@pytest.mark.parametrize("name, value", [
    ("use_ambassador_namespace_for_service_resolution", True), ("x_forwarded_proto_redirect", True),
    ("reject_requests_with_escaped_slashes", True), ("ip_allow", [{"peer": "127.0.0.1"}]),
    ("ip_deny", [{"remote": "10.0.0.0/8"}]), ("lua_scripts", "x"),
    ("load_balancer", {"policy": "maglev"}),
])
def test_a_module_field_that_changes_routing_drops_the_module(name, value):
    table, diags = compile([_module(server_name="mine", **{name: value}), _mapping()])
    assert table.settings.server_name == "edge"  # the Module is not applied
    assert [(d.severity, d.field) for d in diags] == [("error", f"spec.config.{name}")]


@pytest.mark.parametrize("name", ["gzip", "envoy_log_type", "statsd", "retry_policy", "diag_port", "no_such_key"])
def test_a_module_tuning_field_warns(name):
    table, diags = compile([_module(server_name="mine", **{name: {"a": 1}}), _mapping()])
    assert table.settings.server_name == "mine"
    assert [(d.severity, d.field) for d in diags] == [("warning", f"spec.config.{name}")]


# ---- Module defaults.httpmapping: a Mapping's own value replaces the default whole ---------

DEFAULTS = {"add_request_headers": {"x-default": "1"}, "remove_response_headers": ["x-secret"],
            "add_response_headers": {"x-d": "d"}}


@pytest.mark.parametrize("spec, request_adds, response_removes, response_adds", [
    ({}, ("x-default",), ("x-secret",), ("x-d",)),  # the defaults apply
    ({"add_request_headers": {"x-mine": "2"}}, ("x-mine",), ("x-secret",), ("x-d",)),  # replaced, not merged
    ({"add_request_headers": {}}, (), ("x-secret",), ("x-d",)),  # an empty map removes the default's
    ({"remove_response_headers": []}, ("x-default",), (), ("x-d",)),  # an empty list too
    ({"remove_response_headers": ["x-other"], "add_response_headers": {}}, ("x-default",), ("x-other",), ()),
])
def test_mapping_values_replace_the_module_defaults(spec, request_adds, response_removes, response_adds):
    table, diags = compile([_module(defaults={"httpmapping": DEFAULTS}), _mapping(**spec)])
    assert diags == []
    (t,) = table.routes[0].targets
    assert tuple(op.name for op in t.add_request_headers) == request_adds
    assert t.remove_response_headers == response_removes
    assert tuple(op.name for op in t.add_response_headers) == response_adds


@pytest.mark.parametrize("spec, module, host_rewrite, linkerd", [
    ({"auto_host_rewrite": True}, {}, "up", None),
    ({"auto_host_rewrite": True, "host_rewrite": "given"}, {}, "given", None),  # host_rewrite wins
    ({"add_linkerd_headers": True}, {}, None, "up:8080"),
    ({}, {"add_linkerd_headers": True}, None, "up:8080"),
    ({"add_linkerd_headers": False}, {"add_linkerd_headers": True}, None, None),  # the Mapping's wins
    ({"service": "http://svc.ns"}, {"add_linkerd_headers": True}, None, "svc.ns:80"),
    ({"service": "[::1]:81", "add_linkerd_headers": True}, {}, None, "[::1]:81"),
])
def test_auto_host_rewrite_and_linkerd_headers(spec, module, host_rewrite, linkerd):
    table, diags = compile([_module(**module), _mapping(**spec)])
    assert diags == []
    (t,) = table.routes[0].targets
    assert t.host_rewrite == host_rewrite
    ops = [(op.value, op.append) for op in t.add_request_headers if op.name == "l5d-dst-override"]
    assert ops == ([] if linkerd is None else [(linkerd, False)])


# ---- internal routes: check_alive, check_ready and diag through the Listener ---------------

from edge.supervisor.compile import CompileOptions, admin_endpoint  # noqa: E402


def _internal(table):
    return {r.path: (r.precedence, r.targets[0].cluster, r.targets[0].rewrite)
            for r in table.routes if r.targets[0].mapping.startswith("internal/")}


@pytest.mark.parametrize("config, paths", [
    ({}, {"/ambassador/v0/check_alive", "/ambassador/v0/check_ready"}),
    ({"diagnostics": {"allow_non_local": True}},
     {"/ambassador/v0/check_alive", "/ambassador/v0/check_ready", "/ambassador/v0/diag/"}),
    ({"diagnostics": {"enabled": False, "allow_non_local": True}},
     {"/ambassador/v0/check_alive", "/ambassador/v0/check_ready"}),
    ({"liveness_probe": {"enabled": False}, "readiness_probe": {"enabled": False}}, set()),
])
def test_internal_routes(config, paths):
    table, diags = compile([_module(**config), _mapping(prefix="/")], CompileOptions(admin_address="127.0.0.1:9999"))
    assert diags == []
    internal = _internal(table)
    assert set(internal) == paths
    for path, (precedence, cluster, rewrite) in internal.items():
        assert precedence == 1_000_000 and rewrite == path and cluster == "cluster_edge_admin"
    assert not any(r.path.startswith("/edge/") for r in table.routes)
    # they come first, and every virtual host has them
    assert [r.path for r in table.routes[:len(paths)]] == sorted(paths, key=lambda p: (-len(p), p))
    if paths:
        (admin,) = [c for c in table.clusters if c.name == "cluster_edge_admin"]
        assert [(e.address, e.port) for e in admin.endpoints] == [("127.0.0.1", 9999)] and admin.discovery == "static"


def test_internal_routes_are_in_every_virtual_host():
    hosts = [RawObject("Host", "default", n, "t.yaml", {"hostname": h}) for n, h in (("a", "a.example"), ("b", "*"))]
    table, _ = compile([*hosts, _mapping(hostname="a.example")], CompileOptions(admin_address="127.0.0.1:1"))
    internal = {i for i, r in enumerate(table.routes) if r.targets[0].mapping.startswith("internal/")}
    assert len(internal) == 2
    for vh in table.virtual_hosts:
        assert internal <= set(vh.routes)


def test_no_internal_routes_without_an_admin_address():
    table, _ = compile([_mapping()])
    assert _internal(table) == {}


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:8877", ("127.0.0.1", 8877)), ("0.0.0.0:8877", ("127.0.0.1", 8877)),
    (":8877", ("127.0.0.1", 8877)), ("[::]:81", ("::1", 81)), ("[::1]:81", ("::1", 81)),
    ("10.1.2.3:5", ("10.1.2.3", 5)),
])
def test_admin_endpoint(address, expected):
    ep = admin_endpoint(address)
    assert (ep.address, ep.port) == expected


def test_host_and_hostname_both_set_uses_hostname_as_emissary_does():
    table, diags = compile([_mapping(host="a.example", hostname="b.example")])
    assert table.routes[0].host == "b.example"
    assert [(d.severity, d.field) for d in diags] == [("warning", "spec.host")]


def test_edge_check_fails_on_an_authservice_and_names_the_guarded_mapping(tmp_path, capsys):
    from edge.cli import check

    (tmp_path / "auth.yaml").write_text(
        "apiVersion: getambassador.io/v3alpha1\nkind: AuthService\nmetadata: {name: auth}\n"
        "spec: {auth_service: 'ext-auth:3000'}\n---\n"
        "apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: api}\n"
        "spec: {prefix: /api/, service: api}\n")
    assert check([str(tmp_path)], "default", "default") == 1
    out = capsys.readouterr().out
    assert "Mapping default/api field spec.bypass_auth: AuthService default/auth is not served" in out
