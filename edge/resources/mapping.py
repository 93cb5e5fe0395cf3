"""The Mapping resource (getambassador.io/v3alpha1), validated into MappingSpec."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from edge.model import CorsPolicy, LabelAction, LabelGroup
from edge.resources.base import (
    DROP,
    HONOURED,
    WARN,
    FieldRule,
    Invalid,
    _always,
    _set,
    check_fields,
    RawObject,
    check_regex,
    opt_bool,
    opt_dict,
    opt_int,
    opt_str,
    opt_str_list,
)
from edge.resources.ratelimit import parse_labels


def _drop(message: str, when=_set, otherwise: str = "") -> FieldRule:
    return FieldRule(DROP, message, when, otherwise)


def _warn(message: str) -> FieldRule:
    return FieldRule(WARN, message, _always)


def _policy(value) -> str:
    return str(value.get("policy") if isinstance(value, dict) else value).lower()


def _affinity(value) -> bool:
    """load_balancer policies that pin a client to an endpoint (edge balances round robin)."""
    return _policy(value) in ("ring_hash", "maglev")


def _lb_otherwise(value) -> str:
    """round_robin is what edge does: honoured. least_request only spreads the same requests
    over the same endpoints differently: a warning."""
    return "" if _policy(value) == "round_robin" else "edge balances round robin over the endpoints; policy ignored"


_OK = FieldRule(HONOURED)
_REDIRECT = ("redirect Mappings are not served by edge yet; Mapping dropped so the request is "
             "never proxied to the redirect host")
_UPGRADE = ("protocol upgrades (WebSocket, SPDY) are not served by edge yet; Mapping dropped so "
            "upgrade requests do not get a 501 from an otherwise working route")

# Every field of Emissary's v3alpha1 MappingSpec
# (pkg/api/getambassador.io/v3alpha1/crd_mapping.go), plus the v2-only `rate_limits`.
# tests/test_mapping_fields.py checks that none is missing.
FIELDS: dict[str, FieldRule] = {
    # matching, rewriting, headers, the upstream: served
    "ambassador_id": _OK, "prefix": _OK, "prefix_regex": _OK, "prefix_exact": _OK,
    "case_sensitive": _OK, "hostname": _OK, "host": _OK, "host_regex": _OK, "headers": _OK,
    "regex_headers": _OK, "query_parameters": _OK, "regex_query_parameters": _OK, "method": _OK,
    "precedence": _OK, "rewrite": _OK, "regex_rewrite": _OK, "host_rewrite": _OK,
    "auto_host_rewrite": _OK, "add_linkerd_headers": _OK,
    "add_request_headers": _OK, "add_response_headers": _OK, "remove_request_headers": _OK,
    "remove_response_headers": _OK, "service": _OK, "weight": _OK, "timeout_ms": _OK,
    "connect_timeout_ms": _OK, "idle_timeout_ms": _OK, "labels": _OK, "resolver": _OK,
    # where traffic goes, or what answers: dropped until served
    "shadow": _drop("shadow Mappings are not served by edge yet; Mapping dropped so the shadow "
                    "service never answers clients"),
    "host_redirect": _drop(_REDIRECT),
    "path_redirect": _drop(_REDIRECT),
    "prefix_redirect": _drop(_REDIRECT),
    "regex_redirect": _drop(_REDIRECT),
    "redirect_response_code": _drop(_REDIRECT),
    "method_regex": _drop("method_regex is not served by edge yet; Mapping dropped so the method "
                          "is not matched as a literal string"),
    "allow_upgrade": _drop(_UPGRADE),
    "use_websocket": _drop(_UPGRADE),
    "grpc": _OK,
    # TLS to the upstream: `service: https://...`, `tls: <TLSContext>` or `tls: true`
    # (compile.py resolves the TLSContext); v2ExplicitTLS only records how a v2 Mapping spelled
    # them, so that a v3alpha1 -> v2 conversion round-trips: it never changes what is served
    "tls": _OK,
    "v2ExplicitTLS": _OK,
    "cors": _OK,
    "rate_limits": _drop("v2 rate_limits are not served by edge (use labels); Mapping dropped so "
                         "its traffic is never unlimited"),
    "envoy_override": _drop("envoy_override is raw Envoy route configuration, which edge cannot "
                            "apply; Mapping dropped"),
    "load_balancer": _drop("session affinity (ring_hash, maglev) is not served by edge yet; Mapping "
                           "dropped so clients are not spread over endpoints they must not leave",
                           when=_affinity, otherwise=_lb_otherwise),
    "v2BoolHeaders": _drop("v2BoolHeaders (a converted v2 header-presence match) is not served by "
                           "edge; Mapping dropped so the header is not matched by value"),
    "v2BoolQueryParameters": _drop("v2BoolQueryParameters (a converted v2 presence match) is not "
                                   "served by edge; Mapping dropped so the parameter is not matched "
                                   "by value"),
    # how many times, and how much, a request is tried: the issue that asked for this table
    # counts both as meaning (a retried POST, a shed request); dropped until served
    "retry_policy": _drop("retry_policy is not served by edge yet (requests are not retried); Mapping "
                          "dropped so its clients do not see the upstream errors Emissary would retry"),
    "circuit_breakers": _drop("circuit breakers are not served by edge yet; Mapping dropped so the "
                              "upstream does not get more connections and requests than its limits allow"),
    # with an AuthService, a Mapping without bypass_auth: true is dropped (compile.py): edge
    # serves no external authentication, and serving it unauthenticated would expose it
    "bypass_auth": _OK,
    # tuning: served without, with a warning
    "auth_context_extensions": _warn("edge serves no AuthService; ignored"),
    "bypass_error_response_overrides": _warn("edge serves no error_response_overrides; ignored"),
    "error_response_overrides": _warn("error responses are not rewritten by edge yet; the upstream's "
                                      "and edge's own error bodies are sent as they are"),
    "outlier_detection": _warn("outlier detection is not served by edge yet; ignored"),
    "health_checks": _warn("active health checks are not served by edge yet; ignored"),
    "keepalive": _warn("upstream TCP keepalive settings are not served by edge yet; ignored"),
    "cluster_tag": _warn("clusters are named by service; the tag is ignored"),
    "cluster_idle_timeout_ms": _warn("pooled upstream connections are kept by edge's own rule; ignored"),
    "cluster_max_connection_lifetime_ms": _warn("upstream connection lifetime is not limited by edge "
                                                "yet; ignored"),
    "dns_type": _warn("names are resolved by edge's resolvers; ignored"),
    "respect_dns_ttl": _warn("names are re-resolved on edge's DNS refresh interval; ignored"),
    "enable_ipv4": _warn("address families follow the resolver; ignored"),
    "enable_ipv6": _warn("address families follow the resolver; ignored"),
    "priority": _warn("circuit-breaker priorities are not served by edge; ignored"),
    "stats_name": _warn("statistics are named by cluster; ignored"),
    "docs": _warn("the developer portal is not part of edge; ignored"),
    "modules": _warn("per-Mapping modules are not served by edge; ignored"),
}

KNOWN_FIELDS = frozenset(name for name, rule in FIELDS.items() if rule.kind == HONOURED)


def field_diagnostics(spec: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(errors, warnings) as (field, message) for a Mapping's spec, from FIELDS."""
    return check_fields(FIELDS, spec, "spec", "a Mapping field")


