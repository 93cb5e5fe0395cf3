"""Resolvers: how a Mapping's `service` becomes endpoints (Emissary's resolver kinds).

- KubernetesServiceResolver (the default, built in as `kubernetes-service`): the Service's
  cluster address, the way cluster DNS answers for `name.namespace`.
- KubernetesEndpointResolver (built in as `kubernetes-endpoint`): the ready pod addresses
  of the Service's EndpointSlices.
- ConsulResolver: the passing instances of a Consul service (`address`, `datacenter`).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.resources.base import Invalid, RawObject, opt_str

SERVICE = "kubernetes-service"
ENDPOINT = "kubernetes-endpoint"
CONSUL = "consul"
KINDS = {"KubernetesServiceResolver": SERVICE, "KubernetesEndpointResolver": ENDPOINT, "ConsulResolver": CONSUL}


@dataclass(frozen=True)
class ResolverSpec:
    name: str
    discovery: str  # SERVICE, ENDPOINT or CONSUL
    address: str = ""  # Consul agent HOST:PORT
    datacenter: str = ""


BUILT_IN = {SERVICE: ResolverSpec(SERVICE, SERVICE), ENDPOINT: ResolverSpec(ENDPOINT, ENDPOINT)}


def parse_resolver(obj: RawObject) -> ResolverSpec:
    discovery = KINDS[obj.kind]
    if discovery != CONSUL:
        return ResolverSpec(obj.name, discovery)
    address = opt_str(obj.spec, "address")
    if not address:
        raise Invalid("spec.address", "is required (the Consul agent, HOST:PORT)")
    address = address.removeprefix("http://").rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid("spec.address", f"must be HOST:PORT, got {address!r}")
    return ResolverSpec(obj.name, CONSUL, address, opt_str(obj.spec, "datacenter", "dc1") or "dc1")
