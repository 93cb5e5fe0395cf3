"""Kubernetes objects -> RawObjects and endpoints (edge.resources.kubernetes,
edge.supervisor.endpoints): table-driven, pure."""

from __future__ import annotations

import pytest

from edge.model import Endpoint
from edge.resources import kubernetes as k8s
from edge.supervisor import compile as compiler
from edge.supervisor.endpoints import EndpointBook, dns_names, endpoints_for, fill
from tests.certgen import b64, pki


def svc(name="quote", namespace="default", annotation=None, ports=({"name": "http", "port": 80},),
        cluster_ip="10.0.0.5", labels=None):
    meta = {"name": name, "namespace": namespace, "labels": labels or {}}
    if annotation is not None:
        meta["annotations"] = {k8s.CONFIG_ANNOTATION: annotation}
    return {"metadata": meta, "spec": {"clusterIP": cluster_ip, "ports": list(ports)}}


def test_annotation_documents_become_objects_in_the_services_namespace():
    objects, diags = k8s.service_annotation(svc(namespace="shop", annotation="""
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
name: quote-backend
prefix: /backend/
service: quote
metadata_labels: {team: a}
---
apiVersion: getambassador.io/v2
kind: Mapping
name: elsewhere
namespace: other
prefix: /x/
service: x
"""))
    assert diags == []
    first, second = objects
    assert (first.kind, first.namespace, first.name, first.labels) == ("Mapping", "shop", "quote-backend", {"team": "a"})
    assert first.spec == {"prefix": "/backend/", "service": "quote"}
    assert first.source == "kubernetes:service/shop/quote"
    assert (second.namespace, second.api_version) == ("other", "getambassador.io/v2")


@pytest.mark.parametrize("text, field", [
    ("kind: Mapping\nname: [", "metadata.annotations.getambassador.io/config"),
    ("apiVersion: getambassador.io/v3alpha1\nname: x\n", "metadata.annotations.getambassador.io/config[0].kind"),
    ("apiVersion: getambassador.io/v3alpha1\nkind: Mapping\n", "metadata.annotations.getambassador.io/config[0].name"),
    ("apiVersion: v1\nkind: Mapping\nname: x\n", "metadata.annotations.getambassador.io/config[0].apiVersion"),
    ("- a\n- b\n", "metadata.annotations.getambassador.io/config[0]"),
])
def test_bad_annotations_name_the_service_and_field(text, field):
    objects, diags = k8s.service_annotation(svc(annotation=text))
    assert objects == []
    assert [(d.kind, d.name, d.field) for d in diags] == [("Service", "quote", field)]


def ingress(annotations=None, class_name=None, **spec):
    return {"metadata": {"name": "web", "namespace": "shop", "annotations": annotations or {}},
            "spec": {**({"ingressClassName": class_name} if class_name else {}), **spec}}


OURS = {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "edge"},
        "spec": {"controller": "getambassador.io/ingress-controller"}}
NGINX = {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}


@pytest.mark.parametrize("ing, classes, ours", [
    (ingress({"kubernetes.io/ingress.class": "ambassador"}), [], True),
    (ingress({"kubernetes.io/ingress.class": "nginx"}), [OURS], False),
    (ingress(class_name="edge"), [OURS, NGINX], True),
    (ingress(class_name="nginx"), [OURS, NGINX], False),
    (ingress(), [OURS], False),
    (ingress(), [{**OURS, "metadata": {"name": "edge", "annotations": {k8s.DEFAULT_CLASS_ANNOTATION: "true"}}}], True),
])
def test_ingress_class_selection_follows_emissary(ing, classes, ours):
    names, default = k8s.our_ingress_classes(classes)
    assert k8s.ingress_is_ours(ing, names, default) is ours


