"""The TLS stages of compile: termination (Secrets, TLSContexts, each Host's certificate)
and origination (a Mapping's service https:// or tls), and how both land in the table.

Contract. Inputs: the objects compile selected (Hosts already parsed by compile_hosts,
TLSContext and Secret RawObjects, the Mappings compile_mappings kept, the Listeners, the
clusters build_routes made) and a diagnostics sink (anything with compile's
`add(severity, obj, field, message)`). Outputs: Certificates, ServerTLS and ClientTLS
entries with their indexes, each Host's TLS and insecure policy, the Hosts still served,
which Mappings originate TLS and how, and Diagnostics, added to the sink. Pure: no I/O, no
clock, no globals; the same objects in the same order give the same entries in the same
order. The stages, in the order compile runs them: compile_tls -> https_default_listener
-> compile_origination -> finish_tls -> check_tls_binding. This module never imports
edge.supervisor.compile, which orchestrates these stages with the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from edge.model import Certificate, ClientTLS, Cluster, ListenerSpec, ServerTLS, VirtualHost
from edge.resources.base import Invalid, RawObject
from edge.resources.host import HostSpec
from edge.resources.listener import ListenerSpec as ListenerInput
from edge.resources.mapping import MappingSpec
from edge.resources.tls import (TLSContextSpec, TLSSettings, ca_bundle, client_pair, parse_tlscontext, read_secret,
                                secret_ref, server_name, server_pair)


class DiagSink(Protocol):
    """Where the stages put their Diagnostics (compile's collector)."""

    def add(self, severity: str, obj: RawObject, field: str, message: str) -> None: ...


class _MappingLike(Protocol):
    """What compile_origination reads of compile's Mappings (and sets: `origin`, by replace)."""

    @property
    def obj(self) -> RawObject: ...

    @property
    def spec(self) -> MappingSpec: ...

    @property
    def origin(self) -> int: ...


M = TypeVar("M", bound=_MappingLike)


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
               contexts: dict[tuple[str, str], tuple[RawObject, TLSContextSpec] | str], diags: DiagSink) -> _TLSWant:
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
                secret_objs: list[RawObject], diags: DiagSink) -> _TLS:
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
                           diags: DiagSink) -> list[tuple[RawObject | None, ListenerInput]]:
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
                      hosts: list[tuple[RawObject, HostSpec]], tls: _TLS, diags: DiagSink) -> None:
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


# ---- TLS origination: a Mapping's service https:// or tls ----------------------------------

NULL_CONTEXT = "no-cert-upstream"  # Emissary's IRTLSContext.null_context: TLS, no certificates, no checks
UPSTREAM_ALPN = ("http/1.1",)  # what edge speaks to HTTP/1 upstreams
GRPC_ALPN = ("h2",)  # and to gRPC ones (Mapping grpc: true), as Envoy offers for an HTTP/2 cluster


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


def compile_origination(mappings: list[M], tls: _TLS, diags: DiagSink) -> tuple[list[M], list[_Origin]]:
    """Which Mappings originate TLS and how (Emissary's ircluster.py): `service:
    https://...` and `tls: true` with no certificates and no checks of the upstream (the
    null context), `tls: <TLSContext>` with its secret, ca_secret, sni, versions, ciphers
    and ALPN. A Mapping whose TLSContext is missing or cannot be used is dropped (Emissary
    reports it and sends cleartext), so its traffic never leaves in the clear by mistake."""
    out: list[M] = []
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
            spoken = GRPC_ALPN if s.grpc else UPSTREAM_ALPN
            extra = [p for p in cspec.settings.alpn_protocols if p not in spoken]
            if extra and (cobj.namespace, cobj.name) not in alpn_noted:
                alpn_noted.add((cobj.namespace, cobj.name))
                diags.add("notice", cobj, "spec.alpn_protocols", f"{', '.join(extra)} not offered to upstreams: edge "
                          f"offers what it speaks to them, {', '.join(spoken)}, alone")
        if s.service.scheme == "http":
            diags.add("warning", m.obj, "spec.tls", f"service {s.service_text!r} says http:// but tls asks for TLS: "
                      "TLS is originated (Emissary reports the same and originates TLS)")
        settings = origin.settings
        alpn = GRPC_ALPN if s.grpc else tuple(p for p in settings.alpn_protocols if p in UPSTREAM_ALPN) or (
            UPSTREAM_ALPN if settings.alpn_protocols else ())
        if alpn != settings.alpn_protocols:
            origin = replace(origin, settings=replace(settings, alpn_protocols=alpn))
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
