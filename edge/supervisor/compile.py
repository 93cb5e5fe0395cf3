"""compile(objects) -> (RouteTable, diagnostics): Emissary semantics, pure.

No I/O, no clock, no globals: the same objects always give the same table. Stages are
named functions run in order: select (ambassador_id, duplicates) -> parse each kind ->
TLS (Secrets, TLSContexts, each Host's certificate) -> group Mappings (canary weights) ->
associate Mappings with Hosts -> bind Hosts to Listeners -> clusters. The TLS stages
(termination and origination) live in `edge.supervisor.compile_tls`; this module runs
them in order with the others. An invalid object is dropped with a Diagnostic; everything
else still compiles. Endpoints other than IP literals are filled in afterwards by
`edge.supervisor.endpoints.fill`, from what the supervisor's resolvers know.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from edge.model import (
    Cluster,
    CorsPolicy,
    Diagnostic,
    Endpoint,
    HeaderOp,
    ListenerSpec,
    Matcher,
    RateLimitRule,
    Route,
    RouteTable,
    Settings,
    Target,
    VirtualHost,
)
from edge.resources.base import Invalid, RawObject, ambassador_ids
from edge.resources.host import HostSpec, parse_host
from edge.resources.listener import ListenerSpec as ListenerInput
from edge.resources.listener import parse_listener
from edge.resources.mapping import MappingSpec, field_diagnostics, parse_mapping
from edge.resources.module import ModuleSpec, config_diagnostics, parse_module
from edge.resources.ratelimit import parse_ratelimit
from edge.resources.resolver import BUILT_IN, CONSUL, SERVICE, ResolverSpec, parse_resolver
from edge.resources.resolver import KINDS as RESOLVER_KINDS
from edge.supervisor.compile_tls import (HostPolicy, _Origin, check_tls_binding, compile_origination, compile_tls,
                                         finish_tls, https_default_listener)

DEFAULT_TIMEOUT_MS = 3000
DEFAULT_CONNECT_TIMEOUT_MS = 3000
DEFAULT_IDLE_TIMEOUT_MS = 300_000
DEFAULT_LISTENER_PORT = 8080
DEFAULT_ADMIN_ADDRESS = "127.0.0.1:8877"
INTERNAL_PRECEDENCE = 1_000_000  # Emissary's internal Mappings win over every user Mapping
INTERNAL_TIMEOUT_MS = 10_000
ADMIN_CLUSTER = "cluster_edge_admin"
SUPPORTED_KINDS = ("Mapping", "Host", "Listener", "Module", "RateLimit", "TLSContext", "Secret", *RESOLVER_KINDS)
# read by reference (a Host's tlsSecret, a TLSContext's secret), never selected by
# ambassador_id: Emissary reads Secrets the same way
BY_REFERENCE_KINDS = ("Secret",)


@dataclass(frozen=True)
class CompileOptions:
    ambassador_id: str = "default"
    default_listener_port: int = DEFAULT_LISTENER_PORT
    # the supervisor's admin HTTP server (HOST:PORT): the internal check and diag routes go
    # there; None: no internal routes (a table of the user's Mappings alone)
    admin_address: str | None = None


class _Diags:
    def __init__(self):
        self.items: list[Diagnostic] = []

    def add(self, severity: str, obj: RawObject, field: str, message: str) -> None:
        self.items.append(Diagnostic(severity, obj.source, obj.kind, obj.namespace, obj.name, field, message))


def compile(objects: Iterable[RawObject], options: CompileOptions = CompileOptions()) -> tuple[RouteTable, list[Diagnostic]]:
    diags = _Diags()
    selected = select(objects, options, diags)
    module = compile_module(selected.get("Module", []), diags)
    listeners = compile_listeners(selected.get("Listener", []), options, diags)
    hosts = compile_hosts(selected.get("Host", []), diags)
    tls = compile_tls(hosts, selected.get("TLSContext", []), selected.get("Secret", []), diags)
    hosts = tls.hosts  # without those whose TLS cannot be set up
    listeners = https_default_listener(listeners, tls, diags)
    resolvers = compile_resolvers(selected, module, diags)
    mappings = compile_mappings(selected.get("Mapping", []), module, resolvers, diags,
                                auth=selected.get("AuthService", []))
    mappings, origins = compile_origination(mappings, tls, diags)
    routes, clusters = build_routes(mappings, module, diags, origins)
    routes, clusters, internal = add_internal_routes(routes, clusters, module, options)
    certificates, server_tls, client_tls, clusters = finish_tls(tls, origins, clusters)
    vhosts = associate_hosts(hosts, routes, mappings, internal, tls.policies)
    bound = bind_listeners(listeners, hosts, vhosts)
    check_tls_binding(bound, vhosts, hosts, tls, diags)
    rate_limits = compile_rate_limits(selected.get("RateLimit", []), diags)
    table = RouteTable(
        settings=module.settings,
        listeners=bound,
        virtual_hosts=tuple(vhosts),
        routes=tuple(r for r, _ in routes),
        clusters=tuple(clusters),
        diagnostics=tuple(sorted(diags.items, key=diag_key)),
        rate_limits=rate_limits,
        certificates=certificates,
        server_tls=server_tls,
        client_tls=client_tls,
    )
    return table, list(table.diagnostics)


def diag_key(d: Diagnostic):
    return (d.source, d.kind, d.namespace, d.name, d.field, d.message)


# ---- select --------------------------------------------------------------------------

def select(objects: Iterable[RawObject], options: CompileOptions, diags: _Diags) -> dict[str, list[RawObject]]:
    """Keep supported kinds for our ambassador_id; drop duplicate identities."""
    by_key: dict[str, RawObject] = {}
    for obj in sorted(objects, key=lambda o: (o.key, o.source)):
        if obj.kind not in BY_REFERENCE_KINDS:
            try:
                ids = ambassador_ids(obj.spec)
            except Invalid as exc:
                diags.add("error", obj, exc.field, exc.message)
                continue
            if options.ambassador_id not in ids:
                continue
        if obj.kind == "AuthService":
            # kept (not served): compile_mappings drops what it would have protected
            diags.add("error", obj, "kind", "AuthService is not served by edge yet: every Mapping without "
                      "bypass_auth: true is dropped, so nothing that needs authentication is served without it")
        elif obj.kind not in SUPPORTED_KINDS:
            diags.add("warning", obj, "kind", f"kind {obj.kind} is not served by edge yet; ignored")
            continue
        if obj.key in by_key:
            first = by_key[obj.key]
            diags.add("error", obj, "metadata.name",
                      f"duplicate of {first.kind} {first.namespace}/{first.name} from {first.source}; this one is ignored")
            continue
        by_key[obj.key] = obj
    kinds: dict[str, list[RawObject]] = defaultdict(list)
    for obj in by_key.values():
        kinds[obj.kind].append(obj)
    return kinds


# ---- Module, Listener, Host ----------------------------------------------------------

def compile_module(objs: list[RawObject], diags: _Diags) -> ModuleSpec:
    module = ModuleSpec(Settings(), {}, None)
    for obj in objs:
        errors, warnings = config_diagnostics(obj)
        for field, message in warnings:
            diags.add("warning", obj, field, message)
        if errors:
            for field, message in errors:
                diags.add("error", obj, field, message)
            continue
        try:
            module = parse_module(obj)
        except Invalid as exc:
            diags.add("error", obj, exc.field, exc.message)
    return module


def compile_listeners(objs: list[RawObject], options: CompileOptions, diags: _Diags) -> list[tuple[RawObject | None, ListenerInput]]:
    out: list[tuple[RawObject | None, ListenerInput]] = []
    ports: dict[int, RawObject] = {}
    for obj in objs:
        try:
            spec = parse_listener(obj)
        except Invalid as exc:
            diags.add("error", obj, exc.field, exc.message)
            continue
        if spec.port in ports:
            other = ports[spec.port]
            diags.add("error", obj, "spec.port",
                      f"port {spec.port} is already used by Listener {other.namespace}/{other.name}")
            continue
        if "hostBinding" not in obj.spec:
            diags.add("notice", obj, "spec.hostBinding", "absent: binding Hosts from all namespaces")
        ports[spec.port] = obj
        out.append((obj, spec))
    if not objs:
        out.append((None, ListenerInput(options.default_listener_port, "HTTP", "XFP", 0, "ALL", None, None, "")))
    return out


def compile_hosts(objs: list[RawObject], diags: _Diags) -> list[tuple[RawObject, HostSpec]]:
    out = []
    for obj in objs:
        try:
            spec = parse_host(obj)
        except Invalid as exc:
            diags.add("error", obj, exc.field, exc.message)
            continue
        for severity, field, message in spec.notes:
            diags.add(severity, obj, field, message)
        out.append((obj, spec))
    return out


# ---- resolvers --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Resolvers:
    by_name: dict[str, ResolverSpec]
    default: ResolverSpec


def compile_resolvers(selected: dict[str, list[RawObject]], module: ModuleSpec, diags: _Diags) -> _Resolvers:
    """Every resolver by name (the built-in `kubernetes-service` and `kubernetes-endpoint`
    included) and the default one: the Module's `resolver`, else `kubernetes-service`."""
    by_name = dict(BUILT_IN)
    for kind in sorted(RESOLVER_KINDS):
        for obj in selected.get(kind, []):
            if obj.name in by_name and obj.name not in BUILT_IN:
                diags.add("error", obj, "metadata.name", f"another resolver is already named {obj.name!r}; ignored")
                continue
            try:
                by_name[obj.name] = parse_resolver(obj)
            except Invalid as exc:
                diags.add("error", obj, exc.field, exc.message)
    default = by_name[SERVICE]
    if module.resolver is not None:
        if module.resolver in by_name:
            default = by_name[module.resolver]
        else:
            for obj in selected.get("Module", []):
                diags.add("error", obj, "spec.config.resolver",
                          f"no resolver named {module.resolver!r}; using {SERVICE}")
    return _Resolvers(by_name, default)