def test_an_ingress_becomes_mappings_and_tls_contexts_as_emissary_translates_it():
    backend = {"service": {"name": "api", "port": {"number": 8080}}}
    ing = ingress({"kubernetes.io/ingress.class": "ambassador", k8s.AMBASSADOR_ID_ANNOTATION: "blue"},
                  defaultBackend={"service": {"name": "home", "port": {"name": "http"}}},
                  rules=[{"host": "api.example.com", "http": {"paths": [
                      {"path": "/v1/", "pathType": "Prefix", "backend": backend},
                      {"path": "/health", "pathType": "Exact", "backend": backend}]}},
                      {"host": "*.example.com", "http": {"paths": [{"pathType": "ImplementationSpecific",
                                                                     "backend": backend}]}}],
                  tls=[{"hosts": ["api.example.com"], "secretName": "api-cert"}])
    objects, diags = k8s.ingress(ing, set(), False)
    assert diags == []
    by_name = {o.name: o for o in objects}
    assert by_name["web-default-backend"].spec == {"ambassador_id": ["blue"], "prefix": "/", "service": "home.shop:http"}
    assert by_name["web-0-0"].spec == {"ambassador_id": ["blue"], "prefix": "/v1/", "service": "api.shop:8080",
                                       "host": "api.example.com"}
    assert by_name["web-0-1"].spec["prefix_exact"] is True
    wildcard = by_name["web-1-0"].spec
    assert wildcard["host_regex"] is True and wildcard["prefix"] == "/"
    import re
    assert re.match(wildcard["host"], "shop.example.com") and not re.match(wildcard["host"], "a.b.example.com")
    tls = by_name["web-tls-0"]
    assert (tls.kind, tls.spec["hosts"], tls.spec["secret"]) == ("TLSContext", ["api.example.com"], "api-cert")
    # and they compile: the generated Mappings are valid ones (for ambassador_id blue), and
    # the TLS entry terminates TLS for its host with the Secret it names
    pair = pki().leaf
    cert = k8s.secret({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                       "metadata": {"name": "api-cert", "namespace": "shop"},
                       "data": {"tls.crt": b64(pair.cert_pem), "tls.key": b64(pair.key_pem)}})[0]
    table, cdiags = compiler.compile(objects + cert, compiler.CompileOptions(ambassador_id="blue"))
    assert len(table.routes) == 4
    assert [d.kind for d in cdiags if d.severity == "error"] == []
    assert [(st.name, st.server_names) for st in table.server_tls] == [("TLSContext shop/web-tls-0",
                                                                        ("api.example.com",))]
    assert [c.name for c in table.certificates] == ["shop/api-cert"]