@dataclass(frozen=True)
class Service:
    host: str
    port: int
    port_name: str = ""  # `name:http`: a named Service port, for the Kubernetes resolvers
    scheme: str = ""  # "http", "https" (TLS to the upstream) or "" (none written)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class HeaderAdd:
    name: str
    value: str
    append: bool


@dataclass(frozen=True)
class MappingSpec:
    prefix: str
    path_kind: str  # prefix | exact | regex
    case_sensitive: bool
    hostname: str | None  # glob
    host: str | None
    host_regex: bool
    headers: tuple[tuple[str, str | None, bool], ...]  # (name, value, is_regex)
    query: tuple[tuple[str, str | None, bool], ...]
    method: str | None
    precedence: int
    rewrite: str | None
    regex_rewrite: tuple[str, str] | None
    host_rewrite: str | None
    add_request_headers: tuple[HeaderAdd, ...]
    add_response_headers: tuple[HeaderAdd, ...]
    remove_request_headers: tuple[str, ...]
    remove_response_headers: tuple[str, ...]
    service: Service
    service_text: str
    weight: int | None
    timeout_ms: int | None
    connect_timeout_ms: int | None
    idle_timeout_ms: int | None
    resolver: str | None = None  # a resolver's name; None: the Module's default
    labels: tuple[LabelGroup, ...] = ()  # rate-limit label groups
    auto_host_rewrite: bool = False  # the upstream Host is the service's host
    add_linkerd_headers: bool | None = None  # None: the Module's add_linkerd_headers
    # TLS to the upstream (Emissary's ircluster.py): `service: https://...`, or `tls` (a
    # TLSContext's name, or `true`: TLS without a TLSContext, Emissary's null context)
    originate_tls: bool = False
    tls_context: str | None = None  # the TLSContext `tls` names
    grpc: bool = False  # the upstream speaks HTTP/2 (gRPC): h2c, or h2 over TLS
    cors: CorsPolicy | None = None  # `cors` as written (origins () when it allows none); None: absent