# ---- Mappings and canary groups ------------------------------------------------------

@dataclass(frozen=True)
class _Mapping:
    obj: RawObject
    spec: MappingSpec
    resolver: ResolverSpec
    origin: int = -1  # index into compile_origination's origins: TLS to the upstream; -1: none


def compile_mappings(objs: list[RawObject], module: ModuleSpec, resolvers: _Resolvers,
                     diags: _Diags, auth: list[RawObject] = ()) -> list[_Mapping]:
    """The Mappings that can be served as written. With an AuthService (which edge does not
    serve), only those with bypass_auth: true: the others would be served unauthenticated."""
    out = []
    defaults = module.mapping_defaults
    guard = _auth_guard(auth)
    for obj in objs:
        errors, warnings = field_diagnostics(obj.spec)
        if guard and obj.spec.get("bypass_auth", (defaults or {}).get("bypass_auth")) is not True:
            errors.append(("spec.bypass_auth", guard))
        if defaults:  # what the Module's defaults.httpmapping gives this Mapping counts too
            inherited = field_diagnostics({k: v for k, v in defaults.items() if k not in obj.spec})
            errors += [(f, m + " (from the Module's defaults.httpmapping)") for f, m in inherited[0]]
        if errors:
            for field, message in errors:
                diags.add("error", obj, field, message)
            continue
        try:
            spec = parse_mapping(obj, defaults, module.default_labels)
        except Invalid as exc:
            diags.add("error", obj, exc.field, exc.message)
            continue
        resolver = resolvers.default if spec.resolver is None else resolvers.by_name.get(spec.resolver)
        if resolver is None:
            diags.add("error", obj, "spec.resolver", f"no resolver named {spec.resolver!r}; Mapping dropped")
            continue
        for field, message in warnings:
            diags.add("warning", obj, field, message)
        if spec.hostname is not None and obj.spec.get("host") is not None:
            diags.add("warning", obj, "spec.host", "both host and hostname are set: host is ignored, as in Emissary")
        out.append(_Mapping(obj, spec, resolver))
    return out