def test_an_ingress_backend_without_a_service_is_reported():
    ing = ingress({"kubernetes.io/ingress.class": "ambassador"}, rules=[{"http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"resource": {"kind": "Bucket", "name": "b"}}}]}}])
    objects, diags = k8s.ingress(ing, set(), False)
    assert objects == []
    assert [(d.kind, d.field) for d in diags] == [("Ingress", "spec.rules[0].http.paths[0].backend.service.name")]


# ---- endpoints ---------------------------------------------------------------------

def compiled(service: str, resolver: str | None = None, namespace: str = "shop", extra=()):
    from edge.resources.base import RawObject

    spec = {"prefix": "/", "service": service, **({"resolver": resolver} if resolver else {})}
    objs = [RawObject("Mapping", namespace, "m", "test", spec), *extra]
    table, diags = compiler.compile(objs)
    assert [d for d in diags if d.severity == "error"] == []
    return table


def book_with(services=(), slices=()) -> EndpointBook:
    book = EndpointBook()
    for s in services:
        book.services[(s["metadata"]["namespace"], s["metadata"]["name"])] = k8s.service_info(s)
    for s in slices:
        info = k8s.slice_info(s)
        book.slices.setdefault((s["metadata"]["namespace"], info.service), {})[s["metadata"]["name"]] = info
    return book


def eps(name, service, ports, endpoints, namespace="shop"):
    return {"metadata": {"name": name, "namespace": namespace, "labels": {k8s.SERVICE_NAME_LABEL: service}},
            "ports": ports, "endpoints": endpoints}


@pytest.mark.parametrize("service_text", ["quote", "quote:80", "quote.shop", "quote.shop.svc.cluster.local:80",
                                          "quote:http"])
def test_the_service_resolver_uses_the_services_cluster_ip(service_text):
    table = compiled(service_text)
    book = book_with([svc(namespace="shop")])
    assert endpoints_for(table.clusters[0], book) == (Endpoint("10.0.0.5", 80),)
    assert dns_names(table, book) == []


def test_the_service_resolver_falls_back_to_dns_for_unknown_services():
    table = compiled("quote.elsewhere:8080")
    book = book_with([svc(namespace="shop")])
    assert endpoints_for(table.clusters[0], book) is None
    assert dns_names(table, book) == ["quote.elsewhere"]
    book.dns["quote.elsewhere"] = ("192.0.2.1",)
    assert fill(table, book).clusters[0].endpoints == (Endpoint("192.0.2.1", 8080),)


def test_the_endpoint_resolver_maps_the_service_port_to_ready_pods_on_the_target_port():
    table = compiled("quote:80", "kubernetes-endpoint")
    book = book_with([svc(namespace="shop", ports=[{"name": "http", "port": 80}, {"name": "admin", "port": 9000}])], [
        eps("quote-1", "quote", [{"name": "http", "port": 8080}, {"name": "admin", "port": 9901}],
            [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
             {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
             {"addresses": ["10.1.0.3"]}]),
        eps("quote-2", "quote", [{"name": "http", "port": 8080}], [{"addresses": ["10.1.0.4"]}]),
        eps("other-1", "other", [{"name": "http", "port": 1}], [{"addresses": ["10.9.9.9"]}]),
    ])
    assert endpoints_for(table.clusters[0], book) == (
        Endpoint("10.1.0.1", 8080), Endpoint("10.1.0.3", 8080), Endpoint("10.1.0.4", 8080))


def test_the_endpoint_resolver_without_a_known_service_uses_the_only_port():
    table = compiled("quote", "kubernetes-endpoint")
    book = book_with([], [eps("q", "quote", [{"port": 7000}], [{"addresses": ["10.1.0.1"]}])])
    assert endpoints_for(table.clusters[0], book) == (Endpoint("10.1.0.1", 7000),)
    assert endpoints_for(table.clusters[0], EndpointBook()) == ()


def test_mappings_in_two_namespaces_naming_the_same_short_service_get_two_clusters():
    from edge.resources.base import RawObject

    objs = [RawObject("Mapping", ns, "m", "test", {"prefix": f"/{ns}/", "service": "quote"}) for ns in ("a", "b")]
    table, _ = compiler.compile(objs)
    assert sorted((c.name, c.namespace) for c in table.clusters) == [("cluster_quote_80_a", "a"),
                                                                     ("cluster_quote_80_b", "b")]


def test_consul_resolved_clusters_read_the_consul_book_and_unknown_resolvers_are_errors():
    from edge.resources.base import RawObject

    resolver = RawObject("ConsulResolver", "default", "consul-dc1", "test",
                         {"address": "127.0.0.1:8500", "datacenter": "dc1"})
    table = compiled("billing", "consul-dc1", extra=[resolver])
    cluster = table.clusters[0]
    assert (cluster.discovery, cluster.consul_address, cluster.datacenter) == ("consul", "127.0.0.1:8500", "dc1")
    book = EndpointBook()
    assert endpoints_for(cluster, book) == ()
    book.consul[("127.0.0.1:8500", "dc1", "billing")] = (Endpoint("10.2.0.1", 9000),)
    assert fill(table, book).clusters[0].endpoints == (Endpoint("10.2.0.1", 9000),)

    objs = [RawObject("Mapping", "default", "m", "test", {"prefix": "/", "service": "x", "resolver": "nope"})]
    _, diags = compiler.compile(objs)
    assert [(d.name, d.field) for d in diags if d.severity == "error"] == [("m", "spec.resolver")]