def parse_service(text: str, field: str = "spec.service", tls: bool = False) -> Service:
    """`[http[s]://]host[:port]`: a DNS name or an IP literal ([v6] in brackets). Without a
    port: 443 when TLS is originated (`https://`, or `tls` says so), else 80 (Emissary's
    ircluster.py)."""
    rest = text.strip()
    scheme = ""
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise Invalid(field, f"scheme {scheme!r} not supported (http:// or https://) in {text!r}")
    port = 443 if scheme == "https" or tls else 80
    if "/" in rest:
        raise Invalid(field, f"a path is not allowed in service {text!r}")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise Invalid(field, f"unclosed '[' in {text!r}")
        host, tail = rest[1:end], rest[end + 1:]
        if tail:
            if not tail.startswith(":"):
                raise Invalid(field, f"junk after ']' in {text!r}")
            port = _port(tail[1:], text, field)
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        if _PORT_NAME.match(port_text) and not port_text.isdigit():
            return Service(_host(host, text, field), 0, port_text, scheme)
        port = _port(port_text, text, field)
    else:
        host = rest
    return Service(_host(host, text, field), port, "", scheme)


def parse_tls(spec: dict) -> tuple[bool, str | None]:
    """(originate TLS, the TLSContext's name) from `tls` alone: a TLSContext's name, or
    `true` (Emissary's v2 spelling: TLS without a TLSContext); false, null or "": none."""
    value = spec.get("tls")
    if value is None or value is False or value == "":
        return False, None
    if value is True:
        return True, None
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise Invalid("spec.tls", f"must be a TLSContext's name (or true), got {value!r}")
    return True, value.strip()


V2_EXPLICIT_TLS = ("", "null", "bool:true", "bool:false", "string")
_SCHEME = re.compile(r"^([hH][tT][tT][pP][sS]?://)?$")


def check_v2_explicit_tls(spec: dict) -> None:
    """v2ExplicitTLS as Emissary's CRD validates it (common.go); its content is how a v2
    Mapping spelled `tls` and the scheme, for the conversion back to v2, and never changes
    whether TLS is originated: `service` and `tls` say that."""
    value = spec.get("v2ExplicitTLS")
    if value is None:
        return
    if not isinstance(value, dict):
        raise Invalid("spec.v2ExplicitTLS", "must be a mapping (tls, serviceScheme)")
    tls = value.get("tls", "")
    if tls not in V2_EXPLICIT_TLS:
        raise Invalid("spec.v2ExplicitTLS.tls", f"must be one of {', '.join(map(repr, V2_EXPLICIT_TLS))}")
    scheme = value.get("serviceScheme")
    if scheme is not None and (not isinstance(scheme, str) or not _SCHEME.match(scheme)):
        raise Invalid("spec.v2ExplicitTLS.serviceScheme", 'must be "http://", "https://" or ""')


