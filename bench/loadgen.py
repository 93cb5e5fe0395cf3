"""A keep-alive HTTP/1.1 load generator that counts every failure, per route.

A failure is a status >= 500 or a transport error (refused, reset, EOF before a complete
response, timeout). Each connection is a trio task that sends one request at a time on a
keep-alive connection, cycling through the routes; after a transport error it counts the
error and reconnects. Responses are read by Content-Length or chunked framing.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import trio

RESPONSE_TIMEOUT = 5.0


@dataclass
class RouteCounts:
    ok: int = 0  # status < 500
    server_errors: int = 0  # status >= 500
    transport_errors: int = 0  # refused, reset, EOF mid-response, timeout
    statuses: collections.Counter = field(default_factory=collections.Counter)

    @property
    def failures(self) -> int:
        return self.server_errors + self.transport_errors


class _Broken(Exception):
    pass


async def _read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bool]:
    """Read one response; returns (status, the server keeps the connection)."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise _Broken("EOF before a response head")
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    buf[:] = rest
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(buf) < need:
            data = await stream.receive_some(65536)
            if not data:
                raise _Broken("EOF inside a body")
            buf += data
        del buf[:need]
    elif headers.get(b"transfer-encoding") == b"chunked":
        while not buf.endswith(b"0\r\n\r\n") and b"\r\n0\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                raise _Broken("EOF inside a chunked body")
            buf += data
        buf.clear()
    return status, headers.get(b"connection") != b"close"


class LoadGenerator:
    """`connections` keep-alive clients against 127.0.0.1:`port`, cycling over `routes`
    (paths). Run `run(stop)` until the event is set; then read `counts` and `total()`."""

    def __init__(self, port: int, routes: list[str], connections: int = 8, host: str = "loadgen",
                 keep_alive: bool = True, response_timeout: float = RESPONSE_TIMEOUT):
        """`keep_alive` False: every request on a new connection (Connection: close), so
        every request is also a connect that may be refused. `response_timeout`: seconds a
        request may take before it counts as failed."""
        self.port = port
        self.routes = routes
        self.connections = connections
        self.host = host
        self.keep_alive = keep_alive
        self.response_timeout = response_timeout
        self._head = "" if keep_alive else "Connection: close\r\n"
        self.counts: dict[str, RouteCounts] = {r: RouteCounts() for r in routes}
        self.errors: collections.Counter = collections.Counter()  # transport error kinds

    def total(self) -> RouteCounts:
        out = RouteCounts()
        for c in self.counts.values():
            out.ok += c.ok
            out.server_errors += c.server_errors
            out.transport_errors += c.transport_errors
            out.statuses.update(c.statuses)
        return out

    async def run(self, stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(self.connections):
                nursery.start_soon(self._client, i, stop)

    async def _client(self, index: int, stop: trio.Event) -> None:
        n = index
        while not stop.is_set():
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError as exc:
                self._transport_error(self.routes[n % len(self.routes)], exc)
                n += 1
                await trio.sleep(0.01)
                continue
            buf = bytearray()
            async with stream:
                while not stop.is_set():
                    route = self.routes[n % len(self.routes)]
                    n += 1
                    try:
                        with trio.fail_after(self.response_timeout):
                            await stream.send_all(
                                f"GET {route} HTTP/1.1\r\nHost: {self.host}\r\n{self._head}\r\n".encode())
                            status, keep = await _read_response(stream, buf)
                    except (OSError, trio.BrokenResourceError, trio.TooSlowError, _Broken) as exc:
                        self._transport_error(route, exc)
                        break
                    counts = self.counts[route]
                    counts.statuses[status] += 1
                    if status >= 500:
                        counts.server_errors += 1
                    else:
                        counts.ok += 1
                    if not (keep and self.keep_alive):
                        break

    def _transport_error(self, route: str, exc: BaseException) -> None:
        self.counts[route].transport_errors += 1
        self.errors[f"{type(exc).__name__}: {exc}"[:80]] += 1
