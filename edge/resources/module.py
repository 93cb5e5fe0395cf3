"""The ambassador Module: global settings and Mapping defaults."""

from __future__ import annotations

from dataclasses import dataclass

from edge.model import Settings
from edge.model import CorsPolicy, LabelAction
from edge.resources.base import (
    DROP,
    HONOURED,
    WARN,
    FieldRule,
    Invalid,
    RawObject,
    _always,
    _set,
    check_fields,
    opt_bool,
    opt_dict,
    opt_int,
    opt_str,
)
from edge.resources.mapping import parse_cors
from edge.resources.ratelimit import parse_default_labels


def _drop(message: str, when=_set) -> FieldRule:
    return FieldRule(DROP, message, when)


def _warn(message: str) -> FieldRule:
    return FieldRule(WARN, message, _always)


def _affinity(value) -> bool:
    policy = value.get("policy") if isinstance(value, dict) else value
    return str(policy).lower() in ("ring_hash", "maglev")


_OK = FieldRule(HONOURED)
_NOT_YET = "not served by edge yet; ignored"

# The ambassador Module's config keys that Emissary reads (python/ambassador/ir/irambassador.py:
# AModTransparentKeys and the keys finalize() handles itself; the Module reference in the docs).
# A DROP here drops the whole Module (its settings fall back to the defaults), with an error.
CONFIG_FIELDS: dict[str, FieldRule] = {
    "defaults": _OK, "server_name": _OK, "cluster_request_timeout_ms": _OK,
    "max_request_headers_kb": _OK, "merge_slashes": _OK, "strip_matching_host_port": _OK,
    "xff_num_trusted_hops": _OK, "suppress_envoy_headers": _OK, "resolver": _OK,
    "default_labels": _OK, "default_label_domain": _OK, "add_linkerd_headers": _OK,
    # change where traffic goes or who may pass
    "use_ambassador_namespace_for_service_resolution": _drop(
        "unqualified service names resolve in the Mapping's namespace in edge; Module dropped"),
    "x_forwarded_proto_redirect": _drop("the redirect to https is not served by edge yet; Module dropped"),
    "reject_requests_with_escaped_slashes": _drop(
        "requests with escaped slashes are not refused by edge yet; Module dropped"),
    "ip_allow": _drop("IP allow lists are not served by edge yet; Module dropped"),
    "ip_deny": _drop("IP deny lists are not served by edge yet; Module dropped"),
    "lua_scripts": _drop("Lua scripts cannot run in edge; Module dropped"),
    "cors": _OK,  # for every Mapping without a cors of its own
    "load_balancer": FieldRule(DROP, "session affinity (ring_hash, maglev) is not served by edge yet; "
                               "Module dropped", _affinity,
                               "edge balances round robin over the endpoints; policy ignored"),
    # tuning
    "diagnostics": _OK, "liveness_probe": _OK, "readiness_probe": _OK,  # `enabled`, `allow_non_local'

    "admin_port": _warn("the admin address is set with --admin-addr; ignored"),
    "diag_port": _warn("the admin address is set with --admin-addr; ignored"),
    "service_port": _warn("ports come from Listeners; ignored"),
    "auth_enabled": _warn(_NOT_YET),
    "circuit_breakers": _warn(_NOT_YET), "retry_policy": _warn(_NOT_YET), "keepalive": _warn(_NOT_YET),
    "error_response_overrides": _warn(_NOT_YET), "gzip": _warn(_NOT_YET), "buffer": _warn(_NOT_YET),
    "enable_grpc_http11_bridge": _warn(_NOT_YET), "enable_grpc_web": _OK,
    "grpc_stats": _warn(_NOT_YET), "enable_http10": _warn(_NOT_YET),
    "enable_ipv4": _warn(_NOT_YET), "enable_ipv6": _warn(_NOT_YET),
    "envoy_log_type": _warn("edge has no Envoy access log; ignored"),
    "envoy_log_path": _warn("edge has no Envoy access log; ignored"),
    "envoy_log_format": _warn("edge has no Envoy access log; ignored"),
    "envoy_validation_timeout": _warn("edge has no Envoy; ignored"),
    "cluster_idle_timeout_ms": _warn(_NOT_YET), "cluster_max_connection_lifetime_ms": _warn(_NOT_YET),
    "listener_idle_timeout_ms": _warn("the client idle timeout is set with --idle-timeout; ignored"),
    "regex_max_size": _warn(_NOT_YET), "regex_type": _warn(_NOT_YET), "debug_mode": _warn(_NOT_YET),
    "statsd": _warn("statsd is configured by STATSD_* variables; ignored"),
    "use_proxy_proto": _warn("PROXY protocol is a Listener setting; ignored"),
    "use_remote_address": _warn(_NOT_YET),
    "header_case_order": _warn(_NOT_YET), "proper_case": _warn(_NOT_YET),
    "preserve_external_request_id": _warn(_NOT_YET), "forward_client_cert_details": _OK,
    "set_current_client_cert_details": _OK, "allow_chunked_length": _warn(_NOT_YET),
    "headers_with_underscores_action": _warn(_NOT_YET), "istio": _warn(_NOT_YET),
}

