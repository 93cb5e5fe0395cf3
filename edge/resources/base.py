"""Shared pieces of the input schemas: the raw object, typed field readers, Invalid.

Readers raise Invalid(field, message) naming the dotted field path, so a diagnostic can say
exactly what is wrong and where. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

AMBASSADOR_GROUP = "getambassador.io"
SUPPORTED_VERSIONS = ("v3alpha1", "v2", "v1")


class Invalid(ValueError):
    """An object (or one field of it) that cannot be used."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class RawObject:
    """One document of a source, with its identity. `spec` is the user's mapping as-is."""

    kind: str
    namespace: str
    name: str
    source: str
    spec: dict
    labels: dict = field(default_factory=dict)
    api_version: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def ident(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}@{self.source}"


def ambassador_ids(spec: dict) -> tuple[str, ...]:
    value = spec.get("ambassador_id", ["default"])
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise Invalid("spec.ambassador_id", "must be a string or a list of strings")


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__)


def opt_str(spec: dict, key: str, default: str | None = None, path: str = "spec") -> str | None:
    value = spec.get(key, default)
    if value is None or isinstance(value, str):
        return value
    raise Invalid(f"{path}.{key}", f"must be a string, not {_type_name(value)}")


def opt_int(spec: dict, key: str, default: int | None = None, path: str = "spec",
            minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = spec.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise Invalid(f"{path}.{key}", f"must be an integer, not {_type_name(value)}")
    if minimum is not None and value < minimum:
        raise Invalid(f"{path}.{key}", f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise Invalid(f"{path}.{key}", f"must be at most {maximum}, got {value}")
    return value


def opt_bool(spec: dict, key: str, default: bool, path: str = "spec") -> bool:
    value = spec.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise Invalid(f"{path}.{key}", f"must be true or false, not {_type_name(value)}")


def opt_dict(spec: dict, key: str, path: str = "spec") -> dict:
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{path}.{key}", f"must be a mapping, not {_type_name(value)}")
    return value


def opt_str_list(spec: dict, key: str, path: str = "spec") -> tuple[str, ...]:
    value = spec.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise Invalid(f"{path}.{key}", "must be a string or a list of strings")


def check_regex(pattern: str, field: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise Invalid(field, f"bad regular expression {pattern!r}: {exc}") from None
    return pattern


def str_labels(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(field, f"must be a mapping of strings, not {_type_name(value)}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
            raise Invalid(f"{field}.{k}", "must be a string")
        out[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


# ---- field tables: what edge does with each field of a kind ------------------------------

HONOURED, DROP, WARN = "honoured", "drop", "warn"


def _set(value) -> bool:
    """A field the user turned on: not absent, false, empty or null."""
    return value not in (None, False, "", 0, "false", "False") and value != {} and value != []


def _always(value) -> bool:
    return True


@dataclass(frozen=True)
class FieldRule:
    """What edge does with one field of an input kind.

    HONOURED: parsed and served. DROP: when `when(value)` holds, serving the object without
    the field would send traffic somewhere else or answer differently than Emissary, so the
    object is dropped with an error naming the field (`when` false: warn with `otherwise`, a
    message or a function of the value giving one, or say nothing, e.g. `shadow: false`). WARN: tuning only; served without it, warned."""

    kind: str
    message: str = ""
    when: Callable[[object], bool] = _set
    otherwise: str | Callable[[object], str] = ""


def check_fields(table: dict[str, FieldRule], spec: dict, path: str, what: str
                 ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(errors, warnings) as (field path, message) for `spec` by `table`; any error means
    the object must not be served."""
    errors, warnings = [], []
    for name in sorted(spec, key=str):
        rule = table.get(name)
        value = spec[name]
        where = f"{path}.{name}"
        if rule is None:
            warnings.append((where, f"not {what} edge knows; ignored"))
        elif rule.kind == DROP:
            if rule.when(value):
                errors.append((where, rule.message))
            else:
                message = rule.otherwise(value) if callable(rule.otherwise) else rule.otherwise
                if message:
                    warnings.append((where, message))
        elif rule.kind == WARN:
            warnings.append((where, rule.message))
    return errors, warnings
