"""compile(objects) -> (RouteTable, diagnostics): Emissary semantics, pure.

No I/O, no clock, no globals: the same objects always give the same table. Stages are
named functions run in order: select (ambassador_id, duplicates) -> parse each kind ->
TLS (Secrets, TLSContexts, each Host's certificate) -> group Mappings (canary weights) ->
associate Mappings with Hosts -> bind Hosts to Listeners -> clusters. An invalid object
is dropped with a Diagnostic; everything else still compiles. Endpoints other than IP
literals are filled in afterwards by `edge.supervisor.endpoints.fill`, from what the
supervisor's resolvers know.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable

from edge.model import (
    Certificate,
    ClientTLS,
    Cluster,
    Diagnostic,
    Endpoint,
    HeaderOp,
    ListenerSpec,
    Matcher,
    RateLimitRule,
    Route,
    RouteTable,
    ServerTLS,
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
from edge.resources.tls import (TLSContextSpec, TLSSettings, ca_bundle, client_pair, parse_tlscontext, read_secret,
                                secret_ref, server_name, server_pair)

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


# ---- TLS: Secrets, TLSContexts, each Host's certificate ---------------------------------

DROPPED = "; Host not served, its cleartext included (Emissary disables a Host whose TLS cannot be set up)"
INGRESS_SOURCE = "kubernetes:ingress/"


@dataclass(frozen=True)
class HostPolicy:
    """What compile_tls decided for one Host's virtual host."""

    tls: int  # index into server_tls, -1: none
    insecure_action: str
    additional_port: int


@dataclass(frozen=True)
class _TLSWant:
    """A ServerTLS before indexes: what one Host or TLSContext asks for."""

    name: str  # "Host ns/name" or "TLSContext ns/name"
    obj: RawObject
    names_field: str  # where its server names come from, for diagnostics
    server_names: tuple[str, ...]
    certificate: str  # Secret "ns/name"
    chain_pem: str
    key_pem: str
    ca: str | None  # Secret "ns/name"
    ca_pem: str
    cert_required: bool
    settings: TLSSettings

    def same_tls(self, other: _TLSWant) -> bool:
        return (self.certificate, self.ca, self.cert_required, self.settings.min_version, self.settings.max_version,
                self.settings.cipher_suites, self.settings.ecdh_curves, self.settings.alpn_protocols) == \
            (other.certificate, other.ca, other.cert_required, other.settings.min_version,
             other.settings.max_version, other.settings.cipher_suites, other.settings.ecdh_curves,
             other.settings.alpn_protocols)


@dataclass(frozen=True)
class _TLS:
    hosts: list[tuple[RawObject, HostSpec]]  # the Hosts still served
    certificates: tuple[Certificate, ...]
    server_tls: tuple[ServerTLS, ...]
    policies: dict[str, HostPolicy]  # by "ns/name" of the Host
    owners: dict[str, RawObject]  # ServerTLS name -> the object it came from
    # every TLSContext by (namespace, name): parsed, or why it is invalid (for origination)
    contexts: dict[tuple[str, str], tuple[RawObject, TLSContextSpec] | str] = field(default_factory=dict)
    secrets: _Secrets | None = None


class _Secrets:
    """Secrets by (namespace, name), each read (decoded, parsed) at most once per compile."""

    def __init__(self, objs: list[RawObject]):
        self.objs = {(o.namespace, o.name): o for o in objs}
        self.read: dict[tuple[str, str], object] = {}

    def material(self, namespace: str, name: str):
        key = (namespace, name)
        if key not in self.read:
            obj = self.objs.get(key)
            if obj is None:
                self.read[key] = Invalid("", f"secret {namespace}/{name} not found")
            else:
                try:
                    self.read[key] = read_secret(obj)
                except Invalid as exc:
                    self.read[key] = Invalid("", f"secret {namespace}/{name} field {exc.field}: {exc.message}")
        found = self.read[key]
        if isinstance(found, Invalid):
            raise found
        return found