_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _host(host: str, whole: str, field: str) -> str:
    if not host or any(c in host for c in " \t@?#"):
        raise Invalid(field, f"no valid host in service {whole!r}")
    return host.lower()


def _port(text: str, whole: str, field: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise Invalid(field, f"bad port {text!r} in {whole!r}")
    return int(text)


def _matchers(spec: dict, key: str, regex: bool, lower: bool) -> list[tuple[str, str | None, bool]]:
    out = []
    for name, value in opt_dict(spec, key).items():
        where = f"spec.{key}.{name}"
        if not isinstance(name, str) or not name:
            raise Invalid(f"spec.{key}", "names must be non-empty strings")
        if value is True and not regex:
            value = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        elif not isinstance(value, str):
            raise Invalid(where, "must be a string" + ("" if regex else " or true"))
        if regex:
            check_regex(value, where)
        out.append((name.lower() if lower else name, value, regex))
    return out


def _header_adds(spec: dict, key: str) -> tuple[HeaderAdd, ...]:
    value = spec.get(key)
    if value is None:
        return ()
    items: list[tuple[str, object]]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):  # list form: [{name: value}] as some users write it
        items = []
        for entry in value:
            if not isinstance(entry, dict):
                raise Invalid(f"spec.{key}", "list entries must be mappings")
            items.extend(entry.items())
    else:
        raise Invalid(f"spec.{key}", "must be a mapping of header name to value")
    out = []
    for name, v in items:
        where = f"spec.{key}.{name}"
        if not isinstance(name, str) or not name or any(c in name for c in " :\r\n"):
            raise Invalid(where, "bad header name")
        append = True
        if isinstance(v, dict):
            append = opt_bool(v, "append", True, where)
            v = v.get("value")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or "\r" in v or "\n" in v:
            raise Invalid(where, "value must be a string without CR or LF")
        out.append(HeaderAdd(name, v, append))
    return tuple(out)


def _cors_list(cors: dict, key: str, where: str) -> str:
    """A cors value Emissary joins with ", " when it is a list (ircors.py); "" when unset."""
    value = cors.get(key)
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        value = ", ".join(str(v).strip() for v in value)
    elif not isinstance(value, str):
        raise Invalid(f"{where}.{key}", "must be a string or a list of strings")
    return _header_value(value.strip(), f"{where}.{key}")


