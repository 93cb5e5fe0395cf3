"""The Mapping resource (getambassador.io/v3alpha1), validated into MappingSpec."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from edge.model import LabelAction, LabelGroup
from edge.resources.base import (
    Invalid,
    RawObject,
    check_regex,
    opt_bool,
    opt_dict,
    opt_int,
    opt_str,
    opt_str_list,
)
from edge.resources.ratelimit import parse_labels

KNOWN_FIELDS = frozenset({
    "prefix", "prefix_regex", "prefix_exact", "case_sensitive", "hostname", "host", "host_regex",
    "headers", "regex_headers", "query_parameters", "regex_query_parameters", "method",
    "method_regex", "precedence", "rewrite", "regex_rewrite", "host_rewrite",
    "add_request_headers", "add_response_headers", "remove_request_headers",
    "remove_response_headers", "service", "weight", "timeout_ms", "connect_timeout_ms",
    "idle_timeout_ms", "ambassador_id", "labels", "resolver",
})


@dataclass(frozen=True)
class Service:
    host: str
    port: int
    port_name: str = ""  # `name:http`: a named Service port, for the Kubernetes resolvers

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


def parse_service(text: str, field: str = "spec.service") -> Service:
    """`[http://]host[:port]`: a DNS name or an IP literal ([v6] in brackets)."""
    rest = text.strip()
    port = 80
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() != "http":
            raise Invalid(field, f"scheme {scheme!r} not supported (only http://) in {text!r}")
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
            return Service(_host(host, text, field), 0, port_text)
        port = _port(port_text, text, field)
    else:
        host = rest
    return Service(_host(host, text, field), port)


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
    host = opt_str(spec, "host")
    host_regex = opt_bool(spec, "host_regex", False)
    if host is not None and host_regex:
        check_regex(host, "spec.host")
    hostname = opt_str(spec, "hostname")
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
        service=parse_service(service_text),
        service_text=service_text,
        weight=opt_int(spec, "weight", None, minimum=0, maximum=100),
        timeout_ms=opt_int(spec, "timeout_ms", None, minimum=0),
        connect_timeout_ms=opt_int(spec, "connect_timeout_ms", None, minimum=1),
        idle_timeout_ms=opt_int(spec, "idle_timeout_ms", None, minimum=0),
        resolver=opt_str(spec, "resolver"),
        labels=parse_labels(spec.get("labels"), prepend=default_labels),
    )
