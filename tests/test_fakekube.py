"""Contract tests of the API server behaviour edge relies on, through the official client.

They run against the fake (tests/fakekube.py) always, and against a real kube-apiserver
when one is given: REALKUBE_KUBECONFIG=path, or a kube-apiserver already built by
../shared/tools/realkube.sh (started here on loopback for the session, with RBAC: see
tests/realkube.py). Otherwise the `real` cases are skipped. Running the CRDs and
Emissary's quickstart YAML through the real server also proves that they apply unchanged.

The `cluster` cases need two identities and faults that only a server we start can give
(an identity RBAC forbids things, a compaction that expires continue tokens), so their
real case always uses the session's own server.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from edge.supervisor.sources.kubewatch import request
from tests.fakekube import EXPIRED_CONTINUE, FakeKube, Kind, crd
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


@dataclass
class Cluster:
    admin: client.ApiClient
    edge: client.ApiClient  # may do only what it is granted
    forbid: Callable[[str], None]  # this kind may not be read by `edge` (real: granted nothing anyway)
    expire_continue: Callable[[], object]  # every continue token so far expires
    real: bool


@pytest.fixture(params=["fake", "real"])
def cluster(request, fake_kube) -> Cluster:
    if request.param == "fake":
        return Cluster(fake_kube.api_client(), fake_kube.api_client(),
                       lambda kind: fake_kube.forbid(fake_kube.kind(kind)), fake_kube.expire_continue, False)
    real = request.getfixturevalue("real_kube")
    real.revoke("edge")  # what an earlier test granted: "edge" may read nothing here
    return Cluster(real.api("admin"), real.api("edge"), lambda kind: None, real.compact, True)


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
    try:
        mapping = custom.get_namespaced_custom_object("getambassador.io", "v3alpha1", ns, "mappings", "quote-backend")
        assert mapping["spec"]["docs"] == {"path": "/.ambassador-internal/openapi-docs"}
        if request.node.callspec.params["api"] == "real":  # the real server enforces the schemas
            with pytest.raises(ApiException) as bad:
                custom.create_namespaced_custom_object("getambassador.io", "v3alpha1", ns, "mappings", {
                    "apiVersion": "getambassador.io/v3alpha1", "kind": "Mapping", "metadata": {"name": "no-service"},
                    "spec": {"prefix": "/x/"}})
            assert bad.value.status == 422
    finally:  # its Host and Listener would change what every later edge on this server serves
        kube.delete_everything_in(ns)


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


# ---- lists in pages, expired continue tokens, CRDs, RBAC --------------------------------

def pages(api, path: str, limit: int) -> list[dict]:
    """Every page of a list, each as the server sent it."""
    out, token = [], ""
    while True:
        query = [("limit", str(limit))] + ([("continue", token)] if token else [])
        resp = request(api, "GET", path, query)
        out.append(json.loads(resp.data))
        resp.release_conn()
        token = out[-1]["metadata"].get("continue") or ""
        if not token:
            return out
        assert len(out) < 100


def test_a_list_comes_in_pages_of_one_snapshot(cluster):
    core, ns = client.CoreV1Api(cluster.admin), namespace(cluster.admin)
    for i in range(7):
        core.create_namespaced_config_map(ns, config_map(f"c{i}"))
    path = f"/api/v1/namespaces/{ns}/configmaps"
    first = request(cluster.admin, "GET", path, [("limit", "3")])
    page1 = json.loads(first.data)
    first.release_conn()
    core.create_namespaced_config_map(ns, config_map("c9"))  # after the first page: not in this list
    rest = []
    token = page1["metadata"]["continue"]
    while token:
        resp = request(cluster.admin, "GET", path, [("limit", "3"), ("continue", token)])
        rest.append(json.loads(resp.data))
        resp.release_conn()
        token = rest[-1]["metadata"].get("continue")
    got = [page1, *rest]
    assert [[o["metadata"]["name"] for o in p["items"]] for p in got] == [["c0", "c1", "c2"], ["c3", "c4", "c5"],
                                                                          ["c6"]]
    assert [p["metadata"].get("remainingItemCount") for p in got] == [4, 1, None]
    assert len({p["metadata"]["resourceVersion"] for p in got}) == 1  # every page at the first one's version
    assert [len(p["items"]) for p in pages(cluster.admin, path, 4)] == [4, 4]  # exactly full: no empty page
    assert len(pages(cluster.admin, path, 0)[0]["items"]) == 8  # limit 0: no limit


def test_an_expired_continue_token_gets_410_expired_and_a_new_list_is_whole(cluster):
    core, ns = client.CoreV1Api(cluster.admin), namespace(cluster.admin)
    for i in range(5):
        core.create_namespaced_config_map(ns, config_map(f"c{i}"))
    path = f"/api/v1/namespaces/{ns}/configmaps"
    resp = request(cluster.admin, "GET", path, [("limit", "2")])
    token = json.loads(resp.data)["metadata"]["continue"]
    resp.release_conn()
    core.create_namespaced_config_map(ns, config_map("late"))
    cluster.expire_continue()
    with pytest.raises(ApiException) as gone:
        request(cluster.admin, "GET", path, [("limit", "2"), ("continue", token)])
    assert gone.value.status == 410
    status = json.loads(gone.value.body)
    assert (status["kind"], status["code"], status["reason"], status["message"]) == \
        ("Status", 410, "Expired", EXPIRED_CONTINUE)
    assert status["metadata"]["continue"]  # the token for an inconsistent rest, which edge does not use
    assert sum(len(p["items"]) for p in pages(cluster.admin, path, 2)) == 6


def test_a_kind_is_404_until_its_crd_is_created_and_its_crd_deletion_deletes_its_objects(cluster):
    group = f"t{uuid.uuid4().hex[:8]}.example.com"
    widget = Kind(group, "v1", "widgets", "Widget")
    path = f"/apis/{group}/v1/widgets"
    with pytest.raises(ApiException) as missing:
        request(cluster.admin, "GET", path)
    assert (missing.value.status, missing.value.body) == (404, "404 page not found\n")
    ext, custom, ns = client.ApiextensionsV1Api(cluster.admin), client.CustomObjectsApi(cluster.admin), \
        namespace(cluster.admin)
    ext.create_custom_resource_definition(crd(widget))
    deadline = time.monotonic() + 30
    while True:  # a new CRD takes a moment to be served
        try:
            custom.create_namespaced_custom_object(group, "v1", ns, "widgets", {
                "apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}})
            break
        except ApiException as exc:
            assert exc.status == 404 and time.monotonic() < deadline, exc
            time.sleep(0.1)
    rv = json.loads(request(cluster.admin, "GET", path).data)["metadata"]["resourceVersion"]
    watch = request(cluster.admin, "GET", path, [("watch", "true"), ("resourceVersion", rv),
                                                 ("timeoutSeconds", "60")], timeout=(5, 90))
    try:  # open before the deletion: the fake deletes at once, the real server soon after
        ext.delete_custom_resource_definition(f"widgets.{group}")
        events = []
        for line in iter_resp_lines(watch):
            events.append(json.loads(line))
            if (events[-1]["type"], events[-1]["object"]["metadata"].get("name")) == ("DELETED", "w"):
                break
        else:
            raise AssertionError(f"the watch ended without the object's deletion: {events}")
    finally:
        watch.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            request(cluster.admin, "GET", path).release_conn()
        except ApiException as exc:
            assert exc.status == 404, exc
            break
        assert time.monotonic() < deadline, "still served a minute after its CRD was deleted"
        time.sleep(0.1)


def test_rbac_forbids_with_the_status_kube_apiserver_writes(cluster):
    ns = namespace(cluster.admin)
    cluster.forbid("ConfigMap")
    cases = [(f"/api/v1/namespaces/{ns}/configmaps", [], f'cannot list resource "configmaps" in API group "" '
                                                          f'in the namespace "{ns}"'),
             ("/api/v1/configmaps", [("watch", "true")], 'cannot watch resource "configmaps" in API group "" '
                                                          'at the cluster scope')]
    for path, query, what in cases:
        with pytest.raises(ApiException) as denied:
            request(cluster.edge, "GET", path, query)
        assert denied.value.status == 403
        status = json.loads(denied.value.body)
        assert (status["kind"], status["code"], status["reason"], status["message"], status["details"]) == \
            ("Status", 403, "Forbidden", f'configmaps is forbidden: User "edge" {what}', {"kind": "configmaps"})
    cluster.forbid("Mapping")
    with pytest.raises(ApiException) as denied:
        request(cluster.edge, "GET", "/apis/getambassador.io/v3alpha1/mappings")
    status = json.loads(denied.value.body)
    assert status["message"] == ('mappings.getambassador.io is forbidden: User "edge" cannot list resource '
                                 '"mappings" in API group "getambassador.io" at the cluster scope')
    assert status["details"] == {"group": "getambassador.io", "kind": "mappings"}
