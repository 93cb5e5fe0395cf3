"""Shared pieces of the input schemas: the raw object, typed field readers, Invalid.

Readers raise Invalid(field, message) naming the dotted field path, so a diagnostic can say
exactly what is wrong and where. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

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