KNOWN_CONFIG = frozenset(name for name, rule in CONFIG_FIELDS.items() if rule.kind == HONOURED)


def config_diagnostics(obj: RawObject) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(errors, warnings) for the Module's config keys, from CONFIG_FIELDS."""
    config = obj.spec.get("config")
    if not isinstance(config, dict):
        return [], []
    return check_fields(CONFIG_FIELDS, config, "spec.config", "a Module config key")


@dataclass(frozen=True)
class ModuleSpec:
    settings: Settings
    mapping_defaults: dict
    request_timeout_ms: int | None
    resolver: str | None = None  # the default resolver's name
    default_labels: dict[str, tuple[LabelAction, ...]] | None = None  # domain -> labels put first
    add_linkerd_headers: bool = False
    # Emissary's internal Mappings to the admin address: check_alive, check_ready, and the
    # diag page (through the Listener only with diagnostics.allow_non_local)
    liveness_probe: bool = True
    readiness_probe: bool = True
    diagnostics: bool = True
    diagnostics_non_local: bool = False
    cors: CorsPolicy | None = None  # config.cors: the policy of Mappings without their own


XFCC_MODES = ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY")
XFCC_DETAILS = ("subject", "cert", "chain", "dns", "uri")


def _forward_client_cert(config: dict, p: str) -> str:
    mode = (opt_str(config, "forward_client_cert_details", "SANITIZE", p) or "SANITIZE").upper()
    if mode not in XFCC_MODES:
        raise Invalid(f"{p}.forward_client_cert_details", f"must be one of {', '.join(XFCC_MODES)}, got {mode!r}")
    return mode


def _client_cert_details(config: dict, p: str) -> tuple[str, ...]:
    details = opt_dict(config, "set_current_client_cert_details", p)
    where = f"{p}.set_current_client_cert_details"
    for key in details:
        if key not in XFCC_DETAILS:
            raise Invalid(f"{where}.{key}", f"unknown detail; known: {', '.join(XFCC_DETAILS)}")
    return tuple(k for k in XFCC_DETAILS if opt_bool(details, k, False, where))


def parse_module(obj: RawObject) -> ModuleSpec:
    if obj.name != "ambassador":
        raise Invalid("metadata.name", f"only the Module named 'ambassador' is supported, not {obj.name!r}")
    config = opt_dict(obj.spec, "config")
    defaults = opt_dict(config, "defaults", "spec.config")
    mapping_defaults = opt_dict(defaults, "httpmapping", "spec.config.defaults")
    p = "spec.config"
    diagnostics = opt_dict(config, "diagnostics", p)
    server_name = opt_str(config, "server_name", "edge", p)
    if any(c in server_name for c in "\r\n"):
        raise Invalid("spec.config.server_name", "must not contain CR or LF")
    settings = Settings(
        server_name=server_name,
        max_request_headers_kb=opt_int(config, "max_request_headers_kb", 60, p, minimum=1, maximum=8192),
        merge_slashes=opt_bool(config, "merge_slashes", False, p),
        strip_matching_host_port=opt_bool(config, "strip_matching_host_port", False, p),
        xff_num_trusted_hops=opt_int(config, "xff_num_trusted_hops", 0, p, minimum=0),
        suppress_envoy_headers=opt_bool(config, "suppress_envoy_headers", False, p),
        forward_client_cert_details=_forward_client_cert(config, p),
        set_current_client_cert_details=_client_cert_details(config, p),
        grpc_web=opt_bool(config, "enable_grpc_web", False, p),
    )
    return ModuleSpec(settings, mapping_defaults,
                      opt_int(config, "cluster_request_timeout_ms", None, p, minimum=0),
                      opt_str(config, "resolver", None, p), parse_default_labels(config, p),
                      opt_bool(config, "add_linkerd_headers", False, p),
                      opt_bool(opt_dict(config, "liveness_probe", p), "enabled", True, f"{p}.liveness_probe"),
                      opt_bool(opt_dict(config, "readiness_probe", p), "enabled", True, f"{p}.readiness_probe"),
                      opt_bool(diagnostics, "enabled", True, f"{p}.diagnostics"),
                      opt_bool(diagnostics, "allow_non_local", False, f"{p}.diagnostics"),
                      cors=parse_cors(config.get("cors"), f"{p}.cors"))
