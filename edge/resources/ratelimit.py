"""Rate limiting input: Mapping `labels` (Emissary's syntax) and the RateLimit resource
(Ambassador Edge Stack's `getambassador.io/v3alpha1` RateLimit). Pure.

Mapping labels:

    labels:
      ambassador:                  # the domain
        - a_group_name:            # one descriptor per request, entries in order
            - remote_address: {key: remote_address}
            - generic_key: {value: backend}
            - request_headers: {key: user, header_name: x-user, omit_if_not_present: true}
            - source_cluster: {key: source_cluster}
            - destination_cluster: {key: destination_cluster}
            - user: {header: x-user, omit_if_not_present: true}   # v2 shorthand
            - remote_address                                       # a bare action name
            - some-literal                                         # a bare generic_key value

RateLimit: `spec.domain`, `spec.limits[]` with `pattern` (a list of {key: value} maps; an
empty or null value means "each distinct value"), `rate`, `unit` (second, minute, hour,
day), `burstFactor`, `action` (Enforce, LogOnly), `injectResponseHeaders` and
`errorResponse` (`headers`, `bodyTemplate`).
"""

from __future__ import annotations

from edge.model import HeaderOp, LabelAction, LabelGroup, PatternEntry, RateLimitRule
from edge.resources.base import Invalid, RawObject, opt_str

ACTIONS = ("source_cluster", "destination_cluster", "remote_address", "generic_key", "request_headers")
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _action(item, where: str) -> LabelAction:
    if isinstance(item, str):
        if item in ("source_cluster", "destination_cluster", "remote_address"):
            return LabelAction(item, item)
        return LabelAction("generic_key", "generic_key", value=item)
    if not isinstance(item, dict) or len(item) != 1:
        raise Invalid(where, "a label must be a name or a mapping with one key")
    (name, body), = item.items()
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise Invalid(f"{where}.{name}", "must be a mapping")
    if name in ("source_cluster", "destination_cluster", "remote_address"):
        return LabelAction(name, str(body.get("key") or name))
    if name == "generic_key":
        value = body.get("value")
        if not isinstance(value, str) or not value:
            raise Invalid(f"{where}.generic_key.value", "is required")
        return LabelAction(name, str(body.get("key") or "generic_key"), value=value)
    if name == "request_headers" or "header" in body:
        header = body.get("header_name") if name == "request_headers" else body.get("header")
        if not isinstance(header, str) or not header:
            raise Invalid(f"{where}.{name}", "needs the header name (header_name)")
        key = str(body.get("key") or (header if name == "request_headers" else name))
        omit = body.get("omit_if_not_present", False)
        if not isinstance(omit, bool):
            raise Invalid(f"{where}.{name}.omit_if_not_present", "must be true or false")
        return LabelAction("request_headers", key, header=header.lower(), omit_if_not_present=omit)
    raise Invalid(f"{where}.{name}", f"unknown label; expected one of {', '.join(ACTIONS)}")


