"""Cluster endpoints from what the resolvers know. Pure: the supervisor's sources keep an
EndpointBook current and `fill` turns a compiled table plus the book into the table that
is published. Endpoint changes only re-run `fill`, never compile (the fast path).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edge.model import Cluster, Endpoint, RouteTable
from edge.resources.kubernetes import ServiceInfo, ServicePort, SliceInfo
from edge.resources.resolver import CONSUL, ENDPOINT, SERVICE


@dataclass
class EndpointBook:
    """Everything the resolvers know. One writer: the supervisor's trio thread."""

    dns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> addresses
    services: dict[tuple[str, str], ServiceInfo] = field(default_factory=dict)  # (namespace, name)
    # (namespace, service) -> slice name -> slice
    slices: dict[tuple[str, str], dict[str, SliceInfo]] = field(default_factory=dict)
    consul: dict[tuple[str, str, str], tuple[Endpoint, ...]] = field(default_factory=dict)


def kube_service(cluster: Cluster) -> tuple[str, str] | None:
    """(namespace, name) of the Service a cluster names, as cluster DNS would read it:
    `name` (the Mapping's namespace), `name.namespace`, `name.namespace.svc`,
    `name.namespace.svc.cluster.local`; None for any other DNS name."""
    labels = cluster.host.split(".")
    if len(labels) == 1:
        return cluster.namespace, labels[0]
    if len(labels) == 2 or labels[2:] in (["svc"], ["svc", "cluster", "local"]):
        return labels[1], labels[0]
    return None


def consul_key(cluster: Cluster) -> tuple[str, str, str]:
    return cluster.consul_address, cluster.datacenter, cluster.host


def _service_port(info: ServiceInfo | None, cluster: Cluster) -> ServicePort | None:
    if info is None:
        return None
    for p in info.ports:
        if (p.name == cluster.port_name) if cluster.port_name else (p.port == cluster.port):
            return p
    return None


def _pod_endpoints(cluster: Cluster, key: tuple[str, str], book: EndpointBook) -> tuple[Endpoint, ...]:
    """Ready pod addresses from the Service's EndpointSlices, on the target port that the
    Service port (by number or name) maps to; with no Service known, a named port or the
    slices' only port."""
    slices = book.slices.get(key, {})
    port = _service_port(book.services.get(key), cluster)
    wanted = port.name if port is not None else cluster.port_name or None
    out = set()
    for s in slices.values():
        if wanted is not None:
            target = next((p.port for p in s.ports if p.name == wanted), None)
        else:
            target = s.ports[0].port if len(s.ports) == 1 else None
        if target is not None:
            out.update(Endpoint(a, target) for a in s.addresses)
    return tuple(sorted(out, key=lambda e: (e.address, e.port)))


def endpoints_for(cluster: Cluster, book: EndpointBook) -> tuple[Endpoint, ...] | None:
    """The cluster's endpoints now; None when they must come from DNS (`cluster.host`)."""
    if cluster.discovery == "static":
        return cluster.endpoints
    if cluster.discovery == CONSUL:
        return book.consul.get(consul_key(cluster), ())
    key = kube_service(cluster)
    if cluster.discovery == ENDPOINT:
        return _pod_endpoints(cluster, key, book) if key is not None else ()
    assert cluster.discovery == SERVICE, cluster.discovery
    info = book.services.get(key) if key is not None else None
    if info is None:
        return () if cluster.port_name else None
    if info.cluster_ip is None:  # headless: cluster DNS answers with the pods
        return _pod_endpoints(cluster, key, book)
    port = _service_port(info, cluster)
    return (Endpoint(info.cluster_ip, port.port),) if port is not None else ()


def dns_names(table: RouteTable, book: EndpointBook) -> list[str]:
    """Cluster hosts that need DNS resolution, sorted."""
    return sorted({c.host for c in table.clusters if endpoints_for(c, book) is None})


def fill(table: RouteTable, book: EndpointBook) -> RouteTable:
    """The table with every cluster's endpoints as the book knows them now."""
    clusters = []
    for c in table.clusters:
        eps = endpoints_for(c, book)
        if eps is None:
            eps = tuple(Endpoint(a, c.port) for a in book.dns.get(c.host, ()))
        clusters.append(c if eps == c.endpoints else replace(c, endpoints=eps))
    return replace(table, clusters=tuple(clusters))
