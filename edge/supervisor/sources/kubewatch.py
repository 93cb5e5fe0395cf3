"""List + watch of one Kubernetes resource through the official client: a Reflector.

The client is synchronous (urllib3), so each list and each watch stream runs in a worker
thread, and every event is handed to the trio thread, where `on_event` runs; the trio
thread owns all state. A watch resumes from the last resourceVersion seen (events and
bookmarks advance it); 410 Gone, or any other break that leaves no resourceVersion to
resume from, means a fresh list whose difference from what we held is delivered as
events, so an object deleted during the gap is deleted here too. Errors back off
exponentially (with jitter) up to a cap; the last state is kept meanwhile.

Lists are paginated (`limit` / `continue`, `page_size` objects a page); a continue token
that expired meanwhile (410) means listing again from the first page.

A kind the API server does not serve (404: its CRD is not installed) or that we may not
read (403: RBAC) is *unavailable*: that is not an error to back off from but a state. It
counts as synced (with whatever objects were last listed: zero if it never was, else
those objects are kept and served, and the kind reports itself stale), is logged once
when it starts (again only if the reason changes) and once when it ends, and is retried
with a backoff from `unavailable_first` up to `unavailable_retry` seconds, or at once when
`retry_now()` is called (the source does on a CRD event); after that, retries start over
from a short delay, as the API server may take a moment to serve a CRD it just reported.
It ends when a watch of the kind is established, not at a successful list: a kind we may
list but not watch stays unavailable (and is listed again at each retry), rather than
flapping between the two states at every retry.
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
from edge.supervisor.sources import CredentialsError

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

    @property
    def custom(self) -> bool:
        """Served by a CustomResourceDefinition (not a built-in group)."""
        return "." in self.group and not self.group.endswith(".k8s.io")

    def unavailable_reason(self, exc: ApiException) -> str:
        if exc.status == 404:
            what = (f"CRD {self.plural}.{self.group} not installed (or not serving {self.version})" if self.custom
                    else f"{self.group or 'core'}/{self.version} {self.plural} not served")
            return f"not served by the API server (404): {what}"
        try:
            message = json.loads(exc.body or "{}").get("message") or ""
        except (ValueError, AttributeError):
            message = ""
        return f"forbidden (403): {message or exc.reason or 'RBAC denies ' + self.plural}"[:300]


class Gone(Exception):
    """The resourceVersion we watch from is too old (410): list again."""


class WatchError(Exception):
    """The API server ended a watch with an error event other than 410."""


OnEvent = Callable[[Resource, tuple[str, str], dict | None], None]
UNAVAILABLE = (403, 404)  # statuses that mean "this kind is not for us", not a fault
TRIGGERED_FIRST = 0.25  # s: the first delay of the retries after retry_now()
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, WatchError)


class Reflector:
    """Keeps `items` ((namespace, name) -> object) equal to the API server's view of one
    resource and calls `on_event(resource, key, object or None)` in the trio thread for
    every change. `synced` is set after the first successful list; `connected` is False
    while the API server cannot be reached; `unavailable` is the reason (or None) why the
    kind cannot be listed at all (404, 403)."""

    def __init__(self, api: client.ApiClient, resource: Resource, on_event: OnEvent, *,
                 namespace: str | None = None, label_selector: str = "", field_selector: str = "",
                 watch_timeout: float = 300.0, limiter: trio.CapacityLimiter | None = None,
                 fallback: Resource | None = None, page_size: int = 500, unavailable_retry: float = 60.0,
                 unavailable_first: float | None = None, transform: Callable[[dict], dict] | None = None):
        self.api = api
        self.resource = resource
        self.on_event = on_event
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.limiter = limiter
        self.fallback = fallback  # an older version to use when the server lacks `resource`
        self.page_size = page_size
        self.transform = transform or _whole  # what to keep of each object
        self.items: dict[tuple[str, str], dict] = {}
        self.resource_version: str | None = None
        self.synced = trio.Event()
        self.connected = False
        self.last_error = ""
        self.lists = 0
        self.gone = 0
        self.errors = 0
        self.events = 0
        self.pages = 0  # list requests, all lists together
        self.last_list_pages = 0
        self.list_restarts = 0  # lists begun again because a continue token expired
        self.unavailable: str | None = None
        self.unavailable_retries = 0
        self.backoff = Backoff()
        self.unavailable_retry = unavailable_retry
        self.unavailable_first = min(1.0, unavailable_retry) if unavailable_first is None else unavailable_first
        self._unavailable_backoff_from(self.unavailable_first)
        self._retry = trio.Event()

    @property
    def stale(self) -> bool:
        """What we hold may be out of date: the server is unreachable, or the kind became
        unavailable after objects of it were listed (they are kept)."""
        return not self.connected or (self.unavailable is not None and bool(self.items))

    def retry_now(self) -> None:
        """An unavailable kind may have become available (a CRD appeared): list it now, and
        if it is not served yet, again soon. Called while a list is on its way, the retry
        after its 404 is at once."""
        self._unavailable_backoff_from(min(TRIGGERED_FIRST, self.unavailable_retry))
        self._retry.set()

    def statistics(self) -> dict:
        return {"synced": self.synced.is_set(), "connected": self.connected, "objects": len(self.items),
                "resource_version": self.resource_version, "lists": self.lists, "gone": self.gone,
                "errors": self.errors, "events": self.events, "last_error": self.last_error,
                "pages": self.pages, "last_list_pages": self.last_list_pages, "list_restarts": self.list_restarts,
                "unavailable": self.unavailable, "unavailable_retries": self.unavailable_retries,
                "stale": self.stale}

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
                elif exc.status in UNAVAILABLE:
                    await self._unavailable(exc)
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

    async def _unavailable(self, exc: ApiException) -> None:
        reason = self.resource.unavailable_reason(exc)
        if reason != self.unavailable:
            kept = f"; keeping the {len(self.items)} objects listed before" if self.items else ""
            log.warning("%s: %s; edge runs without them and retries%s", self.resource.plural, reason, kept)
        else:
            log.debug("%s: still unavailable: %s", self.resource.plural, reason)
        self.unavailable = reason
        self.unavailable_retries += 1
        self.connected = True  # the server answered
        self.last_error = ""
        self.resource_version = None  # when it comes back, list it
        self.backoff.reset()
        self.synced.set()  # as listed, with what we hold (nothing, the first time)
        with trio.move_on_after(self.unavailable_backoff.next()):
            await self._retry.wait()
        self._retry = trio.Event()

    def _available(self) -> None:
        """Listed and now watched: whatever made the kind unavailable is over."""
        if self.unavailable is not None:
            log.info("%s: available again (%d objects); was: %s", self.resource.plural, len(self.items),
                     self.unavailable)
            self.unavailable = None
        self._unavailable_backoff_from(self.unavailable_first)

    def _unavailable_backoff_from(self, first: float) -> None:
        """Retries of an unavailable kind from `first` seconds, doubling up to unavailable_retry."""
        self.unavailable_backoff = Backoff(first=first, cap=max(self.unavailable_retry, first))

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

    def _get_json(self, query: list[tuple[str, str]], read_timeout: float) -> dict:
        resp = self._get(query, read_timeout)
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    async def _list(self) -> tuple[dict[tuple[str, str], dict], str | None]:
        """Every object, page by page: (objects by key, the list's resourceVersion)."""
        while True:
            fresh: dict[tuple[str, str], dict] = {}
            version, token, pages = None, "", 0
            try:
                while True:
                    extra = {"limit": self.page_size} if self.page_size else {}
                    if token:
                        extra["continue"] = token
                    query = self._query(**extra)
                    body = await trio.to_thread.run_sync(self._get_json, query, 60, abandon_on_cancel=True,
                                                         limiter=self.limiter)
                    pages += 1
                    self.pages += 1
                    meta = body.get("metadata") or {}
                    if version is None:
                        version = meta.get("resourceVersion") or None  # every page has the first's
                    for obj in body.get("items") or []:
                        m = obj.get("metadata") or {}
                        fresh[(m.get("namespace") or "", m.get("name") or "")] = \
                            self.transform(obj)
                    token = meta.get("continue") or ""
                    if not token:
                        self.last_list_pages = pages
                        return fresh, version
            except ApiException as exc:
                if exc.status != 410 or not token:
                    raise
                self.list_restarts += 1
                log.info("%s: the list's continue token expired (410) after %d pages; listing again",
                         self.resource.plural, pages)

    async def _relist(self) -> None:
        fresh, version = await self._list()
        old, self.items = self.items, fresh
        self.lists += 1
        self.connected = True
        self.last_error = ""
        for key in sorted(old.keys() - fresh.keys()):
            self.on_event(self.resource, key, None)
        for key, obj in sorted(fresh.items()):
            if _version(old.get(key)) != _version(obj):
                self.on_event(self.resource, key, obj)
        self.resource_version = version
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
        self._available()

    def forget_all(self) -> None:
        """Every object of the kind is gone (its CRD was deleted): deliver their deletions
        and list afresh when it is served again."""
        old, self.items = self.items, {}
        self.resource_version = None
        for key in sorted(old):
            self.on_event(self.resource, key, None)

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
            obj = self.transform(obj)
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


def _whole(obj: dict) -> dict:
    return obj


def _version(obj: dict | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod (and no kubeconfig is given), else
    KUBECONFIG / ~/.kube/config. Raises CredentialsError when they cannot be loaded."""
    import yaml
    from kubernetes import config

    cfg = client.Configuration()
    try:
        if kubeconfig is None and config.incluster_config.SERVICE_HOST_ENV_NAME in os.environ:
            where = "the in-cluster service account"
            config.load_incluster_config(client_configuration=cfg)
        else:
            where = f"kubeconfig {kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}"
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    except (config.ConfigException, OSError, yaml.YAMLError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())
        raise CredentialsError(f"cannot load Kubernetes credentials from {where}: {detail}") from None
    cfg.connection_pool_maxsize = 32  # one connection per open watch (16), plus lists and status writes
    return client.ApiClient(cfg)