def parse_labels(value, field: str = "spec.labels", prepend: dict[str, tuple[LabelAction, ...]] | None = None
                 ) -> tuple[LabelGroup, ...]:
    """Label groups of a Mapping. `prepend` (domain -> actions, the Module's default_labels)
    go in front of every group of that domain. Raises Invalid naming the field."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise Invalid(field, "must be a mapping of domain to label groups")
    groups = []
    for domain, entries in value.items():
        if not isinstance(entries, list):
            raise Invalid(f"{field}.{domain}", "must be a list of label groups")
        for i, entry in enumerate(entries):
            where = f"{field}.{domain}[{i}]"
            if not isinstance(entry, dict) or len(entry) != 1:
                raise Invalid(where, "a label group is a mapping of its name to a list of labels")
            (name, items), = entry.items()
            if not isinstance(items, list):
                raise Invalid(f"{where}.{name}", "must be a list of labels")
            actions = tuple(_action(item, f"{where}.{name}[{j}]") for j, item in enumerate(items))
            groups.append(LabelGroup(str(domain), (prepend or {}).get(str(domain), ()) + actions))
    return tuple(groups)


def parse_default_labels(config: dict, field: str = "spec.config") -> dict[str, tuple[LabelAction, ...]]:
    """The Module's `default_labels: {domain: {defaults: [labels]}}`; a domain given without
    its own key uses `default_label_domain` (default "ambassador")."""
    domain_default = opt_str(config, "default_label_domain", "ambassador", field)
    value = config.get("default_labels")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{field}.default_labels", "must be a mapping of domain to {defaults: [labels]}")
    out = {}
    for domain, body in value.items():
        defaults = body.get("defaults") if isinstance(body, dict) else body
        if not isinstance(defaults, list):
            raise Invalid(f"{field}.default_labels.{domain}.defaults", "must be a list of labels")
        out[str(domain or domain_default)] = tuple(
            _action(item, f"{field}.default_labels.{domain}.defaults[{j}]") for j, item in enumerate(defaults))
    return out


def _headers(value, where: str) -> tuple[HeaderOp, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(where, "must be a list of {name, value}")
    out = []
    for i, h in enumerate(value):
        if not isinstance(h, dict) or not isinstance(h.get("name"), str) or not h["name"]:
            raise Invalid(f"{where}[{i}].name", "is required")
        v = h.get("value", "")
        if not isinstance(v, (str, int, float)) or any(c in str(v) or c in h["name"] for c in "\r\n"):
            raise Invalid(f"{where}[{i}].value", "must be a string without CR or LF")
        out.append(HeaderOp(h["name"].lower(), str(v), False))
    return tuple(out)


def parse_ratelimit(obj: RawObject) -> tuple[RateLimitRule, ...]:
    spec = obj.spec
    domain = opt_str(spec, "domain")
    if not domain:
        raise Invalid("spec.domain", "is required")
    limits = spec.get("limits")
    if not isinstance(limits, list) or not limits:
        raise Invalid("spec.limits", "must be a non-empty list")
    rules = []
    for i, limit in enumerate(limits):
        where = f"spec.limits[{i}]"
        if not isinstance(limit, dict):
            raise Invalid(where, "must be a mapping")
        pattern = limit.get("pattern")
        if not isinstance(pattern, list) or not pattern:
            raise Invalid(f"{where}.pattern", "must be a non-empty list of {key: value} maps")
        entries = []
        for j, item in enumerate(pattern):
            if not isinstance(item, dict) or not item:
                raise Invalid(f"{where}.pattern[{j}]", "must be a {key: value} map")
            for key, value in item.items():
                if value is not None and not isinstance(value, (str, int)):
                    raise Invalid(f"{where}.pattern[{j}].{key}", "must be a string (or empty: any value)")
                entries.append(PatternEntry(str(key), str(value) if value not in (None, "") else None))
        rate = limit.get("rate")
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
            raise Invalid(f"{where}.rate", "must be a whole number of requests, 0 or more")
        unit = limit.get("unit")
        if unit not in UNITS:
            raise Invalid(f"{where}.unit", f"must be one of {', '.join(UNITS)}, got {unit!r}")
        burst = limit.get("burstFactor", 1)
        if isinstance(burst, bool) or not isinstance(burst, (int, float)) or burst < 1:
            raise Invalid(f"{where}.burstFactor", "must be a number, 1 or more")
        action = limit.get("action", "Enforce")
        if action not in ("Enforce", "LogOnly"):
            raise Invalid(f"{where}.action", f"must be Enforce or LogOnly, got {action!r}")
        error = limit.get("errorResponse") or {}
        if not isinstance(error, dict):
            raise Invalid(f"{where}.errorResponse", "must be a mapping")
        body = error.get("bodyTemplate")
        if body is not None and not isinstance(body, str):
            raise Invalid(f"{where}.errorResponse.bodyTemplate", "must be a string")
        rules.append(RateLimitRule(
            id=f"{obj.namespace}/{obj.name}#{i}", domain=domain, pattern=tuple(entries), rate=rate,
            unit_seconds=UNITS[unit], limit=int(rate * burst), enforce=action == "Enforce",
            inject_response_headers=_headers(limit.get("injectResponseHeaders"), f"{where}.injectResponseHeaders"),
            error_headers=_headers(error.get("headers"), f"{where}.errorResponse.headers"), error_body=body))
    return tuple(rules)
