"""A fake Kubernetes API server, faithful to what edge's Kubernetes source relies on.

Any resource registered with `register` gets: list (with `labelSelector`, `fieldSelector`
on metadata.name / metadata.namespace / type), watch (`watch=true`, from a
`resourceVersion` or from "now" after synthetic ADDED events, `allowWatchBookmarks`,
`timeoutSeconds`), 410 Gone for a resourceVersion older than the kept history (as the real
server does: HTTP 200 and an ERROR event with a 410 Status), create (201, 409 on a
duplicate), get, replace (PUT, 409 on a stale resourceVersion), merge/strategic patch,
delete, and the `status` subresource.

Fault injection for tests: `failing[kind] = status` answers every request for a kind
with that status; `gone_as_status` answers an expired watch with HTTP 410 instead of an
ERROR event (both happen with real servers); `expire()` forgets the history (so every watch resuming from
an old resourceVersion gets 410) and cuts open watches; `outage()` closes the port and
every open connection, `recover()` listens again on the same port.

It is driven through the official client (`api_client()`); the contract tests in
tests/test_fakekube.py run the same checks against a real kube-apiserver when one is given.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
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


class _Closed(Exception):
    pass


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
        self.requests: list[tuple[str, str]] = []
        self.failing: dict[Kind, int] = {}  # kind -> HTTP status every request for it gets
        self.gone_as_status = False  # answer an expired watch with HTTP 410, not a 410 event
        for kind in CORE_KINDS + AMBASSADOR_KINDS:
            self.register(kind)

    # ---- control ----------------------------------------------------------------------
    def register(self, kind: Kind) -> None:
        self.kinds[(kind.group, kind.version, kind.plural)] = kind
        self.objects.setdefault(kind, {})
        self.events.setdefault(kind, deque(maxlen=self.history))
        self.expired_before.setdefault(kind, self.rv + 1)  # nothing is known from before the start
        self.changed.setdefault(kind, threading.Condition(self.cond))

    def kind(self, name: str) -> Kind:
        return next(k for k in self.kinds.values() if k.kind == name)

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
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record(kind, "DELETED", obj)
            return 200, obj


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
        self._send_json(404, _status(404, "NotFound", f"the server could not find the requested resource {self.path}"))

    # ---- verbs ------------------------------------------------------------------------
    def do_GET(self) -> None:
        self.fake.requests.append(("GET", self.path))
        route = self._route()
        if route is None:
            return self._not_found()
        kind, namespace, name, sub = route
        if kind in self.fake.failing:
            code = self.fake.failing[kind]
            return self._send_json(code, _status(code, "InternalError", "injected failure"))
        if name is not None:
            with self.fake.cond:
                obj = self.fake.objects[kind].get((namespace or "", name))
            if obj is None:
                return self._send_json(404, _status(404, "NotFound", f'{kind.plural} "{name}" not found'))
            return self._send_json(200, obj)
        q = self._query()
        try:
            select = self._selector(q)
        except ValueError as exc:
            return self._send_json(400, _status(400, "BadRequest", str(exc)))
        if q.get("watch") in ("true", "1"):
            return self._watch(kind, namespace, select, q)
        with self.fake.cond:
            items = [copy.deepcopy(o) for (ns, _), o in sorted(self.fake.objects[kind].items())
                     if (namespace is None or ns == namespace) and select(o)]
            rv = self.fake.rv
        self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                              "metadata": {"resourceVersion": str(rv)}, "items": items})

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
            epoch = kube.epoch
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
                        if wait > 0 and kube.epoch == epoch:
                            kube.changed[kind].wait(wait)
                        batch = kube.events_since(kind, since_rv)
                    if kube.epoch != epoch:
                        raise _Closed
                    current = kube.rv
                for rv, type_, obj in batch:
                    since_rv = rv
                    if (namespace is None or obj["metadata"].get("namespace") == namespace) and select(obj):
                        self._chunk({"type": type_, "object": obj})
                now = time.monotonic()
                if now >= deadline:
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

    def _target(self):
        route = self._route()
        if route is None or route[2] is None:
            self._not_found()
            return None
        kind, namespace, name, sub = route
        return kind, (namespace or "", name), sub == "status"

    def do_POST(self) -> None:
        self.fake.requests.append(("POST", self.path))
        route = self._route()
        if route is None or route[2] is not None:
            return self._not_found()
        code, body = self.fake.create(route[0], route[1] or "", self._body())
        self._send_json(code, body)

    def do_PUT(self) -> None:
        self.fake.requests.append(("PUT", self.path))
        target = self._target()
        if target is not None:
            self._send_json(*self.fake.replace(target[0], target[1], self._body(), target[2]))

    def do_PATCH(self) -> None:
        self.fake.requests.append(("PATCH", self.path))
        target = self._target()
        if target is not None:
            self._send_json(*self.fake.patch(target[0], target[1], self._body(), target[2]))

    def do_DELETE(self) -> None:
        self.fake.requests.append(("DELETE", self.path))
        target = self._target()
        if target is not None:
            self._body()
            self._send_json(*self.fake.delete(target[0], target[1]))


FakeKube.handler = _Handler