def _ca(secrets: _Secrets, settings: TLSSettings, namespace: str, namespacing: bool, field: str,
        prefix: str = "") -> tuple[str | None, str, bool]:
    """(CA Secret "ns/name" or None, its PEM, cert_required) for `settings`; Invalid(field)."""
    required = bool(settings.cert_required)
    if settings.ca_secret is None:
        if required:
            raise Invalid(field, prefix + "cert_required needs ca_secret (the CA to verify client certificates "
                          "against)")
        return None, "", False
    ns, name = secret_ref(settings.ca_secret, namespace, namespacing)
    try:
        material = secrets.material(ns, name)
        bundle = ca_bundle(material)
    except Invalid as exc:
        raise Invalid(field, prefix + exc.message) from None
    if material.cert_required is not None:  # Emissary: a cert_required key in the CA Secret wins
        required = material.cert_required
    return f"{ns}/{name}", bundle, required


def _host_want(obj: RawObject, spec: HostSpec, secrets: _Secrets,
               contexts: dict[tuple[str, str], tuple[RawObject, TLSContextSpec] | str], diags: _Diags) -> _TLSWant:
    """The TLS a Host with a tlsSecret asks for (Emissary's IRHost.setup). Invalid: the Host
    cannot be served."""
    ns, name = spec.tls_secret
    try:
        chain, key = server_pair(secrets.material(ns, name))
    except Invalid as exc:
        raise Invalid("spec.tlsSecret.name", exc.message) from None
    settings, ca_ns, namespacing, ca_field, prefix = spec.tls or TLSSettings(), obj.namespace, True, \
        "spec.tls.ca_secret", ""
    context = spec.tls_context
    implicit = context is None and spec.tls is None and (obj.namespace, f"{obj.name}-context") in contexts
    if implicit:
        context = f"{obj.name}-context"
    if context is not None:
        field = "spec.tlsContext.name" if not implicit else "spec.tlsSecret"
        found = contexts.get((obj.namespace, context))
        if found is None:
            raise Invalid(field, f"TLSContext {obj.namespace}/{context} not found")
        if isinstance(found, str):
            raise Invalid(field, f"TLSContext {obj.namespace}/{context} is invalid ({found})")
        cobj, cspec = found
        if implicit:
            diags.add("notice", obj, field, f"uses TLSContext {obj.namespace}/{context}: Emissary pairs a Host "
                      "with the TLSContext named <Host name>-context")
        if cspec.secret is not None:
            theirs = secret_ref(cspec.secret, cobj.namespace, cspec.secret_namespacing)
            if theirs != (ns, name):
                raise Invalid(field, f"TLSContext {obj.namespace}/{context} names secret {'/'.join(theirs)}, "
                              f"this Host's tlsSecret is {ns}/{name} (Emissary: secret info mismatch)")
        if cspec.hosts and spec.hostname not in cspec.hosts and obj.name not in cspec.hosts:
            diags.add("warning", obj, field, f"TLSContext {obj.namespace}/{context} hosts {list(cspec.hosts)} "
                      f"do not name this Host's hostname {spec.hostname!r}; Emissary reports the mismatch and "
                      "uses the TLSContext all the same, and so does edge")
        settings, ca_ns, namespacing = cspec.settings, cobj.namespace, cspec.secret_namespacing
        ca_field, prefix = field, f"TLSContext {obj.namespace}/{context} field spec.ca_secret: "
    ca, ca_pem, required = _ca(secrets, settings, ca_ns, namespacing, ca_field, prefix)
    return _TLSWant(f"Host {obj.namespace}/{obj.name}", obj, "spec.hostname", (server_name(spec.hostname),),
                    f"{ns}/{name}", chain, key, ca, ca_pem, required, settings)


def _context_want(obj: RawObject, spec: TLSContextSpec, secrets: _Secrets) -> _TLSWant:
    """A TLSContext with hosts that no Host names: it terminates TLS for its hosts itself."""
    if spec.secret is None:
        raise Invalid("spec.secret", "is required: a TLSContext with hosts that no Host names in tlsContext "
                      "terminates TLS for them itself, with this Secret")
    ns, name = secret_ref(spec.secret, obj.namespace, spec.secret_namespacing)
    try:
        chain, key = server_pair(secrets.material(ns, name))
    except Invalid as exc:
        raise Invalid("spec.secret", exc.message) from None
    ca, ca_pem, required = _ca(secrets, spec.settings, obj.namespace, spec.secret_namespacing, "spec.ca_secret")
    return _TLSWant(f"TLSContext {obj.namespace}/{obj.name}", obj, "spec.hosts", spec.hosts, f"{ns}/{name}",
                    chain, key, ca, ca_pem, required, spec.settings)


