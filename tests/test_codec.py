from __future__ import annotations

import pytest

from edge import codec
from edge.resources.base import RawObject
from edge.supervisor.compile import compile


def _table():
    objs = [RawObject("Mapping", "default", f"m{i}", "f.yaml",
                      {"prefix": f"/p{i}/", "service": "10.0.0.1:80", "headers": {"x-a": "b"},
                       "add_request_headers": {"x": {"value": "y", "append": False}}}) for i in range(5)]
    return compile(objs)[0]


def test_roundtrip_and_determinism():
    table = _table()
    payload = codec.encode(table)
    assert codec.decode(payload) == table
    assert codec.encode(_table()) == payload
    assert codec.content_hash(payload) == codec.content_hash(codec.encode(_table()))


def test_rejects_other_schema_and_garbage():
    with pytest.raises(codec.CodecError):
        codec.decode(b"\x92\x02\x90")
    with pytest.raises(codec.CodecError):
        codec.decode(b"not msgpack at all \xff")
