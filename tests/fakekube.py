"""A fake Kubernetes API server, faithful to what edge's Kubernetes source relies on.

Any resource registered with `register` gets: list (with `labelSelector`, `fieldSelector`
on metadata.name / metadata.namespace / type), watch (`watch=true`, from a
`resourceVersion` or from "now" after synthetic ADDED events, `allowWatchBookmarks`,
`timeoutSeconds`), 410 Gone for a resourceVersion older than the kept history (as the real
server does: HTTP 200 and an ERROR event with a 410 Status), create (201, 409 on a
duplicate), get, replace (PUT, 409 on a stale resourceVersion), merge/strategic patch,
delete, and the `status` subresource.

Lists are paginated as the real server does them: `limit` gives at most that many
objects and an opaque `continue` token (with `remainingItemCount`) while more remain; the
pages of one list are a consistent snapshot, all with the first page's resourceVersion. A
token that expired (`expire_continue()`, or `expire()`: compaction ends them too) gets
410 Gone with the Status body kube-apiserver writes.

CustomResourceDefinitions behave as the real ones: creating one serves its kinds (each
served version), deleting one deletes its objects (DELETED events), stops serving them and
ends their watches. The getambassador.io kinds are served from the start without CRD
objects unless `unserve()`d.

Fault injection for tests: `failing[kind] = status` answers every request for a kind
with that status; `unserve(kind)` answers 404 (`404 page not found`, as for a kind whose
CRD is not installed) and `serve(kind)` undoes it; `forbid(kind, verbs)` answers 403
with the Forbidden Status RBAC writes (for `user`) and `allow(kind)` undoes it;
`before_page(kind, page)` (a callable, None by default) runs before each page of a list is
served (page 0 is the first); `gone_as_status` answers an expired watch with HTTP 410
instead of an ERROR event (both happen with real servers); `expire()` forgets the history
(so every watch resuming from an old resourceVersion gets 410) and cuts open watches;
`cut()` ends every open watch; `outage()` closes the port and every open connection,
`recover()` listens again on the same port.

It is driven through the official client (`api_client()`); the contract tests in
tests/test_fakekube.py run the same checks against a real kube-apiserver when one is given.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from tests.fakehttp import FakeHandler, FakeServer


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


CORE_KINDS = (
    Kind("", "v1", "services", "Service"),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "configmaps", "ConfigMap"),
    Kind("", "v1", "namespaces", "Namespace", namespaced=False),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Kind("networking.k8s.io", "v1", "ingresses", "Ingress"),
    Kind("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False),
)
AMBASSADOR_KINDS = tuple(
    Kind("getambassador.io", "v3alpha1", kind.lower() + "s", kind) for kind in (
        "Mapping", "Host", "Listener", "Module", "TCPMapping", "TLSContext", "AuthService", "RateLimit",
        "KubernetesServiceResolver", "KubernetesEndpointResolver", "ConsulResolver"))


CRD_KIND = Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                namespaced=False)
EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list.")
KEPT_LISTS = 256  # unfinished paginated lists remembered; older tokens get 410


class _Closed(Exception):
    pass


def crd(kind: Kind, versions: tuple[str, ...] | None = None) -> dict:
    """A CustomResourceDefinition for `kind` (an open schema), as `kubectl apply` would send."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{kind.plural}.{kind.group}"},
            "spec": {"group": kind.group, "scope": "Namespaced" if kind.namespaced else "Cluster",
                     "names": {"plural": kind.plural, "kind": kind.kind, "singular": kind.kind.lower(),
                               "listKind": f"{kind.kind}List"},
                     "versions": [{"name": v, "served": True, "storage": i == 0, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
                         for i, v in enumerate(versions or (kind.version,))]}}


def _crd_kinds(obj: dict) -> list[Kind]:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    return [Kind(spec.get("group", ""), v["name"], names.get("plural", ""), names.get("kind", ""),
                 spec.get("scope", "Namespaced") == "Namespaced")
            for v in spec.get("versions") or [] if v.get("served", True)]


