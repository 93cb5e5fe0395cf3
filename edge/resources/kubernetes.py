"""Kubernetes objects -> what edge compiles and resolves. Pure: no I/O, no client.

- getambassador.io custom resources become RawObjects as they are;
- a Service's `getambassador.io/config` annotation (Emissary's flat multi-document YAML)
  becomes the RawObjects it declares, in the Service's namespace;
- an Ingress served by edge (Emissary's class rules) becomes one Mapping per path, one for
  its default backend, and one TLSContext per TLS entry (its hosts, `*` when it names
  none, as Emissary's generated Hosts have), which terminates TLS for those hosts;
- a Secret becomes a RawObject holding only what TLS reads of it (edge.resources.tls);
- Services and EndpointSlices become the endpoint view the resolvers read (`ServiceInfo`,
  `SliceInfo`).

Every function takes the object as the API returns it (a dict) and raises nothing: a bad
object gives Diagnostics and is otherwise ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from edge.model import Diagnostic
from edge.resources.base import AMBASSADOR_GROUP, Invalid, RawObject, str_labels
from edge.resources.tls import secret_spec

CONFIG_ANNOTATION = "getambassador.io/config"
AMBASSADOR_ID_ANNOTATION = "getambassador.io/ambassador-id"
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
INGRESS_CONTROLLER = "getambassador.io/ingress-controller"
INGRESS_CLASS = "ambassador"
SOURCE = "kubernetes"
# the fields of a flat annotation document that are not spec fields
_ANNOTATION_META = frozenset({"apiVersion", "kind", "name", "namespace", "metadata_labels"})
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


def _ident(obj: dict) -> tuple[str, str]:
    meta = _meta(obj)
    return meta.get("namespace") or "", meta.get("name") or ""


def _diag(kind: str, obj: dict, field: str, message: str, severity: str = "error") -> Diagnostic:
    namespace, name = _ident(obj)
    return Diagnostic(severity, SOURCE, kind, namespace, name, field, message)


def custom_resource(kind: str, obj: dict) -> tuple[list[RawObject], list[Diagnostic]]:
    """A getambassador.io object as the API returns it."""
    namespace, name = _ident(obj)
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        return [], [_diag(kind, obj, "spec", "must be a mapping")]
    try:
        labels = str_labels(_meta(obj).get("labels"), "metadata.labels")
    except Invalid as exc:
        return [], [_diag(kind, obj, exc.field, exc.message)]
    return [RawObject(kind, namespace, name, SOURCE, spec, labels, obj.get("apiVersion", ""))], []


def secret(obj: dict) -> tuple[list[RawObject], list[Diagnostic]]:
    """A core v1 Secret: read by reference (a Host's tlsSecret, a TLSContext's secret), so it
    is not selected by ambassador_id or labels; only its type and TLS keys are kept."""
    namespace, name = _ident(obj)
    return [RawObject("Secret", namespace, name, SOURCE, secret_spec(obj), {}, obj.get("apiVersion", "v1"))], []


# ---- Service annotations ---------------------------------------------------------------

def service_annotation(svc: dict) -> tuple[list[RawObject], list[Diagnostic]]:
    """The objects declared in a Service's `getambassador.io/config` annotation.

    Each YAML document is flat, as in Emissary: `apiVersion`, `kind`, `name` and the spec
    fields side by side; `namespace` defaults to the Service's; `metadata_labels` are the
    object's labels."""
    text = (_meta(svc).get("annotations") or {}).get(CONFIG_ANNOTATION)
    if text is None:
        return [], []
    namespace, svc_name = _ident(svc)
    source = f"{SOURCE}:service/{namespace}/{svc_name}"
    field = f"metadata.annotations.{CONFIG_ANNOTATION}"
    try:
        docs = list(yaml.load_all(text, Loader=_YAML_LOADER))
    except yaml.YAMLError as exc:
        return [], [_diag("Service", svc, field, f"cannot read YAML: {exc}".replace("\n", " "))]
    objects, diags = [], []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"{field}[{i}]"
        if not isinstance(doc, dict):
            diags.append(_diag("Service", svc, where, "document must be a mapping"))
            continue
        kind, name, api = doc.get("kind"), doc.get("name"), doc.get("apiVersion", "")
        if not isinstance(kind, str) or not kind:
            diags.append(_diag("Service", svc, f"{where}.kind", "is required"))
            continue
        if not isinstance(name, str) or not name:
            diags.append(_diag("Service", svc, f"{where}.name", f"is required for {kind}"))
            continue
        if not isinstance(api, str) or not api.startswith(AMBASSADOR_GROUP + "/"):
            diags.append(_diag("Service", svc, f"{where}.apiVersion",
                               f"must be {AMBASSADOR_GROUP}/<version>, got {api!r}"))
            continue
        try:
            labels = str_labels(doc.get("metadata_labels"), f"{where}.metadata_labels")
        except Invalid as exc:
            diags.append(_diag("Service", svc, exc.field, exc.message))
            continue
        spec = {k: v for k, v in doc.items() if k not in _ANNOTATION_META}
        objects.append(RawObject(kind, str(doc.get("namespace") or namespace), name, source, spec, labels, api))
    return objects, diags


