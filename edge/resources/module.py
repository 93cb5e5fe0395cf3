"""The ambassador Module: global settings and Mapping defaults."""

from __future__ import annotations

from dataclasses import dataclass

from edge.model import Settings
from edge.model import LabelAction
from edge.resources.base import Invalid, RawObject, opt_bool, opt_dict, opt_int, opt_str
from edge.resources.ratelimit import parse_default_labels

KNOWN_CONFIG = frozenset({
    "defaults", "server_name", "cluster_request_timeout_ms", "max_request_headers_kb",
    "merge_slashes", "strip_matching_host_port", "xff_num_trusted_hops",
    "suppress_envoy_headers", "resolver", "default_labels", "default_label_domain",
})


@dataclass(frozen=True)
class ModuleSpec:
    settings: Settings
    mapping_defaults: dict
    request_timeout_ms: int | None
    resolver: str | None = None  # the default resolver's name
    default_labels: dict[str, tuple[LabelAction, ...]] | None = None  # domain -> labels put first


def parse_module(obj: RawObject) -> ModuleSpec:
    if obj.name != "ambassador":
        raise Invalid("metadata.name", f"only the Module named 'ambassador' is supported, not {obj.name!r}")
    config = opt_dict(obj.spec, "config")
    defaults = opt_dict(config, "defaults", "spec.config")
    mapping_defaults = opt_dict(defaults, "httpmapping", "spec.config.defaults")
    p = "spec.config"
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
    )
    return ModuleSpec(settings, mapping_defaults,
                      opt_int(config, "cluster_request_timeout_ms", None, p, minimum=0),
                      opt_str(config, "resolver", None, p), parse_default_labels(config, p))
