"""edge serve --kubernetes against the fake API server, driven through the official client,
and against a real kube-apiserver (tests/realkube.py: RBAC on, edge as an unprivileged user
bound to the roles config/kubernetes/rbac.yaml ships): some CRDs not installed and a kind
forbidden, a CRD installed later, 10,000 Mappings listed in pages."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from cryptography import x509

from bench.loadgen import LoadGenerator
from tests.conftest import Edge, free_port
from tests.integration.test_tls import exchange
from tests.kubeapply import Kube, ambassador, endpoint_slice, service
from tests.tlscerts import make_ca, make_leaf

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
PROPAGATION = 0.2  # issue 6: a change is served within 200 ms


@pytest.fixture
def kube_edge(make_edge, fake_kube, tmp_path):
    def start(workers: int = 2, extra_args: tuple = ()):
        kubeconfig = fake_kube.kubeconfig(tmp_path / "kubeconfig")
        return make_edge({}, workers=workers, extra_args=("--kubernetes", "--kubeconfig", kubeconfig, *extra_args))
    return start


def wait_served(edge, path: str, check, host: str | None = None, timeout: float = 5.0,
                client: httpx.Client | None = None, start: float | None = None) -> float:
    """Seconds until a GET of `path` gives a response for which `check(response)` holds,
    counted from `start` (default: now). Pass a `client` made beforehand when the time is
    measured: making one (its SSL context) takes ~0.15 s the first time in a process."""
    start = time.monotonic() if start is None else start
    headers = {"host": host} if host else {}
    with httpx.Client() if client is None else contextlib.nullcontext(client) as client:
        while True:
            r = client.get(edge.url(path), headers=headers)
            if check(r):
                return time.monotonic() - start
            assert time.monotonic() - start < timeout, f"{path}: still {r.status_code} {r.text[:200]}"
            time.sleep(0.002)


def from_upstream(name: str):
    return lambda r: r.status_code == 200 and r.headers.get("x-upstream") == name


def status(code: int):
    return lambda r: r.status_code == code


def test_every_kind_applied_edited_and_deleted_is_served_within_200ms(kube_edge, fake_kube, upstream, upstream_b):
    edge = kube_edge()
    kube = Kube(fake_kube.api_client())
    timings: dict[str, float] = {}
    client = httpx.Client()  # made before the first change: the first one's SSL setup is not edge's latency

    def change(label: str, action, path: str, check, host: str | None = None) -> None:
        start = time.monotonic()  # from the write (the apply is counted too)
        action()
        timings[label] = wait_served(edge, path, check, host, client=client, start=start)

    # Mapping
    change("Mapping added", lambda: kube.apply(ambassador("Mapping", "m", {"prefix": "/m/", "service": upstream.service})),
           "/m/", from_upstream("a"))
    change("Mapping edited", lambda: kube.apply(ambassador("Mapping", "m", {"prefix": "/m/",
                                                                            "service": upstream_b.service})),
           "/m/", from_upstream("b"))
    change("Mapping deleted", lambda: kube.delete("Mapping", "m"), "/m/", status(404))

    # Host: a Mapping for every host is served on the Host's name only
    kube.apply(ambassador("Mapping", "any", {"prefix": "/h/", "service": upstream.service, "hostname": "*"}))
    change("Host added", lambda: kube.apply(ambassador("Host", "h", {"hostname": "one.example"})),
           "/h/", status(404), host="two.example")
    change("Host edited", lambda: kube.apply(ambassador("Host", "h", {"hostname": "two.example"})),
           "/h/", from_upstream("a"), host="two.example")
    change("Host deleted", lambda: kube.delete("Host", "h"), "/h/", from_upstream("a"), host="one.example")

    # a Service's getambassador.io/config annotation
    def annotated(up) -> dict:
        return service("annotated", [{"port": 80}], annotation=(
            "---\napiVersion: getambassador.io/v3alpha1\nkind: Mapping\nname: from-annotation\n"
            f"prefix: /ann/\nservice: {up.service}\n"))
    change("Service annotation added", lambda: kube.apply(annotated(upstream)), "/ann/", from_upstream("a"))
    change("Service annotation edited", lambda: kube.apply(annotated(upstream_b)), "/ann/", from_upstream("b"))
    change("Service deleted", lambda: kube.delete("Service", "annotated"), "/ann/", status(404))

    # Ingress of our IngressClass, to Services by their cluster IP
    kube.apply({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "edge"},
                "spec": {"controller": "getambassador.io/ingress-controller"}})
    kube.apply(service("web-a", [{"name": "http", "port": upstream.port}], cluster_ip="127.0.0.1"))
    kube.apply(service("web-b", [{"name": "http", "port": upstream_b.port}], cluster_ip="127.0.0.1"))

    def ingress(backend: str, port: int) -> dict:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ing"},
                "spec": {"ingressClassName": "edge", "rules": [{"http": {"paths": [{
                    "path": "/ing/", "pathType": "Prefix",
                    "backend": {"service": {"name": backend, "port": {"number": port}}}}]}}]}}
    change("Ingress added", lambda: kube.apply(ingress("web-a", upstream.port)), "/ing/", from_upstream("a"))
    change("Ingress edited", lambda: kube.apply(ingress("web-b", upstream_b.port)), "/ing/", from_upstream("b"))
    change("Ingress deleted", lambda: kube.delete("Ingress", "ing"), "/ing/", status(404))

    # EndpointSlices behind a Mapping with the endpoint resolver
    kube.apply(service("pods", [{"name": "http", "port": 80}]))
    kube.apply(ambassador("Mapping", "pods", {"prefix": "/pods/", "service": "pods", "resolver": "kubernetes-endpoint"}))
    change("EndpointSlice added", lambda: kube.apply(endpoint_slice("pods-1", "pods", ["127.0.0.1"], upstream.port,
                                                                    "http")), "/pods/", from_upstream("a"))
    change("EndpointSlice edited", lambda: kube.apply(endpoint_slice("pods-1", "pods", ["127.0.0.1"], upstream_b.port,
                                                                     "http")), "/pods/", from_upstream("b"))
    change("EndpointSlice not ready", lambda: kube.apply(endpoint_slice(
        "pods-1", "pods", ["127.0.0.1"], upstream_b.port, "http", ready=False)), "/pods/", status(503))
    kube.apply(endpoint_slice("pods-1", "pods", ["127.0.0.1"], upstream_b.port, "http"))
    wait_served(edge, "/pods/", from_upstream("b"))
    change("EndpointSlice deleted", lambda: kube.delete("EndpointSlice", "pods-1"), "/pods/", status(503))

    client.close()
    slow = {k: round(v, 3) for k, v in timings.items() if v >= PROPAGATION}
    assert not slow, f"served later than {PROPAGATION}s: {slow} (all: {timings})"
    config = edge.config()
    assert config["sources"]["kubernetes"]["synced"] and not config["sources"]["kubernetes"]["stale"]


def test_bad_objects_are_reported_per_object_and_the_rest_serves(kube_edge, fake_kube, upstream):
    edge = kube_edge()
    kube = Kube(fake_kube.api_client())
    kube.apply(ambassador("Mapping", "bad", {"prefix": "/bad/", "service": upstream.service, "timeout_ms": "soon"}))
    kube.apply(service("broken", [{"port": 80}], annotation="kind: Mapping\nname: [unclosed"))
    kube.apply(ambassador("Mapping", "good", {"prefix": "/good/", "service": upstream.service}))
    wait_served(edge, "/good/", from_upstream("a"))
    diags = {(d["kind"], d["name"], d["field"]) for d in edge.config()["diagnostics"] if d["severity"] == "error"}
    assert ("Mapping", "bad", "spec.timeout_ms") in diags
    assert ("Service", "broken", "metadata.annotations.getambassador.io/config") in diags


def test_ingress_status_gets_the_gateway_address(kube_edge, fake_kube, upstream):
    kube_edge(extra_args=("--ingress-status-service", "edge-gw"))
    kube = Kube(fake_kube.api_client())
    kube.apply({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "ing", "annotations": {"kubernetes.io/ingress.class": "ambassador"}},
                "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}})
    kube.apply({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "not-ours", "annotations": {"kubernetes.io/ingress.class": "nginx"}},
                "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}})
    gateway = service("edge-gw", [{"port": 80}])
    kube.apply(gateway)
    fake_kube.patch(fake_kube.kind("Service"), ("default", "edge-gw"),
                    {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}, status_only=True)

    def addresses(name: str) -> list[str]:
        ing = kube.networking.read_namespaced_ingress(name, "default")
        lb = ing.status and ing.status.load_balancer
        return [i.ip for i in lb.ingress] if lb and lb.ingress else []
    deadline = time.monotonic() + 5
    while not addresses("ing") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert addresses("ing") == ["203.0.113.7"]
    assert addresses("not-ours") == []


async def test_a_forced_410_and_a_30s_outage_lose_nothing_and_drop_no_request(kube_edge, fake_kube, upstream):
    edge = kube_edge()
    kube = Kube(fake_kube.api_client())
    kube.apply(ambassador("Mapping", "stable", {"prefix": "/stable/", "service": upstream.service}))
    kube.apply(ambassador("Mapping", "doomed", {"prefix": "/doomed/", "service": upstream.service}))
    await trio.to_thread.run_sync(wait_served, edge, "/doomed/", from_upstream("a"))
    mapping_kind = fake_kube.kind("Mapping")
    load = LoadGenerator(edge.port, ["/stable/"], connections=4)
    stop = trio.Event()

    def kube_stats() -> dict:
        return edge.config()["sources"]["kubernetes"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, stop)
        # 1. 410: history compacted under open watches; they resume, get 410 and list again
        fake_kube.expire()
        await trio.to_thread.run_sync(kube.apply, ambassador("Mapping", "after-410", {
            "prefix": "/after-410/", "service": upstream.service}))
        await trio.to_thread.run_sync(wait_served, edge, "/after-410/", from_upstream("a"))
        assert kube_stats()["kinds"]["Mapping"]["gone"] >= 1

        # 2. 30 s without the API server; meanwhile the cluster changes (written behind
        #    edge's back) and its history is compacted, so edge must list to see the delete
        fake_kube.outage()
        fake_kube.delete(mapping_kind, ("default", "doomed"))
        fake_kube.create(mapping_kind, "default", ambassador("Mapping", "born", {
            "prefix": "/born/", "service": upstream.service}))
        fake_kube.expire()
        await trio.sleep(1.0)
        assert kube_stats()["stale"], "the admin API does not show the source as stale"
        assert (await trio.to_thread.run_sync(httpx.get, edge.url("/doomed/"))).status_code == 200
        await trio.sleep(29.0)
        fake_kube.recover()
        await trio.to_thread.run_sync(lambda: wait_served(edge, "/born/", from_upstream("a"), timeout=15))
        await trio.to_thread.run_sync(lambda: wait_served(edge, "/doomed/", status(404), timeout=1))
        with trio.fail_after(10):  # every watch resumes (each backs off 5 s at most)
            while (await trio.to_thread.run_sync(kube_stats))["stale"]:
                await trio.sleep(0.1)
        await trio.sleep(0.3)
        stop.set()
    counts = load.counts["/stable/"]
    assert counts.ok > 1000, "the load generator barely ran"
    assert counts.failures == 0 and set(counts.statuses) == {200}, (dict(load.errors), counts.statuses)


def test_against_a_real_api_server(make_edge, real_kubeconfig, upstream, upstream_b):
    """kube-apiserver 1.20 (realkube.sh): CRDs from config/kubernetes, TLS and a token from
    the kubeconfig, EndpointSlices from discovery.k8s.io/v1beta1 (1.20 has no v1)."""
    from kubernetes import client, config

    from edge.supervisor.sources.kubewatch import request
    from tests.kubeapply import Kube

    cfg = client.Configuration()
    config.load_kube_config(config_file=real_kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)
    ext = client.ApiextensionsV1Api(api)
    for crd in yaml.safe_load_all((ROOT / "config" / "kubernetes" / "crds.yaml").read_text()):
        try:
            ext.create_custom_resource_definition(crd)
        except client.exceptions.ApiException as exc:
            assert exc.status == 409, exc.body
    kube = Kube(api)
    ns = f"e2e-{int(time.time() * 1000) % 10**8}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    deadline = time.monotonic() + 20
    while True:  # new CRDs take a moment to be served
        try:
            kube.apply(ambassador("Mapping", "m", {"prefix": "/m/", "service": upstream.service}, namespace=ns))
            break
        except client.exceptions.ApiException as exc:
            assert exc.status == 404 and time.monotonic() < deadline, exc.body
            time.sleep(0.2)
    kube.apply(service("pods", [{"name": "http", "port": 80}], namespace=ns))
    slice_ = endpoint_slice("pods-1", "pods", ["127.0.0.1"], upstream_b.port, "http", namespace=ns)
    slice_["apiVersion"] = "discovery.k8s.io/v1beta1"
    request(api, "POST", f"/apis/discovery.k8s.io/v1beta1/namespaces/{ns}/endpointslices", body=slice_).release_conn()
    kube.apply(ambassador("Mapping", "pods", {"prefix": "/pods/", "service": "pods",
                                              "resolver": "kubernetes-endpoint"}, namespace=ns))
    try:
        edge = make_edge({}, extra_args=("--kubernetes", "--kubeconfig", real_kubeconfig))
        wait_served(edge, "/m/", from_upstream("a"))
        wait_served(edge, "/pods/", from_upstream("b"))
        kube.apply(ambassador("Mapping", "m", {"prefix": "/m/", "service": upstream_b.service}, namespace=ns))
        assert wait_served(edge, "/m/", from_upstream("b")) < 1.0
        kube.delete("Mapping", "m", namespace=ns)
        assert wait_served(edge, "/m/", status(404)) < 1.0
        stats = edge.config()["sources"]["kubernetes"]
        assert not stats["stale"] and stats["kinds"]["EndpointSlice"]["resource_version"]
    finally:  # a later edge watching every namespace must not meet these
        kube.delete_everything_in(ns)


def test_nothing_is_published_before_every_kind_is_listed(fake_kube, tmp_path, upstream):
    kube = Kube(fake_kube.api_client())
    kube.apply(ambassador("Mapping", "m", {"prefix": "/m/", "service": upstream.service}))
    fake_kube.failing[fake_kube.kind("Ingress")] = 500  # every other kind lists fine
    admin = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", "--kubernetes", "--kubeconfig",
                             fake_kube.kubeconfig(tmp_path / "kubeconfig"), "--workers", "1",
                             "--admin-addr", f"127.0.0.1:{admin}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{admin}/ambassador/v0/check_ready").status_code
        except httpx.HTTPError:
            return 0
    try:
        time.sleep(2.0)
        assert ready() in (0, 503), "published before the Ingresses were listed"
        del fake_kube.failing[fake_kube.kind("Ingress")]
        deadline = time.monotonic() + 15
        while ready() != 200:
            assert time.monotonic() < deadline, "not ready after the Ingresses could be listed"
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_single_namespace_and_label_selector_scope_what_is_read(kube_edge, fake_kube, upstream):
    edge = kube_edge(extra_args=("--namespace", "team-a", "--single-namespace", "--label-selector", "gateway=edge"))
    kube = Kube(fake_kube.api_client())
    labels = {"gateway": "edge"}
    kube.apply(ambassador("Mapping", "ours", {"prefix": "/ours/", "service": upstream.service}, "team-a", labels))
    kube.apply(ambassador("Mapping", "unlabelled", {"prefix": "/unlabelled/", "service": upstream.service}, "team-a"))
    kube.apply(ambassador("Mapping", "elsewhere", {"prefix": "/elsewhere/", "service": upstream.service}, "team-b",
                          labels))
    wait_served(edge, "/ours/", from_upstream("a"))
    time.sleep(0.3)
    assert httpx.get(edge.url("/unlabelled/")).status_code == 404
    assert httpx.get(edge.url("/elsewhere/")).status_code == 404
    requests = [path for method, path in fake_kube.requests if method == "GET" and "mappings" in path]
    assert requests and all("/namespaces/team-a/" in p and "labelSelector=gateway" in p for p in requests), requests


# ---- against a real API server with RBAC: what Emissary OSS users have -------------------

CRDS = ROOT / "config" / "kubernetes" / "crds.yaml"
RBAC = ROOT / "config" / "kubernetes" / "rbac.yaml"
EDGE_USER = {"kind": "User", "name": "edge", "apiGroup": "rbac.authorization.k8s.io"}
ABSENT = "ratelimits.getambassador.io"  # Emissary OSS installs no RateLimit CRD
FORBIDDEN = "tlscontexts"  # and here RBAC does not let edge read TLSContexts


class PatientEdge(Edge):
    """An Edge with a generous bound for getting ready: the real API server, 10,000 objects
    and a busy machine."""

    def wait_ready(self, timeout: float = 120.0) -> None:
        super().wait_ready(timeout)

    def whole_log(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()


@pytest.fixture
def real_edge(tmp_path):
    started = []

    def start(kubeconfig: str, extra_args: tuple = ()) -> PatientEdge:
        config = tmp_path / f"config{len(started)}"
        config.mkdir()
        edge = PatientEdge(config, workers=2, extra_args=("--kubernetes", "--kubeconfig", kubeconfig, *extra_args))
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.stop()


def _create_or_replace(create, replace, read, body: dict) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        create(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = read()
        replace({**body, "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version}})


def grant_edge(api, forbid: set[str]) -> None:
    """Bind to User "edge" what config/kubernetes/rbac.yaml binds to edge's ServiceAccount
    (read now: the shipped roles are what is tested), without the resources in `forbid`."""
    from kubernetes import client

    rbac, core = client.RbacAuthorizationV1Api(api), client.CoreV1Api(api)
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    assert any(d["kind"] in ("ClusterRoleBinding", "RoleBinding") for d in docs), "rbac.yaml binds no role"
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        ns = meta.get("namespace")
        name = f"test-{meta['name']}"
        if kind in ("ClusterRole", "Role"):
            rules = []
            for rule in doc.get("rules") or []:
                resources = [r for r in rule.get("resources") or [] if r.split("/")[0] not in forbid]
                if resources or not rule.get("resources"):
                    rules.append({**rule, "resources": resources} if rule.get("resources") else rule)
            body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
                    "metadata": {"name": name, **({"namespace": ns} if ns else {})}, "rules": rules}
        elif kind in ("ClusterRoleBinding", "RoleBinding"):
            body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
                    "metadata": {"name": name, **({"namespace": ns} if ns else {})},
                    "roleRef": {**doc["roleRef"], "name": f"test-{doc['roleRef']['name']}"}, "subjects": [EDGE_USER]}
        else:
            continue
        if ns:
            _create_or_replace(lambda b: core.create_namespace(b), lambda b: None,
                               lambda: core.read_namespace(ns), {"metadata": {"name": ns}})
        suffix = {"ClusterRole": "cluster_role", "Role": "namespaced_role", "ClusterRoleBinding": "cluster_role_binding",
                  "RoleBinding": "namespaced_role_binding"}[kind]
        args = (ns,) if ns else ()
        _create_or_replace(lambda b: getattr(rbac, f"create_{suffix}")(*args, b),
                           lambda b: getattr(rbac, f"replace_{suffix}")(name, *args, b),
                           lambda: getattr(rbac, f"read_{suffix}")(name, *args), body)


def install_crds(api, names: set[str] | None = None, timeout: float = 60.0) -> None:
    """Create the CRDs of crds.yaml (those in `names`, or all) and wait until each is Established."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api)
    wanted = [c for c in yaml.safe_load_all(CRDS.read_text()) if names is None or c["metadata"]["name"] in names]
    for crd in wanted:
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            assert exc.status == 409, exc.body
    deadline = time.monotonic() + timeout
    for crd in wanted:
        while not any(c.type == "Established" and c.status == "True"
                      for c in ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []):
            assert time.monotonic() < deadline, f"{crd['metadata']['name']} not established"
            time.sleep(0.1)


