"""Mapping `grpc: true` and Module `enable_grpc_web` on the compile side, without sockets:
an HTTP/2 cluster, h2 offered by ALPN when TLS is originated, Emissary's refusal to merge a
gRPC cluster with an HTTP/1 one of the same name, and the Module setting."""

from __future__ import annotations

from edge.resources.base import RawObject
from edge.supervisor.compile import compile


def obj(kind, name, spec, ns="default"):
    return RawObject(kind, ns, name, "f.yaml", spec, {})


def mapping(name, service, prefix=None, **spec):
    return obj("Mapping", name, {"prefix": prefix or f"/{name}/", "service": service, **spec})


def cluster_of(table, name):
    target = next(t for r in table.routes for t in r.targets if t.mapping == f"default/{name}")
    return next(c for c in table.clusters if c.name == target.cluster)


def test_grpc_mapping_gets_an_http2_cluster():
    table, diags = compile([mapping("g", "10.0.0.1:50051", "/echo.Echo/", grpc=True, rewrite="/echo.Echo/"),
                            mapping("h", "10.0.0.2:8080")])
    assert [d for d in diags if d.severity in ("error", "warning")] == []
    grpc, http = cluster_of(table, "g"), cluster_of(table, "h")
    assert (grpc.http2, grpc.name, grpc.tls) == (True, "cluster_10_0_0_1_50051", -1)
    assert http.http2 is False
    assert cluster_of(compile([mapping("f", "10.0.0.1:50051", grpc=False)])[0], "f").http2 is False


def test_grpc_must_be_a_boolean():
    table, diags = compile([mapping("g", "10.0.0.1:50051", grpc="yes")])
    assert [(d.severity, d.name, d.field) for d in diags] == [("error", "g", "spec.grpc")]
    assert table.routes == ()


def test_a_grpc_and_an_http1_mapping_to_one_service_do_not_merge():
    # Emissary: "cannot merge cluster ...: mismatched attributes grpc"; the first one (by name) stays
    table, diags = compile([mapping("a-http", "10.0.0.1:9000"), mapping("b-grpc", "10.0.0.1:9000", grpc=True)])
    errors = [(d.name, d.field) for d in diags if d.severity == "error"]
    assert errors == [("b-grpc", "spec.grpc")]
    assert "mismatched attributes grpc" in next(d.message for d in diags if d.name == "b-grpc")
    assert [t.mapping for r in table.routes for t in r.targets] == ["default/a-http"]
    assert [c.http2 for c in table.clusters] == [False]


def test_grpc_over_tls_offers_h2_and_http1_over_tls_offers_http1():
    ctx = obj("TLSContext", "up", {"alpn_protocols": "h2,http/1.1"})
    table, diags = compile([ctx, mapping("g", "10.0.0.1:443", tls="up", grpc=True),
                            mapping("h", "10.0.0.2:443", tls="up"), mapping("s", "https://10.0.0.3", grpc=True)])
    assert [d for d in diags if d.severity == "error"] == []
    g, h, s = cluster_of(table, "g"), cluster_of(table, "h"), cluster_of(table, "s")
    assert table.client_tls[g.tls].alpn_protocols == ("h2",) and g.http2
    assert table.client_tls[h.tls].alpn_protocols == ("http/1.1",) and not h.http2
    assert table.client_tls[s.tls].alpn_protocols == ("h2",) and s.http2  # service https:// with no TLSContext
    assert g.tls != h.tls


def test_enable_grpc_web():
    module = obj("Module", "ambassador", {"config": {"enable_grpc_web": True}})
    table, diags = compile([module, mapping("g", "10.0.0.1:50051", grpc=True)])
    assert table.settings.grpc_web is True
    assert not [d for d in diags if d.field == "spec.config.enable_grpc_web"]
    assert compile([mapping("g", "10.0.0.1:50051", grpc=True)])[0].settings.grpc_web is False
    _, diags = compile([obj("Module", "ambassador", {"config": {"enable_grpc_web": "on"}})])
    assert [d.field for d in diags if d.severity == "error"] == ["spec.config.enable_grpc_web"]
