"""List + watch of one Kubernetes resource through the official client: a Reflector.

The client is synchronous (urllib3), so each list and each watch stream runs in a worker
thread, and every event is handed to the trio thread, where `on_event` runs; the trio
thread owns all state. A watch resumes from the last resourceVersion seen (events and
bookmarks advance it); 410 Gone, or any other break that leaves no resourceVersion to
resume from, means a fresh list whose difference from what we held is delivered as
events, so an object deleted during the gap is deleted here too. Errors back off
exponentially (with jitter) up to a cap; the last state is kept meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Callable

import trio
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from edge.backoff import Backoff

log = logging.getLogger("edge.kubernetes")


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    def path(self, namespace: str | None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


class Gone(Exception):
    """The resourceVersion we watch from is too old (410): list again."""


class WatchError(Exception):
    """The API server ended a watch with an error event other than 410."""


OnEvent = Callable[[Resource, tuple[str, str], dict | None], None]
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, WatchError)


class Reflector:
    """Keeps `items` ((namespace, name) -> object) equal to the API server's view of one
    resource and calls `on_event(resource, key, object or None)` in the trio thread for
    every change. `synced` is set after the first successful list; `connected` is False
    while the API server cannot be reached."""

    def __init__(self, api: client.ApiClient, resource: Resource, on_event: OnEvent, *,
                 namespace: str | None = None, label_selector: str = "", field_selector: str = "",
                 watch_timeout: float = 300.0, limiter: trio.CapacityLimiter | None = None,
                 fallback: Resource | None = None):
        self.api = api
        self.resource = resource
        self.on_event = on_event
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.limiter = limiter
        self.fallback = fallback  # an older version to use when the server lacks `resource`
        self.items: dict[tuple[str, str], dict] = {}
        self.resource_version: str | None = None
        self.synced = trio.Event()
        self.connected = False
        self.last_error = ""
        self.lists = 0
        self.gone = 0
        self.errors = 0
        self.events = 0
        self.backoff = Backoff()

    def statistics(self) -> dict:
        return {"synced": self.synced.is_set(), "connected": self.connected, "objects": len(self.items),
                "resource_version": self.resource_version, "lists": self.lists, "gone": self.gone,
                "errors": self.errors, "events": self.events, "last_error": self.last_error}

    async def run(self) -> None:
        """List and watch until cancelled. Never raises for API trouble: it backs off."""
        while True:
            try:
                if self.resource_version is None:
                    await self._relist()
                await trio.to_thread.run_sync(self._watch_blocking, trio.lowlevel.current_trio_token(),
                                              abandon_on_cancel=True, limiter=self.limiter)
                self.backoff.reset()
            except ApiException as exc:
                if exc.status == 410:  # some servers refuse an expired watch with the status itself
                    self._gone()
                elif exc.status == 404 and self.fallback is not None and not self.synced.is_set():
                    log.info("%s: %s is not served; using %s", self.resource.plural, self.resource.version,
                             self.fallback.version)
                    self.resource, self.fallback = self.fallback, None
                else:
                    await self._failed(exc)
            except Gone:
                self._gone()
            except API_ERRORS as exc:
                await self._failed(exc)

    def _gone(self) -> None:
        self.gone += 1
        self.resource_version = None
        log.info("%s: resourceVersion expired (410); listing again", self.resource.plural)

    async def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        delay = self.backoff.next()
        log.warning("%s: %s; retrying in %.1fs", self.resource.plural, self.last_error, delay)
        await trio.sleep(delay)

    def _query(self, **extra) -> list[tuple[str, str]]:
        q = [(k, v) for k, v in (("labelSelector", self.label_selector), ("fieldSelector", self.field_selector)) if v]
        return q + [(k, str(v)) for k, v in extra.items()]

    def _get(self, query: list[tuple[str, str]], read_timeout: float) -> urllib3.HTTPResponse:
        return request(self.api, "GET", self.resource.path(self.namespace), query, timeout=(5, read_timeout))

    async def _relist(self) -> None:
        resp = await trio.to_thread.run_sync(lambda: self._get(self._query(), 60), abandon_on_cancel=True,
                                             limiter=self.limiter)
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        fresh = {}
        for obj in body.get("items") or []:
            meta = obj.get("metadata") or {}
            fresh[(meta.get("namespace") or "", meta.get("name") or "")] = obj
        old, self.items = self.items, fresh
        self.lists += 1
        self.connected = True
        self.last_error = ""
        for key in sorted(old.keys() - fresh.keys()):
            self.on_event(self.resource, key, None)
        for key, obj in sorted(fresh.items()):
            if _version(old.get(key)) != _version(obj):
                self.on_event(self.resource, key, obj)
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion") or None
        self.synced.set()

    def _watch_blocking(self, token: trio.lowlevel.TrioToken) -> None:
        """In a thread: one watch request, until the server ends it."""
        query = self._query(watch="true", allowWatchBookmarks="true", resourceVersion=self.resource_version,
                            timeoutSeconds=int(self.watch_timeout * random.uniform(1, 1.5)))
        resp = self._get(query, self.watch_timeout * 1.5 + 30)
        try:
            trio.from_thread.run_sync(self._mark_connected, trio_token=token)
            for line in iter_resp_lines(resp):
                event = json.loads(line)
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", ""))
                    raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                trio.from_thread.run_sync(self._apply, type_, obj, trio_token=token)
        finally:
            resp.close()  # a stream cut short must not go back to the pool half-read

    def _mark_connected(self) -> None:
        self.connected = True
        self.last_error = ""

    def _apply(self, type_: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("resourceVersion"):
            self.resource_version = meta["resourceVersion"]
        if type_ == "BOOKMARK":
            return
        self.events += 1
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if type_ == "DELETED":
            if self.items.pop(key, None) is not None:
                self.on_event(self.resource, key, None)
        elif type_ in ("ADDED", "MODIFIED"):
            self.items[key] = obj
            self.on_event(self.resource, key, obj)


def request(api: client.ApiClient, method: str, path: str, query: list[tuple[str, str]] | None = None,
            body: dict | None = None, content_type: str = "application/json",
            timeout: tuple[float, float] = (5, 30)) -> urllib3.HTTPResponse:
    """One API request through the official client (its credentials, TLS and proxy
    settings); the urllib3 response, not yet read. Raises ApiException for a non-2xx
    answer and urllib3 errors when the server cannot be reached."""
    headers = {"Accept": "application/json", **({"Content-Type": content_type} if body is not None else {})}
    params = api.param_serialize(method, path, query_params=query or [], header_params=headers, body=body,
                                 auth_settings=["BearerToken"])
    resp = api.call_api(*params, _request_timeout=timeout).response
    if not 200 <= resp.status < 300:
        data = resp.data
        resp.release_conn()
        raise ApiException(status=resp.status, reason=resp.reason, body=data.decode("utf-8", "replace"))
    return resp


def _version(obj: dict | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod (and no kubeconfig is given), else
    KUBECONFIG / ~/.kube/config."""
    from kubernetes import config

    cfg = client.Configuration()
    if kubeconfig is None and config.incluster_config.SERVICE_HOST_ENV_NAME in os.environ:
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 32  # one connection per open watch (16), plus lists and status writes
    return client.ApiClient(cfg)
