"""RouteTable <-> canonical MessagePack, and the content hash.

Each dataclass is encoded as a list of its field values in declaration order, preceded by
the schema version, so the encoding is canonical: the same table gives the same bytes and
the same hash. Decoding rebuilds the dataclasses from their type hints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing

import msgpack

from edge.model import RouteTable

SCHEMA_VERSION = 3


class CodecError(ValueError):
    """The payload is not a RouteTable of this schema version."""


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _to_plain(value):
    kind = type(value)
    if kind in _SCALARS:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is not None:
        return [_to_plain(getattr(value, n)) for n in names]
    if kind is tuple:
        return [_to_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
        return _to_plain(value)
    return value


def encode(table: RouteTable) -> bytes:
    return msgpack.packb([SCHEMA_VERSION, _to_plain(table)], use_bin_type=True)


def content_hash(payload: bytes) -> bytes:
    """32-byte digest of an encoded table."""
    return hashlib.blake2b(payload, digest_size=32).digest()


def _decoder(hint):
    """Return a function turning the plain value for `hint` back into its type."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        names = [f.name for f in dataclasses.fields(hint)]
        subs = [_decoder(hints[n]) for n in names]

        def decode_dataclass(v, cls=hint, subs=subs, n=len(names)):
            if not isinstance(v, list) or len(v) != n:
                raise CodecError(f"bad {cls.__name__}: {v!r:.80}")
            return cls(*[d(x) for d, x in zip(subs, v)])

        return decode_dataclass
    if origin is tuple:
        item = _decoder(typing.get_args(hint)[0])

        def decode_tuple(v):
            if not isinstance(v, list):
                raise CodecError(f"expected a list, got {v!r:.80}")
            return tuple(item(x) for x in v)

        return decode_tuple
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        sub = _decoder(inner[0])
        return lambda v: None if v is None else sub(v)
    if hint in (str, int, bool, float, bytes):
        return lambda v, t=hint: _check(v, t)
    raise TypeError(f"unsupported type in model: {hint!r}")


def _check(v, t):
    if t is float and isinstance(v, int):
        return float(v)
    if not isinstance(v, t):
        raise CodecError(f"expected {t.__name__}, got {v!r:.80}")
    return v


_decode_table = _decoder(RouteTable)


def decode(payload: bytes) -> RouteTable:
    """Decode an encoded table. Raises CodecError on anything malformed."""
    try:
        version, body = msgpack.unpackb(payload, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError(f"not a msgpack table: {exc}") from exc
    if version != SCHEMA_VERSION:
        raise CodecError(f"schema version {version}, expected {SCHEMA_VERSION}")
    return _decode_table(body)
