"""Contract tests of the API server behaviour edge relies on, through the official client.

They run against the fake (tests/fakekube.py) always, and against a real kube-apiserver
when one is given: REALKUBE_KUBECONFIG=path, or a kube-apiserver already built by
../shared/tools/realkube.sh (started here on loopback for the session). Otherwise the
`real` cases are skipped. Running the CRDs and Emissary's quickstart YAML through the real
server also proves that they apply unchanged.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from edge.supervisor.sources.kubewatch import request
from tests.fakekube import FakeKube
from tests.kubeapply import Kube

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["fake", "real"])
def api(request, fake_kube):
    if request.param == "fake":
        return fake_kube.api_client()
    kubeconfig = request.getfixturevalue("real_kubeconfig")
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


def namespace(api) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except ApiException as exc:
        assert exc.status in (404, 405), exc  # the fake has no namespace objects to create first
    return name


def config_map(name: str, labels: dict | None = None, data: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": data or {}}


def watch_events(api, path: str, resource_version: str, seconds: int, bookmarks: bool = True) -> list[dict]:
    resp = request(api, "GET", path, [("watch", "true"), ("resourceVersion", resource_version),
                                      ("allowWatchBookmarks", "true" if bookmarks else "false"),
                                      ("timeoutSeconds", str(seconds))], timeout=(5, seconds + 10))
    try:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]
    finally:
        resp.release_conn()


def test_create_get_replace_patch_delete(api):
    core, ns = client.CoreV1Api(api), namespace(api)
    created = core.create_namespaced_config_map(ns, config_map("a", data={"k": "1"}))
    assert created.metadata.resource_version and created.metadata.uid
    with pytest.raises(ApiException) as dup:
        core.create_namespaced_config_map(ns, config_map("a"))
    assert dup.value.status == 409
    stale = {**config_map("a", data={"k": "2"})}
    stale["metadata"]["resourceVersion"] = created.metadata.resource_version
    core.replace_namespaced_config_map("a", ns, stale)
    with pytest.raises(ApiException) as conflict:  # the same resourceVersion again is stale now
        core.replace_namespaced_config_map("a", ns, stale)
    assert conflict.value.status == 409
    patched = core.patch_namespaced_config_map("a", ns, {"data": {"extra": "x"}})
    assert patched.data == {"k": "2", "extra": "x"}
    core.delete_namespaced_config_map("a", ns)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("a", ns)
    assert gone.value.status == 404


def test_list_with_a_label_selector(api):
    core, ns = client.CoreV1Api(api), namespace(api)
    for name, team in (("a", "blue"), ("b", "green"), ("c", "blue")):
        core.create_namespaced_config_map(ns, config_map(name, {"team": team}))
    assert [c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector="team=blue").items] == ["a", "c"]
    assert [c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector="team!=blue").items] == ["b"]
    assert [c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector="team in (green)").items] == ["b"]


def test_watch_from_a_resource_version_sees_every_change_in_order(api):
    core, ns = client.CoreV1Api(api), namespace(api)
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, config_map("w"))
    core.patch_namespaced_config_map("w", ns, {"data": {"k": "v"}})
    core.delete_namespaced_config_map("w", ns)
    events = watch_events(api, f"/api/v1/namespaces/{ns}/configmaps", rv, 2)
    changes = [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] != "BOOKMARK"]
    assert changes == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)


def test_a_resource_version_older_than_the_history_gets_410(fake_kube):
    """Fake only: kube-apiserver 1.20 sizes its watch cache to hold at least 75 s of events
    and serves older versions from etcd until etcd compacts (every 5 minutes), so an
    expired version cannot be forced in a test run; a watch from before the start or from
    before a compaction is what the real server answers with 410, and so does the fake."""
    api = fake_kube.api_client()
    core, ns = client.CoreV1Api(api), namespace(api)
    core.create_namespaced_config_map(ns, config_map("busy"))
    old = core.list_namespaced_config_map(ns).metadata.resource_version
    for i in range(fake_kube.history + 1):
        core.patch_namespaced_config_map("busy", ns, {"data": {"i": str(i)}})
    events = watch_events(api, f"/api/v1/namespaces/{ns}/configmaps", old, 2)
    assert events and events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410, events[:2]
    assert watch_events(api, "/api/v1/configmaps", "1", 1)[0]["object"]["code"] == 410


def test_the_crds_and_emissary_quickstart_apply_unchanged(api, request):
    ext = client.ApiextensionsV1Api(api)
    for crd in yaml.safe_load_all((ROOT / "config" / "kubernetes" / "crds.yaml").read_text()):
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            assert exc.status in (404, 409), exc.body  # the fake serves every kind without CRDs
    kube, ns = Kube(api), namespace(api)
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 20
    for doc in yaml.safe_load_all((ROOT / "tests" / "data" / "emissary-quickstart.yaml").read_text()):
        doc["metadata"]["namespace"] = ns
        while True:  # a new CRD takes a moment to be served
            try:
                kube.apply(doc)
                break
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    mapping = custom.get_namespaced_custom_object("getambassador.io", "v3alpha1", ns, "mappings", "quote-backend")
    assert mapping["spec"]["docs"] == {"path": "/.ambassador-internal/openapi-docs"}
    if request.node.callspec.params["api"] == "real":  # the real server enforces the schemas
        with pytest.raises(ApiException) as bad:
            custom.create_namespaced_custom_object("getambassador.io", "v3alpha1", ns, "mappings", {
                "apiVersion": "getambassador.io/v3alpha1", "kind": "Mapping", "metadata": {"name": "no-service"},
                "spec": {"prefix": "/x/"}})
        assert bad.value.status == 422


def test_a_fake_specific_fault_an_outage_refuses_connections():
    fake = FakeKube().start()
    core = client.CoreV1Api(fake.api_client())
    core.list_config_map_for_all_namespaces()
    fake.outage()
    with pytest.raises(Exception):
        core.list_config_map_for_all_namespaces(_request_timeout=2)
    fake.recover()
    assert core.list_config_map_for_all_namespaces().items == []
    fake.stop()
