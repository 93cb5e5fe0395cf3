"""Apply, read and delete objects through the official Kubernetes client, as kubectl does:
the tests drive the API server (fake or real) only this way."""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from edge.supervisor.sources.kubewatch import request

AMBASSADOR = ("getambassador.io", "v3alpha1")
AMBASSADOR_PLURALS = ("mappings", "hosts", "listeners", "modules", "tcpmappings", "tlscontexts", "authservices",
                      "ratelimits", "kubernetesserviceresolvers", "kubernetesendpointresolvers", "consulresolvers")


class Kube:
    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.networking = client.NetworkingV1Api(api)
        self.ext = client.ApiextensionsV1Api(api)
        self.api = api

    def _verbs(self, kind: str, namespace: str):
        """(create(body), replace(name, body), read(name), delete(name)) for a kind."""
        typed = {
            "Service": ("namespaced_service", self.core),
            "Secret": ("namespaced_secret", self.core),
            "ConfigMap": ("namespaced_config_map", self.core),
            "EndpointSlice": ("namespaced_endpoint_slice", self.discovery),
            "Ingress": ("namespaced_ingress", self.networking),
        }
        if kind == "IngressClass":
            n = self.networking
            return (n.create_ingress_class, n.replace_ingress_class, n.read_ingress_class, n.delete_ingress_class)
        if kind in typed:
            suffix, api = typed[kind]
            return (lambda body: getattr(api, f"create_{suffix}")(namespace, body),
                    lambda name, body: getattr(api, f"replace_{suffix}")(name, namespace, body),
                    lambda name: getattr(api, f"read_{suffix}")(name, namespace),
                    lambda name: getattr(api, f"delete_{suffix}")(name, namespace))
        plural = kind.lower() + "s"
        c = self.custom
        return (lambda body: c.create_namespaced_custom_object(*AMBASSADOR, namespace, plural, body),
                lambda name, body: c.replace_namespaced_custom_object(*AMBASSADOR, namespace, plural, name, body),
                lambda name: c.get_namespaced_custom_object(*AMBASSADOR, namespace, plural, name),
                lambda name: c.delete_namespaced_custom_object(*AMBASSADOR, namespace, plural, name))

    def apply(self, obj: dict) -> None:
        """Create the object, or replace it when it exists."""
        meta = obj["metadata"]
        create, replace, read, _ = self._verbs(obj["kind"], meta.get("namespace", "default"))
        try:
            create(obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = read(meta["name"])
            rv = current["metadata"]["resourceVersion"] if isinstance(current, dict) \
                else current.metadata.resource_version
            replace(meta["name"], {**obj, "metadata": {**meta, "resourceVersion": rv}})

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        self._verbs(kind, namespace)[3](name)

    def delete_everything_in(self, namespace: str) -> None:
        """Every object edge reads in the namespace (deletecollection per kind; a kind not
        served is skipped), so that a later test's edge watching every namespace does
        not meet them. Namespaces themselves cannot go: that needs a controller manager."""
        paths = [f"/apis/getambassador.io/v3alpha1/namespaces/{namespace}/{plural}" for plural in AMBASSADOR_PLURALS]
        paths += [f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses",
                  f"/apis/discovery.k8s.io/v1beta1/namespaces/{namespace}/endpointslices",
                  f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"]
        for path in paths:
            try:
                request(self.api, "DELETE", path, timeout=(5, 120)).release_conn()
            except ApiException as exc:
                if exc.status not in (404, 405):
                    raise
        for svc in self.core.list_namespaced_service(namespace).items:  # no deletecollection for Services
            # raw: client 37 cannot read the Status a Service's deletion answers with
            request(self.api, "DELETE", f"/api/v1/namespaces/{namespace}/services/{svc.metadata.name}").release_conn()


def ambassador(kind: str, name: str, spec: dict, namespace: str = "default", labels: dict | None = None) -> dict:
    return {"apiVersion": "getambassador.io/v3alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace, **({"labels": labels} if labels else {})},
            "spec": spec}


def service(name: str, ports: list[dict], cluster_ip: str | None = None, annotation: str | None = None,
            namespace: str = "default") -> dict:
    meta = {"name": name, "namespace": namespace}
    if annotation is not None:
        meta["annotations"] = {"getambassador.io/config": annotation}
    spec = {"ports": ports, **({"clusterIP": cluster_ip} if cluster_ip else {})}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def endpoint_slice(name: str, service_name: str, addresses: list[str], port: int, port_name: str = "",
                   ready: bool = True, namespace: str = "default") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service_name}},
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses]}