class FakeKube(FakeServer):
    """Start with `FakeKube().start()`; `url` is the API server's address."""

    def __init__(self, history: int = 1000, bookmark_interval: float = 1.0):
        self.kinds: dict[tuple[str, str, str], Kind] = {}
        self.objects: dict[Kind, dict[tuple[str, str], dict]] = {}
        self.events: dict[Kind, deque] = {}  # (rv, type, object)
        self.expired_before: dict[Kind, int] = {}
        self.history = history
        self.bookmark_interval = bookmark_interval
        super().__init__()  # self.cond: the lock of everything; each kind waits on its own
        self.rv = 1000
        self.changed: dict[Kind, threading.Condition] = {}
        self.epoch = 0  # bumped by expire()/outage() to cut open watches
        self.kind_epoch: dict[Kind, int] = {}  # bumped to end the watches of one kind (after its events)
        self.requests: list[tuple[str, str]] = []
        self.failing: dict[Kind, int] = {}  # kind -> HTTP status every request for it gets
        self.unserved: set[Kind] = set()  # kinds answered with 404 (no CRD)
        self.forbidden: dict[Kind, set[str]] = {}  # kind -> verbs answered with 403
        self.user = "edge"  # who RBAC's messages name
        self.gone_as_status = False  # answer an expired watch with HTTP 410, not a 410 event
        self.lists: dict[str, tuple[int, list[dict]]] = {}  # continue id -> (list rv, objects still to send)
        self.before_page: Callable[[Kind, int], None] | None = None
        for kind in CORE_KINDS + AMBASSADOR_KINDS:
            self.register(kind)

    # ---- control ----------------------------------------------------------------------
    def register(self, kind: Kind) -> None:
        self.kinds[(kind.group, kind.version, kind.plural)] = kind
        self.objects.setdefault(kind, {})
        self.events.setdefault(kind, deque(maxlen=self.history))
        self.expired_before.setdefault(kind, self.rv + 1)  # nothing is known from before the start
        self.changed.setdefault(kind, threading.Condition(self.cond))
        self.kind_epoch.setdefault(kind, 0)

    def kind(self, name: str) -> Kind:
        return next(k for k in self.kinds.values() if k.kind == name)

    def unserve(self, kind: Kind) -> None:
        """404 for the kind from now on (its objects are kept, out of sight); its open
        watches end."""
        with self.cond:
            self.unserved.add(kind)
            self._end_watches(kind)

    def _end_watches(self, kind: Kind) -> None:
        """The kind's open watches deliver what is pending and end (cleanly)."""
        self.kind_epoch[kind] += 1
        self.changed[kind].notify_all()

    def serve(self, kind: Kind) -> None:
        with self.cond:
            self.unserved.discard(kind)

    def forbid(self, kind: Kind, verbs=("get", "list", "watch")) -> None:
        """403 for those verbs on the kind. Open watches go on, as with RBAC (call `cut()`
        to end them)."""
        with self.cond:
            self.forbidden[kind] = set(verbs)

    def allow(self, kind: Kind) -> None:
        with self.cond:
            self.forbidden.pop(kind, None)

    def cut(self) -> None:
        """End every open watch (as an API server restart or a load balancer does)."""
        with self.cond:
            self._cut()

    def expire_continue(self) -> None:
        """Every continue token handed out so far gets 410 Gone."""
        with self.cond:
            self.lists.clear()

    def install_crd(self, kind: Kind) -> None:
        """As `kubectl apply` of the kind's CRD: the kind is served, and a CRD ADDED event
        is seen by CRD watches."""
        code, body = self.create(CRD_KIND, "", crd(kind))
        assert code in (201, 409), body

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expire(self) -> None:
        """Compact: forget every kept event, as etcd compaction does, after the revision
        has moved on, so a watch resuming from any resourceVersion seen so far gets
        410 Gone. Open watches are cut so that they must resume."""
        with self.cond:
            self.rv += 1  # writes nobody here watches (Events, Leases) move the revision on
            for kind in self.kinds.values():
                self.events[kind].clear()
                self.expired_before[kind] = self.rv + 1
            self.lists.clear()  # a compaction ends every paginated list too
            self._cut()

    def _cut(self) -> None:
        self.epoch += 1
        for changed in self.changed.values():
            changed.notify_all()

    def api_client(self):
        """An official-client ApiClient talking to this server."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    def kubeconfig(self, path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        return str(path)

    # ---- storage ----------------------------------------------------------------------
    def _record(self, kind: Kind, type_: str, obj: dict) -> None:
        self.events[kind].append((int(obj["metadata"]["resourceVersion"]), type_, copy.deepcopy(obj)))
        if len(self.events[kind]) == self.events[kind].maxlen:
            self.expired_before[kind] = self.events[kind][0][0]
        self.changed[kind].notify_all()

    def events_since(self, kind: Kind, since: int) -> list[tuple[int, str, dict]]:
        """Kept events newer than `since`, oldest first (the newest are at the right)."""
        out = []
        for event in reversed(self.events[kind]):
            if event[0] <= since:
                break
            out.append(event)
        out.reverse()
        return out

    def create(self, kind: Kind, namespace: str, obj: dict) -> tuple[int, dict]:
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta["namespace"] = meta.get("namespace") or namespace
        name = meta.get("name")
        if not name:
            return 422, _status(422, "Invalid", "metadata.name: Required value")
        key = (meta.get("namespace", ""), name)
        with self.cond:
            if key in self.objects[kind]:
                return 409, _status(409, "AlreadyExists", f'{kind.plural} "{name}" already exists')
            self.rv += 1
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            meta.update(resourceVersion=str(self.rv), uid=str(uuid.uuid4()), generation=1,
                        creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            if kind == CRD_KIND:
                obj["status"] = {"acceptedNames": obj.get("spec", {}).get("names", {}), "conditions": [
                    {"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]}
                for served in _crd_kinds(obj):
                    if (served.group, served.version, served.plural) not in self.kinds:
                        self.register(served)
                    self.unserved.discard(self.kinds[(served.group, served.version, served.plural)])
            self.objects[kind][key] = obj
            self._record(kind, "ADDED", obj)
            return 201, obj

    def replace(self, kind: Kind, key: tuple[str, str], obj: dict, status_only: bool = False) -> tuple[int, dict]:
        with self.cond:
            old = self.objects[kind].get(key)
            if old is None:
                return 404, _status(404, "NotFound", f'{kind.plural} "{key[1]}" not found')
            given = (obj.get("metadata") or {}).get("resourceVersion")
            if given and given != old["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified; please apply your changes "
                                                     "to the latest version and try again")
            new = copy.deepcopy(old)
            if status_only:
                new["status"] = obj.get("status", {})
            else:
                status = old.get("status")
                new = obj
                new["apiVersion"], new["kind"] = kind.api_version, kind.kind
                for field in ("uid", "creationTimestamp", "namespace", "name"):
                    if field in old["metadata"]:
                        new["metadata"][field] = old["metadata"][field]
                if status is not None:
                    new["status"] = status
                if new.get("spec") != old.get("spec"):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            self.rv += 1
            new["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[kind][key] = new
            self._record(kind, "MODIFIED", new)
            return 200, new

    def patch(self, kind: Kind, key: tuple[str, str], patch: dict, status_only: bool = False) -> tuple[int, dict]:
        with self.cond:
            old = self.objects[kind].get(key)
            if old is None:
                return 404, _status(404, "NotFound", f'{kind.plural} "{key[1]}" not found')
            merged = _merge_patch(copy.deepcopy(old), patch)
            merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.replace(kind, key, merged, status_only)

    def delete(self, kind: Kind, key: tuple[str, str]) -> tuple[int, dict]:
        with self.cond:
            obj = self.objects[kind].pop(key, None)
            if obj is None:
                return 404, _status(404, "NotFound", f'{kind.plural} "{key[1]}" not found')
            if kind == CRD_KIND:  # as the real server: its objects first, then the kind goes
                for served in _crd_kinds(obj):
                    served = self.kinds.get((served.group, served.version, served.plural), served)
                    for object_key in sorted(self.objects.get(served, {})):
                        self.delete(served, object_key)
                    if served in self.kind_epoch:
                        self.unserved.add(served)
                        self._end_watches(served)
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record(kind, "DELETED", obj)
            return 200, obj


def _token(list_id: str, page: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"id": list_id, "page": page}).encode()).decode().rstrip("=")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _merge_patch(target, patch):
    """RFC 7386 JSON merge patch (strategic merge patches are treated the same way)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge_patch(target.get(k), v)
    return target