# ---- Ingress -----------------------------------------------------------------------------

def our_ingress_classes(classes: list[dict]) -> tuple[set[str], bool]:
    """(names of IngressClasses whose controller is edge's, whether one of them is the
    cluster's default class)."""
    names, default = set(), False
    for cls in classes:
        if (cls.get("spec") or {}).get("controller") == INGRESS_CONTROLLER:
            name = _meta(cls).get("name", "")
            names.add(name)
            default |= (_meta(cls).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
    return names, default


def ingress_is_ours(ing: dict, class_names: set[str], default_class: bool) -> bool:
    """Emissary's rule: the `kubernetes.io/ingress.class: ambassador` annotation, or a
    `spec.ingressClassName` naming an IngressClass with controller
    getambassador.io/ingress-controller; an Ingress naming no class at all is ours when
    our IngressClass is the cluster default (the API server would have filled it in)."""
    annotation = (_meta(ing).get("annotations") or {}).get(INGRESS_CLASS_ANNOTATION)
    class_name = (ing.get("spec") or {}).get("ingressClassName")
    if annotation is not None:
        return annotation.lower() == INGRESS_CLASS
    if class_name:
        return class_name in class_names
    return default_class


def _wildcard_host_regex(host: str) -> str:
    """`*.example.com` -> a host_regex matching exactly one DNS label in place of `*`."""
    return "^[a-z0-9]([-a-z0-9]*[a-z0-9])?" + re.escape(host[1:]) + "$"


def _backend_service(backend: dict, namespace: str, where: str) -> str:
    svc = backend.get("service") if isinstance(backend, dict) else None
    if not isinstance(svc, dict) or not svc.get("name"):
        raise Invalid(f"{where}.service.name", "is required (resource backends are not supported)")
    port = svc.get("port") or {}
    number, name = port.get("number"), port.get("name")
    if number is not None:
        return f"{svc['name']}.{namespace}:{number}"
    if name:
        return f"{svc['name']}.{namespace}:{name}"
    return f"{svc['name']}.{namespace}"


def ingress(ing: dict, class_names: set[str], default_class: bool) -> tuple[list[RawObject], list[Diagnostic]]:
    """The Mappings and TLSContexts an Ingress stands for, or nothing when it is not ours."""
    if not ingress_is_ours(ing, class_names, default_class):
        return [], []
    namespace, ing_name = _ident(ing)
    spec = ing.get("spec") or {}
    annotations = _meta(ing).get("annotations") or {}
    ids = [i.strip() for i in str(annotations.get(AMBASSADOR_ID_ANNOTATION, "default")).split(",") if i.strip()]
    source = f"{SOURCE}:ingress/{namespace}/{ing_name}"
    objects: list[RawObject] = []
    diags: list[Diagnostic] = []

    def mapping(name: str, spec_: dict) -> None:
        objects.append(RawObject("Mapping", namespace, name, source, {"ambassador_id": ids, **spec_},
                                 {}, f"{AMBASSADOR_GROUP}/v3alpha1"))

    if spec.get("defaultBackend"):
        try:
            service = _backend_service(spec["defaultBackend"], namespace, "spec.defaultBackend")
            mapping(f"{ing_name}-default-backend", {"prefix": "/", "service": service})
        except Invalid as exc:
            diags.append(_diag("Ingress", ing, exc.field, exc.message))
    for r, rule in enumerate(spec.get("rules") or []):
        host = rule.get("host")
        for p, path in enumerate(((rule.get("http") or {}).get("paths")) or []):
            where = f"spec.rules[{r}].http.paths[{p}]"
            try:
                service = _backend_service(path.get("backend") or {}, namespace, f"{where}.backend")
            except Invalid as exc:
                diags.append(_diag("Ingress", ing, exc.field, exc.message))
                continue
            path_type = path.get("pathType", "ImplementationSpecific")
            if path_type not in ("Exact", "Prefix", "ImplementationSpecific"):
                diags.append(_diag("Ingress", ing, f"{where}.pathType", f"unknown pathType {path_type!r}"))
                continue
            m = {"prefix": path.get("path") or "/", "service": service}
            if path_type == "Exact":
                m["prefix_exact"] = True
            if host:
                if host.startswith("*."):
                    m.update(host=_wildcard_host_regex(host), host_regex=True)
                else:
                    m["host"] = host
            mapping(f"{ing_name}-{r}-{p}", m)
    for t, tls in enumerate(spec.get("tls") or []):
        if not tls.get("secretName"):
            diags.append(_diag("Ingress", ing, f"spec.tls[{t}].secretName", "is required", "warning"))
            continue
        # secretName is a plain Secret name in the Ingress's namespace: no name.namespace
        objects.append(RawObject("TLSContext", namespace, f"{ing_name}-tls-{t}", source,
                                 {"ambassador_id": ids, "hosts": list(tls.get("hosts") or ["*"]),
                                  "secret": tls["secretName"], "secret_namespacing": False}, {},
                                 f"{AMBASSADOR_GROUP}/v3alpha1"))
    return objects, diags


# ---- the endpoint view ---------------------------------------------------------------

@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int


@dataclass(frozen=True)
class ServiceInfo:
    """What the resolvers need of a Service."""

    cluster_ip: str | None  # None for headless Services
    ports: tuple[ServicePort, ...]
    load_balancer: tuple[str, ...] = ()  # status.loadBalancer.ingress addresses


def service_info(svc: dict) -> ServiceInfo:
    spec = svc.get("spec") or {}
    ip = spec.get("clusterIP")
    ports = tuple(ServicePort(str(p.get("name") or ""), int(p["port"]))
                  for p in spec.get("ports") or [] if isinstance(p, dict) and isinstance(p.get("port"), int))
    lb = tuple(i.get("ip") or i.get("hostname") for i in
               ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
               if i.get("ip") or i.get("hostname"))
    return ServiceInfo(ip if ip and ip != "None" else None, ports, lb)


@dataclass(frozen=True)
class SliceInfo:
    """One EndpointSlice: its Service, named ports and ready addresses."""

    service: str
    ports: tuple[ServicePort, ...]
    addresses: tuple[str, ...]


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def slice_info(eps: dict) -> SliceInfo | None:
    """None for a slice that belongs to no Service."""
    service = (_meta(eps).get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service:
        return None
    ports = tuple(ServicePort(str(p.get("name") or ""), int(p["port"]))
                  for p in eps.get("ports") or [] if isinstance(p, dict) and isinstance(p.get("port"), int))
    addresses = []
    for ep in eps.get("endpoints") or []:
        # ready is "unknown" (absent) or true: serve it; false: the pod is not ready
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        addresses.extend(ep.get("addresses") or [])
    return SliceInfo(service, ports, tuple(sorted(set(addresses))))