def compile_tls(hosts: list[tuple[RawObject, HostSpec]], context_objs: list[RawObject],
                secret_objs: list[RawObject], diags: _Diags) -> _TLS:
    """Certificates and ServerTLS entries, sorted by name, and each Host's TLS and insecure
    policy. A Host whose TLS cannot be set up (a Secret missing or unreadable, a key that
    does not match its certificate, a TLSContext missing or at odds with it) is dropped
    with an error naming the field, as Emissary disables it. A TLSContext with hosts and a
    secret that no Host names terminates TLS for its hosts by itself (Emissary 1.x's rule,
    and what Emissary 2.x+ does for an Ingress's TLS through the Hosts it generates). Two
    entries asking for the same server name: the first by name wins, the later one gets an
    error (none when both ask for the very same TLS)."""
    secrets = _Secrets(secret_objs)
    contexts: dict[tuple[str, str], tuple[RawObject, TLSContextSpec] | str] = {}
    for obj in sorted(context_objs, key=lambda o: (o.namespace, o.name)):
        try:
            spec, notes = parse_tlscontext(obj)
        except Invalid as exc:
            diags.add("error", obj, exc.field, exc.message)
            contexts[(obj.namespace, obj.name)] = f"field {exc.field}: {exc.message}"
            continue
        for severity, field, message in notes:
            diags.add(severity, obj, field, message)
        contexts[(obj.namespace, obj.name)] = (obj, spec)

    wants: list[_TLSWant] = []
    kept: list[tuple[RawObject, HostSpec]] = []
    named: set[tuple[str, str]] = set()  # TLSContexts a Host names: never on their own
    for obj, spec in sorted(hosts, key=lambda h: (h[0].namespace, h[0].name)):
        if spec.tls_context is not None:
            named.add((obj.namespace, spec.tls_context))
        if spec.tls_secret is None:
            kept.append((obj, spec))
            continue
        if spec.tls_context is None and spec.tls is None:
            named.add((obj.namespace, f"{obj.name}-context"))
        try:
            wants.append(_host_want(obj, spec, secrets, contexts, diags))
        except Invalid as exc:
            diags.add("error", obj, exc.field, exc.message + DROPPED)
            continue
        kept.append((obj, spec))
    for key, found in sorted(contexts.items()):
        if isinstance(found, str) or key in named:
            continue
        obj, spec = found
        if not spec.hosts:
            diags.add("notice", obj, "spec.hosts", "absent: this TLSContext terminates nothing by itself (one "
                      "without hosts serves a Host's tlsContext, or TLS origination: a Mapping's tls naming it)")
            continue
        try:
            wants.append(_context_want(obj, spec, secrets))
        except Invalid as exc:
            diags.add("error", obj, exc.field, exc.message + "; no TLS for its hosts")
            continue
        if not obj.source.startswith(INGRESS_SOURCE):
            diags.add("notice", obj, "spec.hosts", "terminates TLS for its hosts by itself, as in Emissary 1.x "
                      "(Emissary 2.x and later use a TLSContext only through a Host's tlsContext, and ignore it "
                      "otherwise)")

    # one ServerTLS per server name: the first by name wins
    wants.sort(key=lambda w: w.name)
    claimed: dict[str, _TLSWant] = {}
    final: list[_TLSWant] = []
    alias: dict[str, str] = {}  # a want left with no names of its own -> the identical one serving them
    for want in wants:
        names = []
        for n in want.server_names:
            winner = claimed.get(n)
            if winner is None:
                claimed[n] = want
                names.append(n)
            elif winner.same_tls(want):
                alias.setdefault(want.name, winner.name)
            else:
                diags.add("error", want.obj, want.names_field,
                          f"TLS for {n!r} is already configured by {winner.name} (the first by name wins); "
                          f"this {want.name.split()[0]}'s certificate and TLS settings are not used for it")
        if names:
            final.append(replace(want, server_names=tuple(names)))
            alias.pop(want.name, None)

    certs: dict[str, tuple[str, str]] = {}
    for want in final:
        certs[want.certificate] = (want.chain_pem, want.key_pem)
    for want in final:  # a CA's key is not needed to verify clients: not shipped unless it also serves
        if want.ca is not None and want.ca not in certs:
            certs[want.ca] = (want.ca_pem, "")
    cert_names = sorted(certs)
    certificates = tuple(Certificate(n, *certs[n]) for n in cert_names)
    cert_index = {n: i for i, n in enumerate(cert_names)}
    server_tls = tuple(ServerTLS(
        name=w.name, server_names=w.server_names, certificate=cert_index[w.certificate],
        ca_certificate=cert_index[w.ca] if w.ca is not None else -1, cert_required=w.cert_required,
        min_version=w.settings.min_version, max_version=w.settings.max_version,
        cipher_suites=w.settings.cipher_suites, ecdh_curves=w.settings.ecdh_curves,
        alpn_protocols=w.settings.alpn_protocols) for w in final)
    index = {st.name: i for i, st in enumerate(server_tls)}
    with_tls = {w.name for w in wants}
    policies = {}
    for obj, spec in kept:
        name = f"Host {obj.namespace}/{obj.name}"
        has_tls = name in with_tls
        action = spec.insecure_action or ("Redirect" if has_tls else "Route")
        if spec.insecure_action is None and not has_tls:
            diags.add("notice", obj, "spec.requestPolicy.insecure.action",
                      "absent: Emissary would Redirect cleartext requests to HTTPS; this Host has no TLS of its "
                      "own, so edge routes them (say Redirect if TLS is terminated in front of edge)")
        policies[f"{obj.namespace}/{obj.name}"] = HostPolicy(index.get(name, index.get(alias.get(name, ""), -1)),
                                                             action, spec.additional_port)
    return _TLS(kept, certificates, server_tls, policies, {w.name: w.obj for w in final}, contexts, secrets)