def remove_crd(api, name: str, timeout: float = 60.0) -> None:
    """Delete a CRD (and so its objects) and wait until it is gone."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout
    try:
        ext.delete_custom_resource_definition(name)
    except ApiException as exc:
        assert exc.status == 404, exc.body
    while True:
        try:
            ext.read_custom_resource_definition(name)
        except ApiException as exc:
            assert exc.status == 404, exc.body
            return
        assert time.monotonic() < deadline, f"{name} still there {timeout:.0f} s after its deletion"
        time.sleep(0.1)


def apply_when_served(kube: Kube, obj: dict, timeout: float = 30.0) -> None:
    """Apply, retrying the 404s of a CRD that is established but not served yet."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return kube.apply(obj)
        except ApiException as exc:
            assert exc.status == 404 and time.monotonic() < deadline, exc.body
            time.sleep(0.1)


@pytest.fixture
def oss_cluster(real_kube):
    """The real API server as an Emissary OSS cluster: every CRD but RateLimit's, edge
    bound to the shipped RBAC minus TLSContexts; a fresh namespace, emptied afterwards."""
    from kubernetes import client

    api = real_kube.api("admin")
    remove_crd(api, ABSENT)
    install_crds(api, {c["metadata"]["name"] for c in yaml.safe_load_all(CRDS.read_text())} - {ABSENT})
    grant_edge(api, {FORBIDDEN})
    ns = f"oss-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    kube = Kube(api)
    yield api, kube, ns
    kube.delete_everything_in(ns)
    real_kube.revoke("edge")