_SELECTOR_TERM = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)\s*$|^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$"
                            r"|^\s*(!?)([\w./-]+)\s*$")


def _split_selector(text: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for c in text:
        depth += c == "("
        depth -= c == ")"
        if c == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += c
    return terms + [cur] if cur.strip() else terms


def label_selector_matches(selector: str, labels: dict) -> bool:
    for term in _split_selector(selector):
        m = _SELECTOR_TERM.match(term)
        if m is None:
            raise ValueError(f"unable to parse requirement: {term!r}")
        if m.group(1):
            key, op, value = m.group(1), m.group(2), m.group(3)
            if (labels.get(key) == value) != (op != "!="):
                return False
        elif m.group(4):
            key, op = m.group(4), m.group(5)
            values = {v.strip() for v in m.group(6).split(",")}
            if (labels.get(key) in values) != (op == "in"):
                return False
        else:
            negate, key = m.group(7) == "!", m.group(8)
            if (key in labels) == negate:
                return False
    return True


def _field_value(obj: dict, path: str):
    if path == "metadata.name":
        return obj["metadata"].get("name", "")
    if path == "metadata.namespace":
        return obj["metadata"].get("namespace", "")
    if path == "type":
        return obj.get("type", "")
    raise ValueError(f"field label not supported: {path}")


def field_selector_matches(selector: str, obj: dict) -> bool:
    for term in filter(None, selector.split(",")):
        negate = "!=" in term
        path, value = re.split(r"!=|==|=", term, maxsplit=1)
        if (_field_value(obj, path.strip()) == value.strip()) == negate:
            return False
    return True


class _Handler(FakeHandler):
    fake: FakeKube

    # ---- routing ----------------------------------------------------------------------
    def _route(self):
        """-> (kind, namespace or None, name or None, subresource or None) or None."""
        path = urlsplit(self.path).path.rstrip("/")
        m = re.match(r"^/apis/([^/]+)/([^/]+)(/.*)?$", path) or re.match(r"^/api/(v1)(/.*)?$", path)
        if m is None:
            return None
        group, version, rest = (m.group(1), m.group(2), m.group(3)) if path.startswith("/apis/") \
            else ("", m.group(1), m.group(2))
        parts = (rest or "").strip("/").split("/")
        namespace = None
        if len(parts) >= 3 and parts[0] == "namespaces" and (group, version, parts[2]) in self.fake.kinds:
            namespace, parts = parts[1], parts[2:]
        kind = self.fake.kinds.get((group, version, parts[0]))
        if kind is None:
            return None
        name = parts[1] if len(parts) > 1 else None
        sub = parts[2] if len(parts) > 2 else None
        return kind, namespace, name, sub

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def _send_json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def _not_found(self) -> None:
        """What kube-apiserver answers for a path no API group serves (a CRD not installed)."""
        data = b"404 page not found\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refused(self, kind: Kind, verb: str, namespace: str | None) -> bool:
        """Answer as RBAC (403) or a missing CRD (404) would, if one applies: authorization
        comes first in kube-apiserver, so a forbidden kind is 403 even when not served."""
        fake = self.fake
        with fake.cond:
            forbidden = verb in fake.forbidden.get(kind, ())
            unserved = kind in fake.unserved
        if forbidden:
            resource = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            body = _status(403, "Forbidden", f'{resource} is forbidden: User "{fake.user}" cannot {verb} resource '
                                             f'"{kind.plural}" in API group "{kind.group}" {scope}')
            body["details"] = {**({"group": kind.group} if kind.group else {}), "kind": kind.plural}
            self._send_json(403, body)
            return True
        if unserved:
            self._not_found()
            return True
        return False

    # ---- verbs ------------------------------------------------------------------------
    def do_GET(self) -> None:
        self.fake.requests.append(("GET", self.path))
        route = self._route()
        if route is None:
            return self._not_found()
        kind, namespace, name, sub = route
        q = self._query()
        verb = "get" if name is not None else "watch" if q.get("watch") in ("true", "1") else "list"
        if self._refused(kind, verb, namespace):
            return
        if kind in self.fake.failing:
            code = self.fake.failing[kind]
            return self._send_json(code, _status(code, "InternalError", "injected failure"))
        if name is not None:
            with self.fake.cond:
                obj = self.fake.objects[kind].get((namespace or "", name))
            if obj is None:
                return self._send_json(404, _status(404, "NotFound", f'{kind.plural} "{name}" not found'))
            return self._send_json(200, obj)
        try:
            select = self._selector(q)
        except ValueError as exc:
            return self._send_json(400, _status(400, "BadRequest", str(exc)))
        if verb == "watch":
            return self._watch(kind, namespace, select, q)
        self._list(kind, namespace, select, q)

    def _list(self, kind: Kind, namespace: str | None, select, q: dict[str, str]) -> None:
        """A list, or one page of it (`limit`, `continue`): every page of one list comes
        from the snapshot taken for its first page, as etcd serves them at one revision."""
        fake = self.fake
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            return self._send_json(400, _status(400, "BadRequest", f"invalid limit: {q.get('limit')!r}"))
        token = q.get("continue") or ""
        page = 0
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
                list_id, page = state["id"], int(state["page"])
            except (ValueError, KeyError, TypeError):
                return self._send_json(400, _status(400, "BadRequest", "continue key is not valid: bad token"))
        if fake.before_page is not None:
            fake.before_page(kind, page)
        with fake.cond:
            if token:
                kept = fake.lists.pop(list_id, None)
                if kept is None:
                    body = _status(410, "Expired", EXPIRED_CONTINUE)
                    body["metadata"] = {"continue": _token(uuid.uuid4().hex, page)}  # an "inconsistent" one
                    return self._send_json(410, body)
                rv, items = kept
            else:
                items = [copy.deepcopy(o) for (ns, _), o in sorted(fake.objects[kind].items())
                         if (namespace is None or ns == namespace) and select(o)]
                rv = fake.rv
            meta = {"resourceVersion": str(rv)}
            if limit and len(items) > limit:
                items, rest = items[:limit], items[limit:]
                list_id = uuid.uuid4().hex
                fake.lists[list_id] = (rv, rest)
                while len(fake.lists) > KEPT_LISTS:
                    fake.lists.pop(next(iter(fake.lists)))
                meta.update({"continue": _token(list_id, page + 1), "remainingItemCount": len(rest)})
        self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
                              "items": items})

    def _selector(self, q: dict[str, str]):
        labels, fields = q.get("labelSelector", ""), q.get("fieldSelector", "")
        label_selector_matches(labels, {})  # raises ValueError when it cannot be parsed
        return lambda o: (label_selector_matches(labels, o["metadata"].get("labels") or {})
                          and field_selector_matches(fields, o))

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, kind: Kind, namespace: str | None, select, q: dict[str, str]) -> None:
        kube = self.fake
        timeout = float(q.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        pending: list[dict] = []
        with kube.cond:
            epoch, kind_epoch = kube.epoch, kube.kind_epoch[kind]
            since = q.get("resourceVersion") or ""
            if since in ("", "0"):
                pending = [{"type": "ADDED", "object": copy.deepcopy(o)} for (ns, _), o in
                           sorted(kube.objects[kind].items()) if (namespace is None or ns == namespace) and select(o)]
                since_rv = kube.rv
            else:
                since_rv = int(since)
                if since_rv < kube.expired_before[kind] - 1:
                    pending = [{"type": "ERROR", "object": _status(
                        410, "Expired", f"too old resource version: {since_rv} ({kube.expired_before[kind] - 1})")}]
        if pending and pending[0]["type"] == "ERROR" and kube.gone_as_status:
            return self._send_json(410, pending[0]["object"])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in pending:
                self._chunk(event)
            if pending and pending[0]["type"] == "ERROR":
                return self._end()
            last_bookmark = time.monotonic()
            while True:
                with kube.cond:
                    batch = kube.events_since(kind, since_rv)
                    if not batch:
                        wait = min(deadline, last_bookmark + self.fake.bookmark_interval) - time.monotonic()
                        if wait > 0 and kube.epoch == epoch and kube.kind_epoch[kind] == kind_epoch:
                            kube.changed[kind].wait(wait)
                        batch = kube.events_since(kind, since_rv)
                    if kube.epoch != epoch:
                        raise _Closed
                    ended = kube.kind_epoch[kind] != kind_epoch
                    current = kube.rv
                for rv, type_, obj in batch:
                    since_rv = rv
                    if (namespace is None or obj["metadata"].get("namespace") == namespace) and select(obj):
                        self._chunk({"type": type_, "object": obj})
                now = time.monotonic()
                if now >= deadline or ended:
                    return self._end()
                if bookmarks and now - last_bookmark >= self.fake.bookmark_interval:
                    since_rv = max(since_rv, current)
                    self._chunk({"type": "BOOKMARK", "object": {
                        "kind": kind.kind, "apiVersion": kind.api_version,
                        "metadata": {"resourceVersion": str(since_rv)}}})
                    last_bookmark = now
        except (_Closed, OSError):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _target(self, verb: str):
        route = self._route()
        if route is None or route[2] is None:
            self._not_found()
            return None
        kind, namespace, name, sub = route
        if self._refused(kind, verb, namespace):
            return None
        return kind, (namespace or "", name), sub == "status"

    def do_POST(self) -> None:
        self.fake.requests.append(("POST", self.path))
        route = self._route()
        if route is None or route[2] is not None:
            return self._not_found()
        if self._refused(route[0], "create", route[1]):
            return
        code, body = self.fake.create(route[0], route[1] or "", self._body())
        self._send_json(code, body)

    def do_PUT(self) -> None:
        self.fake.requests.append(("PUT", self.path))
        target = self._target("update")
        if target is not None:
            self._send_json(*self.fake.replace(target[0], target[1], self._body(), target[2]))

    def do_PATCH(self) -> None:
        self.fake.requests.append(("PATCH", self.path))
        target = self._target("patch")
        if target is not None:
            self._send_json(*self.fake.patch(target[0], target[1], self._body(), target[2]))

    def do_DELETE(self) -> None:
        self.fake.requests.append(("DELETE", self.path))
        route = self._route()
        if route is not None and route[2] is None:  # deletecollection
            return self._delete_collection(*route[:2])
        target = self._target("delete")
        if target is not None:
            self._body()
            self._send_json(*self.fake.delete(target[0], target[1]))

    def _delete_collection(self, kind: Kind, namespace: str | None) -> None:
        self._body()
        if self._refused(kind, "deletecollection", namespace):
            return
        try:
            select = self._selector(self._query())
        except ValueError as exc:
            return self._send_json(400, _status(400, "BadRequest", str(exc)))
        with self.fake.cond:
            keys = [k for k, o in sorted(self.fake.objects[kind].items())
                    if (namespace is None or k[0] == namespace) and select(o)]
            items = [self.fake.delete(kind, k)[1] for k in keys]
        self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                              "metadata": {"resourceVersion": str(self.fake.rv)}, "items": items})


FakeKube.handler = _Handler