def https_default_listener(listeners: list[tuple[RawObject | None, ListenerInput]], tls: _TLS,
                           diags: _Diags) -> list[tuple[RawObject | None, ListenerInput]]:
    """Without Listener objects edge has one default Listener; it is HTTPS (TLS and
    cleartext on the one port, told apart by the first bytes) once TLS is configured."""
    if not tls.server_tls or len(listeners) != 1 or listeners[0][0] is not None:
        return listeners
    spec = listeners[0][1]
    first = tls.server_tls[0].name
    diags.add("notice", tls.owners[first], "", f"no Listener objects: edge's default Listener on port {spec.port} "
              "is HTTPS (TLS and cleartext on one port, told apart by the first bytes) because TLS is configured; "
              "Emissary's own defaults are two Listeners, 8080 HTTP and 8443 HTTPS")
    return [(None, replace(spec, protocol="HTTPS"))]


def check_tls_binding(bound: tuple[ListenerSpec, ...], vhosts: list[VirtualHost],
                      hosts: list[tuple[RawObject, HostSpec]], tls: _TLS, diags: _Diags) -> None:
    """Warn where configured TLS is not served: Emissary terminates TLS only on HTTPS
    Listeners; and where an additionalPort has no Listener (edge opens none for it)."""
    https = {i for lst in bound if lst.protocol == "HTTPS" for i in lst.hosts}
    ports = {lst.port for lst in bound}
    by_name = {f"{o.namespace}/{o.name}": o for o, _ in hosts}
    for i, vh in enumerate(vhosts):
        obj = by_name.get(vh.name)
        if obj is None:
            continue
        if vh.tls >= 0 and i not in https:
            diags.add("warning", obj, "spec.tlsSecret", "no HTTPS Listener binds this Host, so its TLS is not "
                      "served (Emissary terminates TLS only on Listeners with protocol HTTPS)")
        if vh.insecure_additional_port >= 0 and vh.insecure_additional_port not in ports:
            diags.add("warning", obj, "spec.requestPolicy.insecure.additionalPort",
                      f"no Listener on port {vh.insecure_additional_port}: edge opens no port for it (as Emissary "
                      "2.x and later, which need a Listener there)")
    if not any(lst.protocol == "HTTPS" for lst in bound):
        for st in tls.server_tls:
            if st.name.startswith("TLSContext "):
                diags.add("warning", tls.owners[st.name], "spec.hosts", "no HTTPS Listener: this TLSContext's "
                          "TLS is not served")


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