def unavailable_now(edge) -> dict:
    return edge.config()["sources"]["kubernetes"]["unavailable"]


def until(check, timeout: float, what: str):
    """Until `check()` returns something true; that value. A generous bound, for a busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"after {timeout:.0f} s: {what}"
        time.sleep(0.05)


NOT_SERVED = f"not served by the API server (404): CRD {ABSENT} not installed"
RBAC_DENIES = (f'forbidden (403): {FORBIDDEN}.getambassador.io is forbidden: User "edge" cannot list resource '
               f'"{FORBIDDEN}" in API group "getambassador.io" at the cluster scope')


def test_real_api_server_without_some_crds_and_with_a_forbidden_kind(oss_cluster, real_kube, real_edge, upstream):
    api, kube, ns = oss_cluster
    apply_when_served(kube, ambassador("Mapping", "oss", {"prefix": "/oss/", "service": upstream.service}, ns))
    started = time.monotonic()
    edge = real_edge(real_kube.edge_kubeconfig)  # ready: check_ready is 200
    ready = time.monotonic() - started
    wait_served(edge, "/oss/", from_upstream("a"), timeout=30)
    stats = edge.config()["sources"]["kubernetes"]
    assert stats["synced"] and not stats["stale"]
    assert set(stats["unavailable"]) == {"RateLimit", "TLSContext"}, stats["unavailable"]  # the rest is granted
    assert stats["unavailable"]["RateLimit"].startswith(NOT_SERVED), stats["unavailable"]
    assert stats["unavailable"]["TLSContext"] == RBAC_DENIES

    diag = json.loads(edge.admin("/ambassador/v0/diag/?json=true")[1])
    assert diag["kubernetes"]["unavailable"] == stats["unavailable"]
    page = edge.admin("/ambassador/v0/diag/")[1].decode()
    for kind, reason in stats["unavailable"].items():
        assert f"<td>{kind}</td><td>{html.escape(reason)}</td>" in page, page

    # logged once each, however often retried
    until(lambda: all(edge.config()["sources"]["kubernetes"]["kinds"][k]["unavailable_retries"] >= 4
                      for k in ("RateLimit", "TLSContext")), 90, "fewer than 4 retries of each")
    log = edge.whole_log()
    assert log.count(f"{FORBIDDEN}: forbidden (403)") == 1, log[-3000:]
    assert log.count("ratelimits: not served by the API server (404)") == 1, log[-3000:]
    assert unavailable_now(edge) == stats["unavailable"]
    print(f"\nreal API server, OSS CRDs + RBAC: edge ready in {ready:.2f} s")


def test_real_api_server_a_crd_installed_later_is_read_without_a_restart(oss_cluster, real_kube, real_edge, upstream):
    api, kube, ns = oss_cluster
    edge = real_edge(real_kube.edge_kubeconfig)
    assert "RateLimit" in unavailable_now(edge)
    pid = edge.proc.pid
    started = time.monotonic()
    install_crds(api, {ABSENT})
    apply_when_served(kube, ambassador("RateLimit", "later", {
        "domain": "ambassador", "limits": [{"pattern": [{"generic_key": "later"}], "rate": 5, "unit": "second"}]}, ns))
    apply_when_served(kube, ambassador("Mapping", "later", {"prefix": "/later/", "service": upstream.service}, ns))

    def listed() -> bool:
        stats = edge.config()["sources"]["kubernetes"]
        return "RateLimit" not in stats["unavailable"] and stats["kinds"]["RateLimit"]["objects"] == 1
    until(listed, 30, "the RateLimit CRD installed after the start was not read")
    took = time.monotonic() - started

    def compiled() -> dict | None:  # the diag page shows what was compiled last
        diag = json.loads(edge.admin("/ambassador/v0/diag/?json=true")[1])
        return diag if any((r["kind"], r["namespace"], r["name"]) == ("RateLimit", ns, "later")
                           for r in diag["resources"]) else None
    diag = until(compiled, 30, "the RateLimit is not among the diag page's resources")
    assert set(diag["kubernetes"]["unavailable"]) == {"TLSContext"}
    wait_served(edge, "/later/", from_upstream("a"), timeout=30)
    assert edge.proc.pid == pid and edge.proc.poll() is None  # no restart
    log = edge.whole_log()
    assert log.count("ratelimits: available again") == 1, log[-3000:]
    assert log.count("ratelimits: not served by the API server (404)") == 1, log[-3000:]
    print(f"\nreal API server: a CRD installed later read {took:.2f} s after it was created")


def test_real_api_server_10000_mappings_are_listed_in_pages(real_kube, real_edge, upstream):
    """Runs last here: its 10,000 Mappings stay (deleting them takes the server longer than
    making them), in their own namespace; an edge watching every namespace later would
    read them too."""
    from kubernetes import client

    api = real_kube.api("admin")
    install_crds(api, {"mappings.getambassador.io"})
    grant_edge(api, {FORBIDDEN})
    ns = f"big-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    count = 10_000
    started = time.monotonic()
    real_kube.create_many(f"/apis/getambassador.io/v3alpha1/namespaces/{ns}/mappings", [
        ambassador("Mapping", f"m-{i}", {"prefix": f"/m-{i}/", "service": upstream.service}, ns)
        for i in range(count)])
    created = time.monotonic() - started
    started = time.monotonic()
    edge = real_edge(real_kube.edge_kubeconfig, ("--namespace", ns, "--single-namespace"))
    ready = time.monotonic() - started
    wait_served(edge, f"/m-{count - 1}/", from_upstream("a"), timeout=60)
    wait_served(edge, "/m-0/", from_upstream("a"), timeout=60)
    mapping = edge.config()["sources"]["kubernetes"]["kinds"]["Mapping"]
    real_kube.revoke("edge")
    assert mapping["objects"] == count, mapping
    assert mapping["last_list_pages"] >= count // 500, mapping  # the default page size is 500
    assert mapping["errors"] == 0 and mapping["unavailable"] is None, mapping
    print(f"\nreal API server: {count} Mappings created in {created:.1f} s (16 connections); edge ready in "
          f"{ready:.1f} s; {mapping['last_list_pages']} pages, {mapping['pages']} page requests, "
          f"{mapping['list_restarts']} restarts")


def test_a_rotated_tls_secret_reaches_the_next_connection_within_1s(make_edge, fake_kube, tmp_path, upstream):
    """A kubernetes.io/tls Secret replaced in the API server (cert-manager's renewal) is what
    the next TLS connection gets, within 1 s, without a restart; an open connection stays up."""
    ca = make_ca()
    first, second = make_leaf(ca, "a.test"), make_leaf(ca, "a.test")
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    kind = fake_kube.kind("Secret")

    def secret(leaf) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "a-cert", "namespace": "default"},
                "data": {"tls.crt": b64(leaf.cert_pem), "tls.key": b64(leaf.key_pem)}}

    fake_kube.create(kind, "default", secret(first))
    kube = Kube(fake_kube.api_client())
    kube.apply(ambassador("Host", "a", {"hostname": "a.test", "tlsSecret": {"name": "a-cert"},
                                        "requestPolicy": {"insecure": {"action": "Route"}}}))
    kube.apply(ambassador("Mapping", "api", {"prefix": "/api/", "service": upstream.service}))
    edge = make_edge({}, protocol="HTTPS",
                     extra_args=("--kubernetes", "--kubeconfig", fake_kube.kubeconfig(tmp_path / "kubeconfig")))
    ctx = ssl.create_default_context(cadata=ca.cert_pem)

    def connect() -> ssl.SSLSocket:
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", edge.port), timeout=10), server_hostname="a.test")

    def serial_until(leaf, start: float, timeout: float) -> float:
        while True:
            try:
                with connect() as s:
                    if x509.load_der_x509_certificate(s.getpeercert(True)).serial_number == leaf.cert.serial_number:
                        return time.monotonic() - start
            except (ssl.SSLError, OSError):
                pass  # no certificate for a.test yet
            assert time.monotonic() - start < timeout, "the Secret's certificate was never served"
            time.sleep(0.02)

    serial_until(first, time.monotonic(), 10)
    kept = connect()
    assert exchange(kept).startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    fake_kube.replace(kind, ("default", "a-cert"), secret(second))
    took = serial_until(second, start, 10)
    assert took < 1.0, f"the rotated Secret took {took:.2f} s to reach a new connection"
    assert exchange(kept).startswith(b"HTTP/1.1 200")  # the connection from before the rotation
    kept.close()
