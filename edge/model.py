"""The compiled route table: what the supervisor publishes and every worker serves.

Everything here is a frozen dataclass of plain values (str, int, bool, float, None, tuples
of those, nested dataclasses), so `edge.codec` can encode it canonically and the same table
always has the same bytes and hash. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in the input, tied to the object and field that caused it."""

    severity: str  # "error" (object dropped), "warning" (served, but look), "notice"
    source: str  # file path or source name
    kind: str
    namespace: str
    name: str
    field: str  # dotted path inside the object, "" when it concerns the whole object
    message: str

    def format(self) -> str:
        where = f"{self.kind} {self.namespace}/{self.name}"
        at = f" field {self.field}" if self.field else ""
        return f"{self.severity}: {self.source}: {where}{at}: {self.message}"


@dataclass(frozen=True)
class Endpoint:
    address: str  # an IP literal
    port: int


@dataclass(frozen=True)
class Cluster:
    """An upstream service; endpoints are filled in by the supervisor (edge.supervisor.endpoints)."""

    name: str
    service: str  # as the user wrote it
    host: str  # DNS name, Service name, Consul service name or IP literal
    port: int
    connect_timeout_ms: int
    endpoints: tuple[Endpoint, ...] = ()
    # how endpoints are found: "static" (an IP literal), "kubernetes-service",
    # "kubernetes-endpoint" or "consul" (edge.resources.resolver)
    discovery: str = "static"
    namespace: str = ""  # the Mapping's namespace: where an unqualified Service name lives
    port_name: str = ""  # a named Service port (`service: name:http`)
    consul_address: str = ""  # Consul agent HOST:PORT
    datacenter: str = ""
    tls: int = -1  # index into RouteTable.client_tls: TLS to the endpoints; -1: cleartext
    http2: bool = False  # HTTP/2 to the endpoints (a Mapping's `grpc: true`): h2c, or h2 over TLS


@dataclass(frozen=True)
class Matcher:
    """A header or query-parameter condition. value None means "present"."""

    name: str  # header names lower-cased
    value: str | None
    regex: bool = False


@dataclass(frozen=True)
class HeaderOp:
    name: str
    value: str
    append: bool = True


@dataclass(frozen=True)
class LabelAction:
    """One entry of a rate-limit descriptor (Emissary's label specifiers)."""

    kind: str  # source_cluster, destination_cluster, remote_address, generic_key, request_headers
    key: str  # the descriptor key
    value: str = ""  # generic_key: the value
    header: str = ""  # request_headers: the header name, lower-cased
    omit_if_not_present: bool = False


@dataclass(frozen=True)
class LabelGroup:
    """A Mapping label group: one descriptor per request, in `domain`."""

    domain: str
    actions: tuple[LabelAction, ...]


@dataclass(frozen=True)
class PatternEntry:
    key: str
    value: str | None  # None: any value, each distinct value counted apart


@dataclass(frozen=True)
class RateLimitRule:
    """One limit of a RateLimit object."""

    id: str  # "namespace/name#index": counters are keyed by it (and the values), not by generation
    domain: str
    pattern: tuple[PatternEntry, ...]
    rate: int
    unit_seconds: int
    limit: int  # requests allowed per window: rate x burstFactor
    enforce: bool  # False: LogOnly, counted and never refused
    inject_response_headers: tuple[HeaderOp, ...]
    error_headers: tuple[HeaderOp, ...]
    error_body: str | None


@dataclass(frozen=True)
class CorsPolicy:
    """A Mapping's `cors` (else the Module's), as Emissary hands it to Envoy's CorsPolicy
    (ircors.py): list values joined with ", ", origins matched exactly ("*" matches any)."""

    origins: tuple[str, ...]  # exact origins; (): allows nothing (compile leaves such a policy out)
    methods: str = ""  # access-control-allow-methods ("*": the request's method); "": none
    headers: str = ""  # access-control-allow-headers ("*": the requested headers); "": none
    exposed_headers: str = ""  # access-control-expose-headers; "": none
    max_age: str = ""  # access-control-max-age; "": none
    credentials: bool = False  # access-control-allow-credentials: true


@dataclass(frozen=True)
class Target:
    """One Mapping of a route group: where to send and how to rewrite."""

    mapping: str  # "namespace/name"
    cluster: str
    weight: int  # cumulative, 1..100 (the group's last target ends at 100)
    rewrite: str | None  # prefix replacement; None keeps the path
    regex_rewrite_pattern: str | None
    regex_rewrite_substitution: str
    host_rewrite: str | None
    add_request_headers: tuple[HeaderOp, ...]
    add_response_headers: tuple[HeaderOp, ...]
    remove_request_headers: tuple[str, ...]
    remove_response_headers: tuple[str, ...]
    timeout_ms: int  # 0 disables
    idle_timeout_ms: int
    labels: tuple[LabelGroup, ...] = ()
    cors: CorsPolicy | None = None  # its route's (canary group's) cors, else the Module's; None: no CORS