# ---- TLS origination: a Mapping's service https:// or tls ----------------------------------

NULL_CONTEXT = "no-cert-upstream"  # Emissary's IRTLSContext.null_context: TLS, no certificates, no checks
UPSTREAM_ALPN = ("http/1.1",)  # what edge speaks to upstreams


@dataclass(frozen=True)
class _Origin:
    """The client side of one TLS origination, before certificate indexes."""

    name: str  # "TLSContext ns/name" or NULL_CONTEXT
    tag: str  # what it adds to a cluster's name
    cert: str | None = None  # the client certificate's Secret, "ns/name"
    chain_pem: str = ""
    key_pem: str = ""
    ca: str | None = None  # the CA Secret that verifies the upstream, "ns/name"
    ca_pem: str = ""
    sni: str = ""
    settings: TLSSettings = TLSSettings()


def _find_context(contexts: dict, namespace: str, name: str):
    """A TLSContext by name: the Mapping's namespace first, else the first namespace that has
    one (Emissary's TLSContexts are named without a namespace)."""
    found = contexts.get((namespace, name))
    if found is not None:
        return namespace, found
    for (ns, n), value in sorted(contexts.items()):
        if n == name:
            return ns, value
    return None, None


def _context_origin(cobj: RawObject, cspec: TLSContextSpec, secrets: _Secrets) -> _Origin:
    """The client side a TLSContext describes (Emissary's V3TLSContext in an Envoy
    UpstreamTlsContext): `secret` is the client certificate, `ca_secret` the CA the
    upstream's certificate must chain to. Invalid(field, message) when it cannot be used."""
    cert = chain = key = None
    if cspec.secret is not None:
        ns, name = secret_ref(cspec.secret, cobj.namespace, cspec.secret_namespacing)
        try:
            chain, key = client_pair(secrets.material(ns, name))
        except Invalid as exc:
            raise Invalid("spec.secret", exc.message) from None
        cert = f"{ns}/{name}"
    ca, ca_pem = None, ""
    if cspec.settings.ca_secret is not None:
        ns, name = secret_ref(cspec.settings.ca_secret, cobj.namespace, cspec.secret_namespacing)
        try:
            ca_pem = ca_bundle(secrets.material(ns, name))
        except Invalid as exc:
            raise Invalid("spec.ca_secret", exc.message) from None
        ca = f"{ns}/{name}"
    return _Origin(f"TLSContext {cobj.namespace}/{cobj.name}", f"otls_{cobj.name}_{cobj.namespace}", cert,
                   chain or "", key or "", ca, ca_pem, cspec.sni, cspec.settings)