def _auth_guard(auth: list[RawObject]) -> str:
    """The error for a Mapping an AuthService would protect, or "" without one."""
    if not auth:
        return ""
    names = ", ".join(f"{a.namespace}/{a.name}" for a in auth)
    return (f"AuthService {names} is not served by edge yet and this Mapping does not set bypass_auth: "
            "true; Mapping dropped so it is never served unauthenticated")


def group_key(spec: MappingSpec) -> tuple:
    return (spec.path_kind, spec.prefix, spec.case_sensitive, spec.hostname, spec.host, spec.host_regex,
            spec.method, tuple(sorted(spec.headers, key=repr)), tuple(sorted(spec.query, key=repr)),
            spec.precedence)


def _group_id(key: tuple) -> str:
    return hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()


def cluster_for(m: _Mapping, connect_timeout_ms: int, origin: _Origin | None = None) -> Cluster:
    """The Mapping's upstream. Its name is the service, plus whatever else makes it a
    different upstream: the namespace of an unqualified Kubernetes name, a resolver other
    than the default, a connect timeout other than the default, TLS (`otls`, and the
    TLSContext's name and namespace), so a TLS cluster is never the cleartext one to the
    same host and port. Its `tls` is the origin's index in compile_origination's list until
    finish_tls sets the table's."""
    svc, resolver = m.spec.service, m.resolver
    static = svc.is_ip and resolver.discovery != CONSUL
    name = f"cluster_{svc.host}_{svc.port_name or svc.port}"
    namespace = m.obj.namespace if not static and resolver.discovery != CONSUL else ""
    if namespace and "." not in svc.host:
        name += f"_{namespace}"
    if resolver.name != SERVICE and not static:
        name += f"_{resolver.name}"
    if connect_timeout_ms != DEFAULT_CONNECT_TIMEOUT_MS:
        name += f"_ct{connect_timeout_ms}"
    if origin is not None:
        name += f"_{origin.tag}"
    return Cluster(name.replace(".", "_").replace(":", "_"), m.spec.service_text, svc.host,
                   svc.port, connect_timeout_ms, (Endpoint(svc.host, svc.port),) if static else (),
                   "static" if static else resolver.discovery, namespace, svc.port_name,
                   resolver.address, resolver.datacenter, m.origin if origin is not None else -1, m.spec.grpc)


