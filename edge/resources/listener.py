"""The Listener resource: a port, its protocol and security model, and which Hosts bind."""

from __future__ import annotations

from dataclasses import dataclass

from edge.resources.base import Invalid, RawObject, opt_dict, opt_int, opt_str, str_labels

SECURITY_MODELS = ("XFP", "SECURE", "INSECURE")
# HTTPS takes TLS and cleartext on one port, told apart by the first bytes (as Envoy's
# tls_inspector does for Emissary); the PROXY protocol is not served yet
PROTOCOLS = ("HTTP", "HTTPS")
STACKS = {("HTTP", "TCP"): "HTTP", ("TLS", "HTTP", "TCP"): "HTTPS", ("PROXY", "HTTP", "TCP"): "HTTPPROXY",
          ("TLS", "PROXY", "HTTP", "TCP"): "HTTPSPROXY"}
NAMESPACE_FROM = ("SELF", "ALL", "SELECTOR")


@dataclass(frozen=True)
class ListenerSpec:
    port: int
    protocol: str
    security_model: str
    l7_depth: int
    namespace_from: str
    namespace_selector: dict[str, str] | None
    host_selector: dict[str, str] | None
    stats_prefix: str
    # Envoy (and so Emissary) allows 2^31-1 when unset; edge bounds it, as nginx does (128)
    http2_max_concurrent_streams: int = 100


def parse_listener(obj: RawObject) -> ListenerSpec:
    spec = obj.spec
    port = opt_int(spec, "port", minimum=1, maximum=65535)
    if port is None:
        raise Invalid("spec.port", "is required")
    protocol = opt_str(spec, "protocol")
    if protocol is None and "protocolStack" in spec:
        stack = spec["protocolStack"]
        protocol = STACKS.get(tuple(stack)) if isinstance(stack, list) and all(isinstance(p, str) for p in stack) \
            else None
        if protocol is None:
            raise Invalid("spec.protocolStack", f"stack {stack!r} is not supported; use protocol: HTTP or HTTPS")
    if protocol is None:
        raise Invalid("spec.protocol", "is required (HTTP or HTTPS)")
    if protocol.upper() not in PROTOCOLS:
        raise Invalid("spec.protocol", f"{protocol!r} is not supported yet; supported: {', '.join(PROTOCOLS)}")
    model = opt_str(spec, "securityModel")
    if model is None:
        raise Invalid("spec.securityModel", "is required (XFP, SECURE or INSECURE)")
    if model.upper() not in SECURITY_MODELS:
        raise Invalid("spec.securityModel", f"must be one of {', '.join(SECURITY_MODELS)}, got {model!r}")
    binding = opt_dict(spec, "hostBinding")
    namespace = opt_dict(binding, "namespace", "spec.hostBinding")
    ns_from = (opt_str(namespace, "from", "SELF", "spec.hostBinding.namespace") or "SELF").upper()
    if binding and ns_from not in NAMESPACE_FROM:
        raise Invalid("spec.hostBinding.namespace.from", f"must be one of {', '.join(NAMESPACE_FROM)}")
    ns_selector = None
    if ns_from == "SELECTOR":
        sel = opt_dict(namespace, "selector", "spec.hostBinding.namespace")
        ns_selector = str_labels(sel.get("matchLabels"), "spec.hostBinding.namespace.selector.matchLabels")
    host_selector = None
    if "selector" in binding:
        sel = opt_dict(binding, "selector", "spec.hostBinding")
        host_selector = str_labels(sel.get("matchLabels"), "spec.hostBinding.selector.matchLabels")
    return ListenerSpec(
        port=port,
        protocol=protocol.upper(),
        security_model=model.upper(),
        l7_depth=opt_int(spec, "l7Depth", 0, minimum=0),
        # An Emissary Listener with no hostBinding binds nothing; files-only users expect
        # their Hosts to be served, so no hostBinding means ALL (and a notice says so).
        namespace_from=ns_from if binding else "ALL",
        namespace_selector=ns_selector,
        host_selector=host_selector,
        stats_prefix=opt_str(spec, "statsPrefix", "") or "",
        http2_max_concurrent_streams=opt_int(spec, "http2MaxConcurrentStreams", 100, minimum=1, maximum=2**31 - 1),
    )
