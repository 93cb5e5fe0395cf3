"""The Kubernetes source: watch the cluster, emit configuration snapshots, keep endpoints.

One Reflector (list + watch) per kind. Events land here, in the supervisor's trio thread:
- getambassador.io objects, Service `getambassador.io/config` annotations and Ingresses
  become RawObjects (edge.resources.kubernetes); any change to them sends a new Snapshot,
  which the supervisor compiles. No snapshot is sent before every kind has been listed once.
- Services and EndpointSlices update the EndpointBook in place and call
  `endpoints_changed`: the supervisor re-fills endpoints and publishes without compiling.
- Ingresses we serve get `status.loadBalancer` from the gateway's own Service (or a
  configured address).
- Secrets that can hold TLS material are watched as two kinds, one field selector each
  (`type=kubernetes.io/tls`, and `type=Opaque` for CA Secrets made with `kubectl create
  secret generic`; a field selector cannot say "either"), and kept as their TLS keys only
  (edge.resources.tls.secret_spec); a Secret without any is not kept at all. Like
  Emissary, they are read by reference, so neither the label selector nor ambassador_id
  applies to them. When RBAC forbids reading them, edge serves everything else, without
  TLS, and says so (as for any unavailable kind).
- A kind the cluster does not serve (Emissary OSS has no RateLimit CRD) or that RBAC
  forbids does not hold anything up: it counts as listed, `statistics()` names it with
  the reason, and it is retried; CustomResourceDefinitions are watched so that a CRD
  installed later is listed at once (when that watch is forbidden too, the retries are
  periodic). A kind that becomes unavailable after it was listed keeps its last objects
  (a 404 can be brief: a restarted API server serves custom resources only once it has
  read their CRDs), except when its CRD is deleted: that deletes every object of the
  kind, so they are deleted here too, whether or not their own DELETED events reached us
  before the watch ended.

Scope as Emissary: one namespace (AMBASSADOR_SINGLE_NAMESPACE), a label selector
(AMBASSADOR_LABEL_SELECTOR) on getambassador.io objects, Ingresses and the Services whose
annotations are read. The API server going away changes nothing that is served: the last
objects stay, `statistics()` says the source is stale, and the watches resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import trio

from edge.model import Diagnostic
from edge.resources import kubernetes as k8s
from edge.resources.base import RawObject
from edge.resources.tls import secret_spec
from edge.supervisor.endpoints import EndpointBook
from edge.supervisor.sources.files import Snapshot
from edge.backoff import Backoff
from edge.supervisor.sources.kubewatch import API_ERRORS, Reflector, Resource, request

log = logging.getLogger("edge.kubernetes")

AMBASSADOR_KINDS = ("Mapping", "Host", "Listener", "Module", "TCPMapping", "TLSContext", "AuthService",
                    "RateLimit", "KubernetesServiceResolver", "KubernetesEndpointResolver", "ConsulResolver")
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
# Kubernetes before 1.21 serves EndpointSlices as v1beta1 only; the fields we read are the same
ENDPOINT_SLICES_BETA = Resource("discovery.k8s.io", "v1beta1", "endpointslices", "EndpointSlice")
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses", "Ingress")
INGRESS_CLASSES = Resource("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False)
SECRETS = Resource("", "v1", "secrets", "Secret")
SECRET_TYPES = ("kubernetes.io/tls", "Opaque")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                namespaced=False)


def _secret_summary(secret: dict) -> dict:
    """All we keep of a Secret: its identity, type and TLS keys (never its other data)."""
    meta = secret.get("metadata") or {}
    return {"metadata": {k: v for k, v in meta.items() if k in ("name", "namespace", "resourceVersion")},
            **secret_spec(secret)}


def reflector_name(r: Reflector) -> str:
    """A reflector's name in statistics: its kind, and its field selector when it has one
    (the two Secret reflectors)."""
    return f"{r.resource.kind} ({r.field_selector})" if r.field_selector else r.resource.kind


def _crd_summary(crd: dict) -> dict:
    """All we need of a CRD (whose schemas are large): its names."""
    spec = crd.get("spec") or {}
    return {"metadata": {k: v for k, v in (crd.get("metadata") or {}).items() if k in ("name", "resourceVersion")},
            "spec": {"group": spec.get("group"), "names": {"plural": (spec.get("names") or {}).get("plural")}}}


@dataclass(frozen=True)
class Scope:
    ambassador_namespace: str = "default"
    single_namespace: bool = False
    label_selector: str = ""
    status_service: str = "edge"  # the gateway's own Service, in ambassador_namespace
    status_address: str = ""  # when set, written to Ingress status instead of the Service's


def _labels_match(selector: str, labels: dict) -> bool:
    """Equality-based selectors (`a=b,c==d,e!=f`), as AMBASSADOR_LABEL_SELECTOR is written."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        else:
            key, value = term.replace("==", "=").split("=", 1) if "=" in term else (term, None)
            if (key.strip() not in labels) if value is None else (labels.get(key.strip()) != value.strip()):
                return False
    return True


