"""RESP2, sans-IO: commands to bytes, bytes to replies (Redis' protocol).

`encode(*args)` gives one command; `ReplyParser.feed(data)` returns the replies completed
so far: str for simple strings, int, bytes (None for a null bulk), lists, and RespError
instances for error replies (returned, not raised: an error answers one command only).
A reply that is not RESP raises ProtocolError (the connection is unusable).
"""

from __future__ import annotations


class RespError:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message

    def __repr__(self) -> str:
        return f"RespError({self.message!r})"


class ProtocolError(ValueError):
    """The peer sent something that is not a RESP2 reply."""


def encode(*args) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


class _Incomplete(Exception):
    pass


class ReplyParser:
    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        self.buf += data
        out = []
        while self.buf:
            try:
                reply, end = self._parse(0)
            except _Incomplete:
                break
            del self.buf[:end]
            out.append(reply)
        return out

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self.buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        return bytes(self.buf[pos:end]), end + 2

    def _parse(self, pos: int):
        if pos >= len(self.buf):
            raise _Incomplete
        kind = self.buf[pos:pos + 1]
        line, pos = self._line(pos + 1)
        try:
            if kind == b"+":
                return line.decode(), pos
            if kind == b"-":
                return RespError(line.decode(errors="replace")), pos
            if kind == b":":
                return int(line), pos
            if kind == b"$":
                n = int(line)
                if n < 0:
                    return None, pos
                if len(self.buf) < pos + n + 2:
                    raise _Incomplete
                return bytes(self.buf[pos:pos + n]), pos + n + 2
            if kind == b"*":
                n = int(line)
                if n < 0:
                    return None, pos
                items = []
                for _ in range(n):
                    item, pos = self._parse(pos)
                    items.append(item)
                return items, pos
        except ValueError as exc:
            raise ProtocolError(f"bad RESP line {line[:40]!r}") from exc
        raise ProtocolError(f"unknown RESP type {kind!r}")