@dataclass(frozen=True)
class Route:
    """A group of Mappings with identical match criteria (a canary group)."""

    group: str  # stable id of the match criteria
    path_kind: str  # "prefix", "exact" or "regex"
    path: str  # prefix, exact path or regex
    case_sensitive: bool
    precedence: int
    method: str | None
    host: str | None  # exact or glob (Mapping hostname/host), None for any
    host_regex: bool
    headers: tuple[Matcher, ...]
    query: tuple[Matcher, ...]
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Certificate:
    """Key material from a `kubernetes.io/tls` Secret (or tls.crt / tls.key files).

    It travels in the table like routes do, so workers never read key files per
    connection, and a rotated Secret is a new table."""

    name: str  # "namespace/name" of the Secret
    chain_pem: str  # the certificate chain, leaf first
    key_pem: str  # the private key ("" for a CA-only Secret)


@dataclass(frozen=True)
class ServerTLS:
    """TLS termination for a set of server names: a Host's tlsSecret/tls/tlsContext, or a
    TLSContext with `hosts` and `secret`."""

    name: str  # what it came from: "Host ns/name" or "TLSContext ns/name"
    server_names: tuple[str, ...]  # DNS globs, lower-cased, as SNI selects them ("*" for any)
    certificate: int  # index into RouteTable.certificates
    ca_certificate: int = -1  # ca_secret: verify client certificates against it; -1: none
    cert_required: bool = False
    min_version: str = ""  # "v1.0" .. "v1.3"; "": the library's default
    max_version: str = ""
    cipher_suites: tuple[str, ...] = ()  # OpenSSL names; (): the default
    ecdh_curves: tuple[str, ...] = ()
    alpn_protocols: tuple[str, ...] = ()  # (): the worker offers what it speaks


@dataclass(frozen=True)
class ClientTLS:
    """TLS origination to a cluster's endpoints (`service: https://...`, or a Mapping's
    `tls`: a TLSContext by name, or `true`), as Emissary configures Envoy's
    UpstreamTlsContext from a TLSContext."""

    name: str  # what it came from: "TLSContext ns/name", or "no-cert-upstream" (Emissary's null context)
    certificate: int = -1  # `secret`: the client certificate presented to the upstream; -1: none
    # `ca_secret`: verify the upstream's chain against it (not its name, as in Envoy without
    # match_subject_alt_names); -1: the upstream's certificate is not verified at all (as Envoy)
    ca_certificate: int = -1
    sni: str = ""  # the server name sent; "": none (Emissary sends one only when `sni` is set)
    alpn_protocols: tuple[str, ...] = ()  # (): no ALPN offered
    min_version: str = ""  # "v1.0" .. "v1.3"; "": the library's default
    max_version: str = ""
    cipher_suites: tuple[str, ...] = ()  # OpenSSL names; (): the default
    ecdh_curves: tuple[str, ...] = ()


@dataclass(frozen=True)
class VirtualHost:
    """A Host object (or the implicit "*" when there are none) and its ordered routes."""

    name: str  # "namespace/name" of the Host, "*" for the implicit one
    hostname: str  # DNS glob
    routes: tuple[int, ...]  # indexes into RouteTable.routes, in match order
    tls: int = -1  # index into RouteTable.server_tls; -1: no TLS of its own
    # requestPolicy.insecure: what a request that did not arrive securely gets:
    # "Redirect" (301 to https), "Route" or "Reject" (Emissary's defaults: Redirect when
    # the Host has TLS, Route otherwise)
    insecure_action: str = "Route"
    insecure_additional_port: int = -1  # requestPolicy.insecure.additionalPort; -1: none


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    port: int
    bind_address: str
    protocol: str  # "HTTP" or "HTTPS" (TLS and cleartext on one port, told apart by the first bytes)
    security_model: str  # "XFP", "SECURE" or "INSECURE"
    l7_depth: int
    stats_prefix: str
    hosts: tuple[int, ...]  # indexes into RouteTable.virtual_hosts bound to this port
    http2_max_concurrent_streams: int = 100  # Listener.http2MaxConcurrentStreams


@dataclass(frozen=True)
class Settings:
    """The ambassador Module's global settings."""

    server_name: str = "edge"
    max_request_headers_kb: int = 60
    merge_slashes: bool = False
    strip_matching_host_port: bool = False
    xff_num_trusted_hops: int = 0
    suppress_envoy_headers: bool = False
    # x-forwarded-client-cert, as Envoy's forward_client_cert_details: SANITIZE (drop the
    # client's), FORWARD_ONLY, APPEND_FORWARD, SANITIZE_SET, ALWAYS_FORWARD_ONLY
    forward_client_cert_details: str = "SANITIZE"
    # what APPEND_FORWARD / SANITIZE_SET add besides Hash: any of cert, chain, dns, subject, uri
    set_current_client_cert_details: tuple[str, ...] = ()
    grpc_web: bool = False  # enable_grpc_web: gRPC-Web requests are translated to gRPC for HTTP/2 upstreams


@dataclass(frozen=True)
class RouteTable:
    settings: Settings
    listeners: tuple[ListenerSpec, ...]
    virtual_hosts: tuple[VirtualHost, ...]
    routes: tuple[Route, ...]
    clusters: tuple[Cluster, ...]
    diagnostics: tuple[Diagnostic, ...] = field(default=())
    rate_limits: tuple[RateLimitRule, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    server_tls: tuple[ServerTLS, ...] = ()
    client_tls: tuple[ClientTLS, ...] = ()  # TLS origination, indexed by Cluster.tls