def compile_origination(mappings: list[_Mapping], tls: _TLS, diags: _Diags) -> tuple[list[_Mapping], list[_Origin]]:
    """Which Mappings originate TLS and how (Emissary's ircluster.py): `service:
    https://...` and `tls: true` with no certificates and no checks of the upstream (the
    null context), `tls: <TLSContext>` with its secret, ca_secret, sni, versions, ciphers
    and ALPN. A Mapping whose TLSContext is missing or cannot be used is dropped (Emissary
    reports it and sends cleartext), so its traffic never leaves in the clear by mistake."""
    out: list[_Mapping] = []
    origins: list[_Origin] = []
    index: dict[_Origin, int] = {}
    used: set[tuple[str, str]] = set()
    alpn_noted: set[tuple[str, str]] = set()
    for m in mappings:
        s = m.spec
        if not s.originate_tls:
            out.append(m)
            continue
        if s.tls_context is None:
            origin = _Origin(NULL_CONTEXT, "otls")
        else:
            ns, found = _find_context(tls.contexts, m.obj.namespace, s.tls_context)
            if found is None:
                diags.add("error", m.obj, "spec.tls", f"TLSContext {s.tls_context} not found (none in any namespace); "
                          "Mapping dropped so its traffic is never sent without the TLS it asks for")
                continue
            if isinstance(found, str):
                diags.add("error", m.obj, "spec.tls", f"TLSContext {ns}/{s.tls_context} is invalid ({found}); "
                          "Mapping dropped so its traffic is never sent without the TLS it asks for")
                continue
            cobj, cspec = found
            try:
                origin = _context_origin(cobj, cspec, tls.secrets)
            except Invalid as exc:
                diags.add("error", m.obj, "spec.tls", f"TLSContext {ns}/{s.tls_context} field {exc.field}: "
                          f"{exc.message}; Mapping dropped so its traffic is never sent without the TLS it asks for")
                continue
            used.add((cobj.namespace, cobj.name))
            extra = [p for p in cspec.settings.alpn_protocols if p not in UPSTREAM_ALPN]
            if extra and (cobj.namespace, cobj.name) not in alpn_noted:
                alpn_noted.add((cobj.namespace, cobj.name))
                diags.add("notice", cobj, "spec.alpn_protocols", f"{', '.join(extra)} not offered to upstreams: edge "
                          "speaks HTTP/1.1 to them, and offers http/1.1 alone")
        if s.service.scheme == "http":
            diags.add("warning", m.obj, "spec.tls", f"service {s.service_text!r} says http:// but tls asks for TLS: "
                      "TLS is originated (Emissary reports the same and originates TLS)")
        i = index.get(origin)
        if i is None:
            i = index[origin] = len(origins)
            origins.append(origin)
        out.append(replace(m, origin=i))
    for key, found in sorted(tls.contexts.items()):
        if not isinstance(found, str) and found[1].sni and key not in used:
            diags.add("notice", found[0], "spec.sni", "sni is sent to an upstream only when a Mapping's tls names "
                      "this TLSContext; none does")
    return out, origins


def finish_tls(tls: _TLS, origins: list[_Origin], clusters: list[Cluster]
               ) -> tuple[tuple[Certificate, ...], tuple[ServerTLS, ...], tuple[ClientTLS, ...], list[Cluster]]:
    """The table's certificates (termination's and origination's, one per Secret, sorted by
    name), ServerTLS and ClientTLS entries with their indexes, and the clusters pointing at
    their ClientTLS. Only origins a cluster uses are kept."""
    used = sorted({c.tls for c in clusters if c.tls >= 0},
                  key=lambda i: (origins[i].name, origins[i].sni, origins[i].cert or "", origins[i].ca or "",
                                 repr(origins[i].settings)))
    if not used:
        return tls.certificates, tls.server_tls, (), clusters
    certs = {c.name: (c.chain_pem, c.key_pem) for c in tls.certificates}
    for i in used:
        o = origins[i]
        if o.cert is not None:
            certs[o.cert] = (o.chain_pem, o.key_pem)  # the same Secret's tls.crt, now with its key
        if o.ca is not None and o.ca not in certs:
            certs[o.ca] = (o.ca_pem, "")
    names = sorted(certs)
    at = {n: i for i, n in enumerate(names)}
    old = [c.name for c in tls.certificates]
    server_tls = tuple(replace(st, certificate=at[old[st.certificate]],
                               ca_certificate=at[old[st.ca_certificate]] if st.ca_certificate >= 0 else -1)
                       for st in tls.server_tls)
    client_tls = tuple(ClientTLS(
        name=o.name, certificate=at[o.cert] if o.cert is not None else -1,
        ca_certificate=at[o.ca] if o.ca is not None else -1, sni=o.sni,
        alpn_protocols=o.settings.alpn_protocols, min_version=o.settings.min_version,
        max_version=o.settings.max_version, cipher_suites=o.settings.cipher_suites,
        ecdh_curves=o.settings.ecdh_curves) for o in (origins[i] for i in used))
    final = {prov: i for i, prov in enumerate(used)}
    clusters = [replace(c, tls=final[c.tls]) if c.tls >= 0 else c for c in clusters]
    return tuple(Certificate(n, *certs[n]) for n in names), server_tls, client_tls, clusters


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
                   resolver.address, resolver.datacenter, m.origin if origin is not None else -1)


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
        for m, weight in zip(members, cumulative):
            s = m.spec
            cluster = cluster_for(m, s.connect_timeout_ms or DEFAULT_CONNECT_TIMEOUT_MS,
                                  origins[m.origin] if m.origin >= 0 else None)
            name = cluster.name
            clusters.setdefault(name, cluster)
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
            ))
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