def canary_weights(weights: list[int | None]) -> list[int] | None:
    """Cumulative weights for a group, Emissary's way; None when the total exceeds 100.

    Weighted Mappings take their weight; unweighted ones share what is left equally (the
    last one takes the rounding remainder), and the last target always ends at 100.
    """
    given = sum(w for w in weights if w is not None)
    if given > 100:
        return None
    unweighted = [i for i, w in enumerate(weights) if w is None]
    share, extra = divmod(100 - given, len(unweighted)) if unweighted else (0, 0)
    actual = []
    for i, w in enumerate(weights):
        if w is None:
            w = share + (extra if i == unweighted[-1] else 0)
        actual.append(w)
    cumulative, total = [], 0
    for w in actual:
        total += w
        cumulative.append(total)
    if total and total != 100:  # weights given but not summing to 100: scale to 100
        cumulative = [c * 100 // total for c in cumulative]
        cumulative[-1] = 100
    return cumulative


def _ops(adds) -> tuple[HeaderOp, ...]:
    return tuple(HeaderOp(a.name, a.value, a.append) for a in adds)


def _linkerd(m: _Mapping, module: ModuleSpec) -> tuple[HeaderOp, ...]:
    """Emissary's add_linkerd_headers (the Mapping's, else the Module's): l5d-dst-override
    names the service as host:port, replacing any the client sent."""
    on = m.spec.add_linkerd_headers
    if not (module.add_linkerd_headers if on is None else on):
        return ()
    svc = m.spec.service
    port = svc.port_name or str(svc.port)
    host = f"[{svc.host}]" if ":" in svc.host else svc.host
    return (HeaderOp("l5d-dst-override", f"{host}:{port}", False),)


def group_cors(members: list[_Mapping], module: ModuleSpec, diags: _Diags) -> CorsPolicy | None:
    """The cors of a route (a canary group), as Emissary's: a member's own cors is
    flattened into the group (irhttpmappinggroup.py: the last member's, here in
    namespace/name order), else the Module's (v3route.py), so every target of the route
    answers a preflight alike. None when it allows no origin (a Mapping's own cors without
    origins still hides the Module's)."""
    own = [m for m in members if m.spec.cors is not None]
    cors = own[-1].spec.cors if own else module.cors
    if own and any(m.spec.cors != cors for m in own):
        chosen = own[-1].obj
        for m in own:
            if m.spec.cors != cors:
                diags.add("warning", m.obj, "spec.cors", f"the Mappings of this canary group have different cors: "
                          f"the route serves {chosen.namespace}/{chosen.name}'s, as Emissary serves one per route")
    return cors if cors is not None and cors.origins else None


def build_routes(mappings: list[_Mapping], module: ModuleSpec, diags: _Diags, origins: list[_Origin] = ()
                 ) -> tuple[list[tuple[Route, list[_Mapping]]], list[Cluster]]:
    groups: dict[tuple, list[_Mapping]] = defaultdict(list)
    for m in mappings:
        groups[group_key(m.spec)].append(m)
    clusters: dict[str, Cluster] = {}
    routes: list[tuple[Route, list[_Mapping]]] = []
    default_timeout = module.request_timeout_ms if module.request_timeout_ms is not None else DEFAULT_TIMEOUT_MS
    for key, members in groups.items():
        members.sort(key=lambda m: (m.obj.namespace, m.obj.name))
        cumulative = canary_weights([m.spec.weight for m in members])
        if cumulative is None:
            total = sum(m.spec.weight or 0 for m in members)
            names = ", ".join(f"{m.obj.namespace}/{m.obj.name}" for m in members)
            for m in members:
                diags.add("error", m.obj, "spec.weight",
                          f"canary group weights total {total}, over 100 (group: {names}); group dropped")
            continue
        targets = []
        cors = group_cors(members, module, diags)
        for m, weight in zip(members, cumulative):
            s = m.spec
            cluster = cluster_for(m, s.connect_timeout_ms or DEFAULT_CONNECT_TIMEOUT_MS,
                                  origins[m.origin] if m.origin >= 0 else None)
            name = cluster.name
            clusters.setdefault(name, cluster)
            if clusters[name].http2 != cluster.http2:
                # Emissary names gRPC clusters as any other and refuses to merge the two
                diags.add("error", m.obj, "spec.grpc", f"cannot merge cluster {name}: mismatched attributes grpc "
                          "(another Mapping sends this service HTTP/1.1); Mapping dropped so its calls are never "
                          "sent with the other's protocol")
                continue
            targets.append(Target(
                mapping=f"{m.obj.namespace}/{m.obj.name}",
                cluster=name,
                weight=weight,
                rewrite=s.rewrite,
                regex_rewrite_pattern=s.regex_rewrite[0] if s.regex_rewrite else None,
                regex_rewrite_substitution=s.regex_rewrite[1] if s.regex_rewrite else "",
                host_rewrite=s.host_rewrite if s.host_rewrite or not s.auto_host_rewrite else s.service.host,
                add_request_headers=_ops(s.add_request_headers) + _linkerd(m, module),
                add_response_headers=_ops(s.add_response_headers),
                remove_request_headers=s.remove_request_headers,
                remove_response_headers=s.remove_response_headers,
                timeout_ms=s.timeout_ms if s.timeout_ms is not None else default_timeout,
                idle_timeout_ms=s.idle_timeout_ms if s.idle_timeout_ms is not None else DEFAULT_IDLE_TIMEOUT_MS,
                labels=s.labels,
                cors=cors,
            ))
        if not targets:
            continue
        s = members[0].spec
        host = s.host if s.host is not None else (s.hostname if s.hostname not in (None, "*") else None)
        route = Route(
            group=_group_id(key),
            path_kind=s.path_kind,
            path=s.prefix,
            case_sensitive=s.case_sensitive,
            precedence=s.precedence,
            method=s.method,
            host=host,
            host_regex=s.host_regex and s.host is not None,
            headers=tuple(Matcher(n, v, r) for n, v, r in sorted(s.headers, key=repr)),
            query=tuple(Matcher(n, v, r) for n, v, r in sorted(s.query, key=repr)),
            targets=tuple(targets),
        )
        routes.append((route, members))
    routes.sort(key=lambda rm: route_order(rm[0]))
    return routes, [clusters[n] for n in sorted(clusters)]


def route_order(route: Route) -> tuple:
    """Emissary's order: precedence, then prefix length, then number of header/query
    matches (Emissary turns `method` and `host` into :method and :authority header
    matches, so they count as headers)."""
    conditions = len(route.headers) + len(route.query) + (route.method is not None) + (route.host is not None)
    return (-route.precedence, -len(route.path), -conditions, route.path, route.group)


# ---- internal routes: Emissary's probes and diag through the Listener --------------------

def admin_endpoint(address: str) -> Endpoint:
    """Where the Listener reaches the admin server: its address, but loopback when it binds
    every address (0.0.0.0, ::, or no host)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return Endpoint(host, int(port))


def internal_routes(module: ModuleSpec) -> list[tuple[str, str]]:
    """(name, path prefix) of Emissary's internal Mappings that this Module enables.
    /edge/v1/ (the admin's own API, which can restart workers) is never among them; the
    diag page only with diagnostics.allow_non_local, since the Listener cannot tell a local
    client from a remote one."""
    out = []
    if module.liveness_probe:
        out.append(("internal_liveness_probe_mapping", "/ambassador/v0/check_alive"))
    if module.readiness_probe:
        out.append(("internal_readiness_probe_mapping", "/ambassador/v0/check_ready"))
    if module.diagnostics and module.diagnostics_non_local:
        out.append(("internal_diagnostics_probe_mapping", "/ambassador/v0/diag/"))
    return out


def add_internal_routes(routes: list[tuple[Route, list[_Mapping]]], clusters: list[Cluster], module: ModuleSpec,
                        options: CompileOptions) -> tuple[list[tuple[Route, list[_Mapping]]], list[Cluster], tuple[int, ...]]:
    """The routes with the internal ones first (they outrank every user Mapping, as in
    Emissary), the clusters with the admin's, and the internal routes' indexes: every
    virtual host has them."""
    wanted = internal_routes(module) if options.admin_address is not None else []
    if not wanted:
        return routes, clusters, ()
    ep = admin_endpoint(options.admin_address)
    cluster = Cluster(ADMIN_CLUSTER, options.admin_address, ep.address, ep.port, DEFAULT_CONNECT_TIMEOUT_MS, (ep,))
    internal = []
    for name, prefix in wanted:
        target = Target(mapping=f"internal/{name}", cluster=ADMIN_CLUSTER, weight=100, rewrite=prefix,
                        regex_rewrite_pattern=None, regex_rewrite_substitution="", host_rewrite=None,
                        add_request_headers=(), add_response_headers=(), remove_request_headers=(),
                        remove_response_headers=(), timeout_ms=INTERNAL_TIMEOUT_MS,
                        idle_timeout_ms=DEFAULT_IDLE_TIMEOUT_MS)
        internal.append((Route(_group_id(("internal", name)), "prefix", prefix, True, INTERNAL_PRECEDENCE, None,
                               None, False, (), (), (target,)), []))
    merged = sorted(internal + routes, key=lambda rm: route_order(rm[0]))
    others = [c for c in clusters if c.name != ADMIN_CLUSTER]
    return merged, sorted(others + [cluster], key=lambda c: c.name), tuple(range(len(internal)))


# ---- rate limits -----------------------------------------------------------------------

def compile_rate_limits(objs: list[RawObject], diags: _Diags) -> tuple[RateLimitRule, ...]:
    """Every limit of every valid RateLimit, in (namespace, name) order."""
    rules: list[RateLimitRule] = []
    for obj in sorted(objs, key=lambda o: (o.namespace, o.name)):
        try:
            rules.extend(parse_ratelimit(obj))
        except Invalid as exc:
            diags.add("error", obj, exc.field, exc.message)
            continue
        for key in sorted(set(obj.spec) - {"domain", "limits", "ambassador_id"}):
            diags.add("warning", obj, f"spec.{key}", "field is not supported by edge; ignored")
    return tuple(rules)


# ---- Host association and Listener binding --------------------------------------------

def hostglob_matches(a: str, b: str) -> bool:
    """Whether two DNS globs (a leading or trailing '*') can match a common name."""
    a, b = a.lower(), b.lower()
    if a == "*" or b == "*":
        return True
    if a.startswith("*") and b.startswith("*"):
        return a[1:].endswith(b[1:]) or b[1:].endswith(a[1:])
    if a.endswith("*") and b.endswith("*"):
        return a[:-1].startswith(b[:-1]) or b[:-1].startswith(a[:-1])
    for glob, name in ((a, b), (b, a)):
        if glob.startswith("*"):
            return name.endswith(glob[1:])
        if glob.endswith("*"):
            return name.startswith(glob[:-1])
    return a == b


def _labels_match(selector: dict[str, str], labels: dict) -> bool:
    return all(str(labels.get(k)) == v for k, v in selector.items())


def mapping_attaches(host: HostSpec, m: _Mapping) -> bool:
    """Emissary's Host/Mapping association: by hostname, or by mappingSelector labels;
    when the Host has a selector and the Mapping names a hostname, both must match."""
    s = m.spec
    if s.host is not None and not s.host_regex:
        named = s.host
    else:
        named = s.hostname  # None when the Mapping did not say
    regex_only = s.host is not None and s.host_regex
    name_ok = regex_only or hostglob_matches(host.hostname, named or "*")
    if host.selector is None:
        return name_ok
    selector_ok = _labels_match(host.selector, m.obj.labels)
    if named is None and not regex_only:
        return selector_ok
    return selector_ok and name_ok


def associate_hosts(hosts: list[tuple[RawObject, HostSpec]], routes: list[tuple[Route, list[_Mapping]]],
                    mappings: list[_Mapping], internal: tuple[int, ...] = (),
                    policies: dict[str, HostPolicy] | None = None) -> list[VirtualHost]:
    """Each Host's virtual host: the routes with a member Mapping that attaches to it
    (mapping_attaches), in route order. Hosts without a mappingSelector, the usual case,
    go through an index of the Mappings' hostnames, so 1,000 Hosts and 10,000 Mappings
    cost a dict probe per exact name instead of ten million glob comparisons."""
    if not hosts:
        return [VirtualHost("*", "*", tuple(range(len(routes))))]
    index = _HostnameIndex(routes)
    vhosts = []
    for obj, spec in sorted(hosts, key=lambda h: (h[1].hostname, h[0].namespace, h[0].name)):
        if spec.selector is None:
            attached = index.attached(spec.hostname)
        else:
            attached = tuple(i for i, (_, members) in enumerate(routes)
                             if any(mapping_attaches(spec, m) for m in members))
        if internal:
            attached = tuple(sorted(set(attached) | set(internal)))
        key = f"{obj.namespace}/{obj.name}"
        policy = (policies or {}).get(key)
        if policy is None:
            vhosts.append(VirtualHost(key, spec.hostname, attached))
        else:
            vhosts.append(VirtualHost(key, spec.hostname, attached, policy.tls, policy.insecure_action,
                                      policy.additional_port))
    return vhosts


class _HostnameIndex:
    """Routes by the hostname their Mappings name, for Hosts without a mappingSelector
    (where a Mapping attaches when its hostname glob can match the Host's)."""

    def __init__(self, routes: list[tuple[Route, list[_Mapping]]]):
        self.always: set[int] = set()  # regex hosts, no hostname, or "*"
        self.exact: dict[str, set[int]] = {}
        self.globs: dict[str, set[int]] = {}
        for i, (_, members) in enumerate(routes):
            for m in members:
                s = m.spec
                if s.host is not None and s.host_regex:
                    self.always.add(i)
                    continue
                named = (s.host if s.host is not None else s.hostname) or "*"
                named = named.lower()
                if named == "*":
                    self.always.add(i)
                elif "*" in named:
                    self.globs.setdefault(named, set()).add(i)
                else:
                    self.exact.setdefault(named, set()).add(i)

    def attached(self, hostname: str) -> tuple[int, ...]:
        hostname = hostname.lower()
        found = set(self.always)
        if "*" in hostname:
            for name, members in self.exact.items():
                if hostglob_matches(hostname, name):
                    found |= members
        else:
            found |= self.exact.get(hostname, set())
        for glob, members in self.globs.items():
            if hostglob_matches(hostname, glob):
                found |= members
        return tuple(sorted(found))


def bind_listeners(listeners: list[tuple[RawObject | None, ListenerInput]],
                   hosts: list[tuple[RawObject, HostSpec]], vhosts: list[VirtualHost]) -> tuple[ListenerSpec, ...]:
    host_objs = {f"{o.namespace}/{o.name}": o for o, _ in hosts}
    out = []
    for obj, spec in sorted(listeners, key=lambda ls: ls[1].port):
        bound = []
        for i, vh in enumerate(vhosts):
            hobj = host_objs.get(vh.name)
            if hobj is None:  # the implicit "*" host
                bound.append(i)
                continue
            if spec.namespace_from == "SELF" and obj is not None and hobj.namespace != obj.namespace:
                continue
            if spec.namespace_from == "SELECTOR":
                continue  # namespace labels are only known from Kubernetes
            if spec.host_selector is not None and not _labels_match(spec.host_selector, hobj.labels):
                continue
            bound.append(i)
        name = f"{obj.namespace}/{obj.name}" if obj is not None else f"default-{spec.protocol.lower()}"
        out.append(ListenerSpec(name, spec.port, "0.0.0.0", spec.protocol, spec.security_model,
                                spec.l7_depth, spec.stats_prefix, tuple(bound), spec.http2_max_concurrent_streams))
    return tuple(out)