def _header_value(value: str, where: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise Invalid(where, "must not contain CR, LF or NUL")
    return value


def parse_cors(value, where: str) -> CorsPolicy | None:
    """Emissary's `cors` (a Mapping's, or the Module's config.cors): origins (a list, or v2's
    comma-separated string; exact, "*" for any), methods, headers, exposed_headers (lists or
    strings), credentials, max_age. None when absent; a policy without origins when it
    allows none (it still hides the Module's). Other keys (v2CommaSeparatedOrigins, which
    only records v2's spelling) change nothing."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid(where, "must be a mapping (origins, methods, headers, credentials, exposed_headers, max_age)")
    origins = value.get("origins")
    if origins is None:
        origins = []
    elif isinstance(origins, str):
        origins = origins.split(",")
    elif not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise Invalid(f"{where}.origins", "must be a list of origins or a comma-separated string")
    origins = tuple(_header_value(o.strip(), f"{where}.origins") for o in origins if o.strip())
    max_age = value.get("max_age")
    if max_age is None:
        max_age = ""
    elif isinstance(max_age, int) and not isinstance(max_age, bool) and max_age >= 0:
        max_age = str(max_age)
    elif isinstance(max_age, str):
        max_age = _header_value(max_age.strip(), f"{where}.max_age")
    else:
        raise Invalid(f"{where}.max_age", "must be a number of seconds")
    return CorsPolicy(origins=origins, methods=_cors_list(value, "methods", where),
                      headers=_cors_list(value, "headers", where),
                      exposed_headers=_cors_list(value, "exposed_headers", where), max_age=max_age,
                      credentials=value.get("credentials") is not None and opt_bool(value, "credentials", False, where))


def parse_mapping(obj: RawObject, defaults: dict | None = None,
                  default_labels: dict[str, tuple[LabelAction, ...]] | None = None) -> MappingSpec:
    """Validate a Mapping. `defaults` are the Module's defaults.httpmapping,
    `default_labels` its default_labels.

    Raises Invalid naming the first bad field.
    """
    spec = dict(defaults or {})
    spec.update(obj.spec)
    prefix = opt_str(spec, "prefix")
    if prefix is None:
        raise Invalid("spec.prefix", "is required")
    prefix_regex = opt_bool(spec, "prefix_regex", False)
    prefix_exact = opt_bool(spec, "prefix_exact", False)
    if prefix_regex and prefix_exact:
        raise Invalid("spec.prefix_exact", "cannot be combined with prefix_regex")
    if prefix_regex:
        check_regex(prefix, "spec.prefix")
        path_kind = "regex"
    else:
        if not prefix.startswith("/"):
            raise Invalid("spec.prefix", f"must start with '/', got {prefix!r}")
        path_kind = "exact" if prefix_exact else "prefix"
    service_text = opt_str(spec, "service")
    if not service_text:
        raise Invalid("spec.service", "is required")
    tls_named, tls_context = parse_tls(spec)
    check_v2_explicit_tls(spec)
    service = parse_service(service_text, tls=tls_named)
    host = opt_str(spec, "host")
    host_regex = opt_bool(spec, "host_regex", False)
    if host is not None and host_regex:
        check_regex(host, "spec.host")
    hostname = opt_str(spec, "hostname")
    if hostname is not None and host is not None:  # Emissary: host is ignored, hostname used
        host, host_regex = None, False
    method = opt_str(spec, "method")
    rewrite = opt_str(spec, "rewrite", "/")
    regex_rewrite = None
    rr = opt_dict(spec, "regex_rewrite")
    if rr:
        pattern = opt_str(rr, "pattern", path="spec.regex_rewrite")
        if not pattern:
            raise Invalid("spec.regex_rewrite.pattern", "is required")
        check_regex(pattern, "spec.regex_rewrite.pattern")
        substitution = opt_str(rr, "substitution", "", path="spec.regex_rewrite")
        regex_rewrite = (pattern, substitution)
    return MappingSpec(
        prefix=prefix,
        path_kind=path_kind,
        case_sensitive=opt_bool(spec, "case_sensitive", True),
        hostname=hostname,
        host=host,
        host_regex=host_regex,
        headers=tuple(_matchers(spec, "headers", False, True) + _matchers(spec, "regex_headers", True, True)),
        query=tuple(_matchers(spec, "query_parameters", False, False)
                    + _matchers(spec, "regex_query_parameters", True, False)),
        method=method.upper() if method else None,
        precedence=opt_int(spec, "precedence", 0),
        rewrite=rewrite if rewrite != "" else None,
        regex_rewrite=regex_rewrite,
        host_rewrite=opt_str(spec, "host_rewrite"),
        add_request_headers=_header_adds(spec, "add_request_headers"),
        add_response_headers=_header_adds(spec, "add_response_headers"),
        remove_request_headers=tuple(h.lower() for h in opt_str_list(spec, "remove_request_headers")),
        remove_response_headers=tuple(h.lower() for h in opt_str_list(spec, "remove_response_headers")),
        service=service,
        service_text=service_text,
        weight=opt_int(spec, "weight", None, minimum=0, maximum=100),
        timeout_ms=opt_int(spec, "timeout_ms", None, minimum=0),
        connect_timeout_ms=opt_int(spec, "connect_timeout_ms", None, minimum=1),
        idle_timeout_ms=opt_int(spec, "idle_timeout_ms", None, minimum=0),
        resolver=opt_str(spec, "resolver"),
        labels=parse_labels(spec.get("labels"), prepend=default_labels),
        auto_host_rewrite=opt_bool(spec, "auto_host_rewrite", False),
        add_linkerd_headers=None if spec.get("add_linkerd_headers") is None
        else opt_bool(spec, "add_linkerd_headers", False),
        originate_tls=tls_named or service.scheme == "https",
        tls_context=tls_context,
        grpc=opt_bool(spec, "grpc", False),
        cors=parse_cors(spec.get("cors"), "spec.cors"),
    )
