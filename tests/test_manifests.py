"""config/kubernetes/ manifests: valid offline against the Kubernetes schemas, RBAC that
covers exactly what the source watches, CRDs that accept Emissary's own YAML."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from edge.resources.base import RawObject
from edge.supervisor import compile as compiler
from edge.supervisor.endpoints import EndpointBook
from edge.supervisor.sources.kubernetes import KubernetesSource, Scope

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "config" / "kubernetes").glob("*.yaml"))
QUICKSTART = ROOT / "tests" / "data" / "emissary-quickstart.yaml"
KUBERNETES_VERSION = "1.30.0"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the JSON schema of its spec, from crds.yaml."""
    out = {}
    for crd in documents(ROOT / "config" / "kubernetes" / "crds.yaml"):
        for version in crd["spec"]["versions"]:
            out[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = \
                version["schema"]["openAPIV3Schema"]
    return out


def validate_custom(doc: dict) -> None:
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    jsonschema.validate(doc, schema, cls=jsonschema.Draft4Validator)


def test_there_are_manifests_for_each_way_to_deploy():
    names = {p.name for p in MANIFESTS}
    assert {"crds.yaml", "rbac.yaml", "listener.yaml", "deployment-loadbalancer.yaml",
            "deployment-nodeport.yaml", "daemonset-hostnetwork.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_offline_schema_validation(path):
    docs = documents(path)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("getambassador.io/"):
            validate_custom(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    """The validation above can fail: a typo in a Deployment and a Mapping without service."""
    deployment = next(d for d in documents(ROOT / "config/kubernetes/deployment-loadbalancer.yaml")
                      if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        validate_custom({"apiVersion": "getambassador.io/v3alpha1", "kind": "Mapping",
                         "metadata": {"name": "m"}, "spec": {"prefix": "/"}})


def test_workloads_probe_the_admin_endpoints():
    for name in ("deployment-loadbalancer.yaml", "deployment-nodeport.yaml", "daemonset-hostnetwork.yaml"):
        workload = next(d for d in documents(ROOT / "config/kubernetes" / name) if d["kind"] in ("Deployment",
                                                                                                  "DaemonSet"))
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ambassador/v0/check_ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/ambassador/v0/check_alive"
        if workload["kind"] == "DaemonSet":
            assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    services = {name: next(d for d in documents(ROOT / "config/kubernetes" / name) if d["kind"] == "Service")
                for name in ("deployment-loadbalancer.yaml", "deployment-nodeport.yaml")}
    assert services["deployment-loadbalancer.yaml"]["spec"]["type"] == "LoadBalancer"
    assert services["deployment-nodeport.yaml"]["spec"]["type"] == "NodePort"


def test_rbac_grants_exactly_what_the_kubernetes_source_uses():
    rules = next(d for d in documents(ROOT / "config/kubernetes/rbac.yaml") if d["kind"] == "ClusterRole")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    source = KubernetesSource(None, Scope(), EndpointBook())
    needed = {(r.resource.group, r.resource.plural, verb) for r in source.reflectors for verb in ("list", "watch")}
    needed |= {("networking.k8s.io", "ingresses/status", "patch")}
    assert needed <= granted, needed - granted
    # exactly: no resource is granted that the source does not use, and only reading verbs
    assert {(g, r) for g, r, _ in granted} == {(g, r) for g, r, _ in needed}
    assert {v for _, _, v in granted} <= {"get", "list", "watch", "update", "patch"}
    assert {(g, r) for g, r, v in granted if v in ("update", "patch")} == {("networking.k8s.io", "ingresses/status")}


def test_rbac_reads_secrets_nowhere():
    """edge serves no TLS yet, so no Role or ClusterRole in any manifest names secrets (nor "*")."""
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] in ("Role", "ClusterRole"):
                for rule in doc.get("rules", []):
                    assert not {"secrets", "*"} & set(rule.get("resources", [])), (path.name, rule)
                    assert "*" not in rule.get("apiGroups", []), (path.name, rule)


def test_the_crds_cover_every_kind_the_source_watches():
    kinds = {kind for _, kind in crd_schemas()}
    source = KubernetesSource(None, Scope(), EndpointBook())
    watched = {r.resource.kind for r in source.reflectors if r.resource.group == "getambassador.io"}
    assert watched == kinds


def test_emissary_quickstart_yaml_passes_the_crds_and_compiles_unchanged():
    docs = documents(QUICKSTART)
    for doc in docs:
        validate_custom(doc)
    objects = [RawObject(d["kind"], d["metadata"].get("namespace", "default"), d["metadata"]["name"], "quickstart",
                         d["spec"], {}, d["apiVersion"]) for d in docs]
    table, diags = compiler.compile(objects)
    assert [d for d in diags if d.severity == "error"] == []
    assert [(r.path, t.cluster) for r in table.routes for t in r.targets] == [("/backend/", "cluster_quote_80_default")]
    assert [vh.hostname for vh in table.virtual_hosts] == ["host.example.com"]
    assert [listener.port for listener in table.listeners] == [8080]