class KubernetesSource:
    """Call `run(send, endpoints_changed)`; it sends Snapshots on `send` until cancelled."""

    def __init__(self, api, scope: Scope, book: EndpointBook, *, watch_timeout: float = 300.0,
                 page_size: int = 500, unavailable_retry: float = 60.0, unavailable_first: float | None = None):
        self.api = api
        self.scope = scope
        self.book = book
        namespace = scope.ambassador_namespace if scope.single_namespace else None
        limiter = trio.CapacityLimiter(64)  # the watch threads must not starve getaddrinfo's

        def reflector(resource: Resource, selected: bool = False, fallback: Resource | None = None,
                      transform=None, field_selector: str = "") -> Reflector:
            return Reflector(api, resource, self._on_event, namespace=namespace if resource.namespaced else None,
                             label_selector=scope.label_selector if selected else "", field_selector=field_selector,
                             watch_timeout=watch_timeout, limiter=limiter, fallback=fallback,
                             page_size=page_size, unavailable_retry=unavailable_retry,
                             unavailable_first=unavailable_first, transform=transform)

        self.reflectors = [reflector(Resource("getambassador.io", "v3alpha1", kind.lower() + "s", kind), True)
                           for kind in AMBASSADOR_KINDS]
        self.reflectors += [reflector(SERVICES), reflector(ENDPOINT_SLICES, fallback=ENDPOINT_SLICES_BETA),
                            reflector(INGRESSES, True), reflector(INGRESS_CLASSES),
                            reflector(CRDS, transform=_crd_summary)]
        self.reflectors += [reflector(SECRETS, field_selector=f"type={t}", transform=_secret_summary)
                            for t in SECRET_TYPES]
        self.parts: dict[tuple[str, str, str], tuple[list[RawObject], list[Diagnostic]]] = {}
        self.slice_owner: dict[tuple[str, str], tuple[str, str]] = {}
        self.ingresses: dict[tuple[str, str], dict] = {}
        self.ingress_classes: dict[tuple[str, str], dict] = {}
        self._classes: tuple[set[str], bool] = (set(), False)  # ours, and whether one is the default
        self.status_writes = 0
        self.status_errors = 0
        self._config_changed = trio.Event()
        self._status_changed = trio.Event()
        self._endpoints_changed: Callable[[], None] = lambda: None

    # ---- events -------------------------------------------------------------------------
    def _on_event(self, resource: Resource, key: tuple[str, str], obj: dict | None) -> None:
        kind = resource.kind
        if kind in AMBASSADOR_KINDS:
            self._set_part((kind, *key), k8s.custom_resource(kind, obj) if obj is not None else None)
        elif kind == "Secret":
            part = k8s.secret(obj) if obj is not None else None
            if part is not None and not any(part[0][0].spec.get(p) for p in ("data", "stringData")):
                part = None  # no TLS key: nothing a Host could use
            self._set_part(("Secret", *key), part)
        elif kind == "Service":
            self._on_service(key, obj)
        elif kind == "EndpointSlice":
            self._on_slice(key, obj)
        elif kind == "Ingress":
            self._store(self.ingresses, key, obj)
            self._translate_ingress(key)
            self._status_changed.set()
        elif kind == "IngressClass":
            self._store(self.ingress_classes, key, obj)
            self._classes = k8s.our_ingress_classes(list(self.ingress_classes.values()))
            for ing in list(self.ingresses):
                self._translate_ingress(ing)
            self._status_changed.set()
        elif kind == "CustomResourceDefinition" and obj is None:
            for r in self.reflectors:
                if f"{r.resource.plural}.{r.resource.group}" == key[1]:
                    r.forget_all()  # its objects went with it
        elif kind == "CustomResourceDefinition":
            spec = obj.get("spec") or {}
            for r in self.reflectors:
                # unavailable, or being listed (its answer may be a 404 from before this CRD)
                if (r.unavailable is not None or r.resource_version is None) and \
                        (r.resource.group, r.resource.plural) == (spec.get("group"),
                                                                  (spec.get("names") or {}).get("plural")):
                    r.retry_now()  # added, or established: it may be served now

    @staticmethod
    def _store(store: dict, key, obj) -> None:
        if obj is None:
            store.pop(key, None)
        else:
            store[key] = obj

    def _set_part(self, key: tuple[str, str, str], part) -> None:
        if part is None or part == ([], []):
            changed = self.parts.pop(key, None) is not None
        else:
            changed = self.parts.get(key) != part
            self.parts[key] = part
        if changed:
            self._config_changed.set()

    def _on_service(self, key: tuple[str, str], svc: dict | None) -> None:
        annotated = svc is not None and _labels_match(self.scope.label_selector,
                                                      (svc.get("metadata") or {}).get("labels") or {})
        self._set_part(("Service", *key), k8s.service_annotation(svc) if annotated else None)
        info = k8s.service_info(svc) if svc is not None else None
        if self.book.services.get(key) != info:
            self._store(self.book.services, key, info)
            self._endpoints_changed()
            if key == (self.scope.ambassador_namespace, self.scope.status_service):
                self._status_changed.set()

    def _on_slice(self, key: tuple[str, str], eps: dict | None) -> None:
        namespace, name = key
        info = k8s.slice_info(eps) if eps is not None else None
        owner = self.slice_owner.pop(key, None)
        if owner is not None:
            slices = self.book.slices.get(owner, {})
            slices.pop(name, None)
            if not slices:
                self.book.slices.pop(owner, None)
        if info is not None:
            owner = (namespace, info.service)
            self.slice_owner[key] = owner
            self.book.slices.setdefault(owner, {})[name] = info
        self._endpoints_changed()

    def _translate_ingress(self, key: tuple[str, str]) -> None:
        obj = self.ingresses.get(key)
        if obj is None:
            return self._set_part(("Ingress", *key), None)
        self._set_part(("Ingress", *key), k8s.ingress(obj, *self._classes))

    # ---- output -------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        objects, diags = [], []
        for key in sorted(self.parts):
            objects += self.parts[key][0]
            diags += self.parts[key][1]
        return Snapshot(tuple(objects), tuple(diags))

    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    def unavailable(self) -> dict[str, str]:
        """Kinds that cannot be listed (not served, forbidden) -> why."""
        return {reflector_name(r): r.unavailable for r in self.reflectors if r.unavailable is not None}

    def statistics(self) -> dict:
        return {
            "synced": self.synced(),
            "stale": any(r.stale for r in self.reflectors),
            "unavailable": self.unavailable(),
            "kinds": {reflector_name(r): r.statistics() for r in self.reflectors},
            "ingress_status_writes": self.status_writes,
            "ingress_status_errors": self.status_errors,
        }

    async def run(self, send: trio.MemorySendChannel, endpoints_changed: Callable[[], None]) -> None:
        """Watch until cancelled. The first Snapshot is sent once every kind is listed (or
        known to be unavailable); transient errors hold it back."""
        self._endpoints_changed = endpoints_changed
        async with trio.open_nursery() as nursery:
            for r in self.reflectors:
                nursery.start_soon(r.run)
            for r in self.reflectors:
                await r.synced.wait()
            missing = self.unavailable()
            log.info("kubernetes: %d kinds listed, %d objects%s", len(self.reflectors) - len(missing),
                     sum(len(r.items) for r in self.reflectors),
                     f"; unavailable: {', '.join(sorted(missing))}" if missing else "")
            nursery.start_soon(self._write_ingress_status)
            while True:
                self._config_changed = trio.Event()
                await send.send(self.snapshot())
                await self._config_changed.wait()

    # ---- Ingress status ---------------------------------------------------------------
    def status_addresses(self) -> tuple[str, ...]:
        """What Ingresses we serve should show in status.loadBalancer.ingress."""
        if self.scope.status_address:
            return tuple(a.strip() for a in self.scope.status_address.split(",") if a.strip())
        info = self.book.services.get((self.scope.ambassador_namespace, self.scope.status_service))
        return info.load_balancer if info is not None else ()

    def _stale_statuses(self) -> list[tuple[tuple[str, str], list[dict]]]:
        addresses = self.status_addresses()
        if not addresses:
            return []
        names, default = self._classes
        wanted = [{"hostname": a} if any(c.isalpha() for c in a) and ":" not in a else {"ip": a} for a in addresses]
        out = []
        for key, ing in sorted(self.ingresses.items()):
            if not k8s.ingress_is_ours(ing, names, default):
                continue
            current = ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            if current != wanted:
                out.append((key, wanted))
        return out

    async def _write_ingress_status(self) -> None:
        backoff = Backoff(first=0.5, cap=30.0)
        while True:
            await self._status_changed.wait()
            self._status_changed = trio.Event()
            failed = False
            for (namespace, name), wanted in self._stale_statuses():
                body = {"status": {"loadBalancer": {"ingress": wanted}}}
                try:
                    await trio.to_thread.run_sync(self._patch_status, namespace, name, body, abandon_on_cancel=True)
                    self.status_writes += 1
                except API_ERRORS as exc:
                    self.status_errors += 1
                    failed = True
                    log.warning("cannot update status of Ingress %s/%s: %s", namespace, name,
                                str(exc).splitlines()[0][:200])
            if failed:
                self._status_changed.set()
                await trio.sleep(backoff.next())
            else:
                backoff.reset()

    def _patch_status(self, namespace: str, name: str, body: dict) -> None:
        path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses/{name}/status"
        request(self.api, "PATCH", path, body=body, content_type="application/merge-patch+json").release_conn()
