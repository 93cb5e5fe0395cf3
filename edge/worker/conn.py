"""One client connection: read requests, route, proxy to the upstream, stream back.

Requests on a keep-alive connection are answered in order (pipelining). Each request takes
the worker's current Router when its head arrives and keeps it to the end (routes, Module
settings, the Server header): a keep-alive client sees a new table on its next request.
Whose fault: ClientError -> 4xx and close; upstream trouble -> 502/503/504; once a
response has started, any failure closes the connection (there is no way left to report it).

Timeouts: every timeout ends the connection, so one cancel scope per connection (`timer`)
serves them all. Each phase moves its deadline (cheaper than a new scope per wait, which
costs ~6 us here), and when it fires, the phase says what to answer.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import time

import trio

from edge.worker import net
from edge.worker.proto.h1 import (
    Body,
    ClientError,
    End,
    Request,
    RequestParser,
    Response,
    UpstreamError,
    chunk,
    last_chunk,
    simple_response,
)
from edge.worker.proxy import normalize_path, request_head, response_head, rewrite_path, split_target
from edge.worker.router import pick_target
from edge.worker.state import WorkerState
from edge.worker.upstream import ConnectTimeout, UpstreamConn

log = logging.getLogger("edge.worker")

# What the connection is waiting for when its timer fires
IDLE = 0  # the next request: close quietly
HEAD = 1  # the rest of a request head: 408
EXCHANGE = 2  # the upstream (timeout_ms, idle_timeout_ms): 504

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"


class _Abort(Exception):
    """Close the client connection without (more of) a response."""


class _UpstreamFailed(Exception):
    """Upstream trouble before any response byte reached the client."""

    def __init__(self, status: int, message: str, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


async def serve_client(state: WorkerState, sock: socket.socket, peer: str, port: int) -> None:
    """Serve one accepted connection until it closes. Never raises: our own bugs are
    answered with 500 (when no response has started), logged and counted."""
    state.active += 1
    conn = ClientConnection(state, sock, peer, port)
    try:
        await conn.run()
    except (OSError, _Abort):
        pass
    except Exception:
        state.internal_errors += 1
        log.exception("internal error on a connection from %s", peer)
        if not conn.response_started:
            with trio.move_on_after(1):
                try:
                    await conn._local(500, b"internal error", close=True)
                except OSError:
                    pass
    finally:
        state.active -= 1
        sock.close()


class ClientConnection:
    __slots__ = ("state", "sock", "peer", "port", "parser", "response_started", "router", "timer", "phase",
                 "request_deadline")

    def __init__(self, state: WorkerState, sock: socket.socket, peer: str, port: int):
        self.state = state
        self.sock = sock
        self.peer = peer
        self.port = port
        self.router = state.router
        self.parser = RequestParser(self.router.max_head)
        self.response_started = False
        self.timer = trio.CancelScope()
        self.phase = IDLE
        self.request_deadline = math.inf

    async def run(self) -> None:
        with self.timer:
            while True:
                req = await self._read_head()
                if req is None:
                    return
                keep = await self._exchange(req)
                if not keep or self.state.draining:
                    return
        if self.timer.cancelled_caught:
            await self._timed_out()

    async def _timed_out(self) -> None:
        state = self.state
        if self.phase == HEAD and not state.draining:
            state.client_errors += 1
            await self._local(408, b"request timeout", close=True)
        elif self.phase == EXCHANGE:
            state.upstream_errors += 1
            if self.response_started:
                return  # nothing left to report it with: the connection closes
            late = trio.current_time() >= self.request_deadline
            await self._local(504, b"upstream request timeout" if late else b"upstream idle timeout", close=True)

    async def _fill(self) -> bool:
        """Read more from the client into the parser; False on EOF. Raises ClientError."""
        state = self.state
        n = await net.recv_into(self.sock, state.read_buf)
        if n == 0:
            return False
        self.parser.feed(bytes(state.read_view[:n]))
        return True

    async def _read_head(self) -> Request | None:
        """The next request head, or None when the connection should close."""
        state = self.state
        events = self.parser.events
        self.response_started = False
        self.router = state.router  # errors before the head arrives answer with today's table
        self.parser.max_head = self.router.max_head
        timer = self.timer
        try:
            while not events:
                partial = self.parser.in_message
                if state.draining and not partial:
                    return None
                self.phase = HEAD if partial else IDLE
                timer.deadline = trio.current_time() + (state.header_timeout if partial else state.idle_timeout)
                if partial:
                    more = await self._fill()
                else:
                    state.idle_timers.add(timer)  # a drain cancels idle connections
                    try:
                        more = await self._fill()
                    finally:
                        state.idle_timers.discard(timer)
                if not more:
                    return None
        except ClientError as exc:
            state.client_errors += 1
            await self._local(exc.status, exc.reason.encode(), close=True)
            return None
        event = events.popleft()
        if type(event) is not Request:  # the parser only emits a head first
            raise AssertionError(f"expected a request head, got {event!r}")
        if not event.has_body:
            # llhttp completes a bodiless message in the same feed as its head
            end = events.popleft()
            if type(end) is not End:
                raise AssertionError(f"expected the end of a bodiless request, got {end!r}")
        self.router = state.router  # the request's table, kept until its response ends
        return event

    async def _local(self, status: int, body: bytes, close: bool) -> None:
        await net.send_all(self.sock, simple_response(status, body, self.router.server, close))

    async def _exchange(self, req: Request) -> bool:
        """Answer one request; True if the connection can carry another."""
        state = self.state
        state.requests += 1
        router = self.router
        settings = router.settings
        must_close = not req.keep_alive or req.has_body  # a body we do not read poisons the stream
        if req.upgrade:
            await self._local(501, b"protocol upgrades are not supported yet", close=True)
            return False
        try:
            path, query = split_target(req.target)
            path = normalize_path(path, settings.merge_slashes)
        except ClientError as exc:
            state.client_errors += 1
            await self._local(exc.status, exc.reason.encode(), close=True)
            return False
        host = req.host.decode("latin-1").lower() if req.host else ""
        if settings.strip_matching_host_port and host.endswith(f":{self.port}"):
            host = host[: -len(str(self.port)) - 1]
        found = router.match(self.port, host, path, req.method, req.headers, query)
        if found is None:
            await self._local(404, b"", close=must_close)
            return not must_close
        route, matched = found
        target = pick_target(route, random.randrange(100))
        t = target.target
        cluster = router.clusters[t.cluster]
        listener = router.listeners[self.port]
        new_path = rewrite_path(path, matched, t.rewrite, target.regex_rewrite, t.regex_rewrite_substitution)
        original = (path + ("?" + query if query else "")) if new_path != path else None
        head = request_head(
            req.method, new_path, query, req.headers, client_ip=self.peer, xfp=b"http",
            trust_xff=listener.l7_depth > 0 or settings.xff_num_trusted_hops > 0,
            original_path=original, rules=target.headers, suppress_envoy=settings.suppress_envoy_headers,
            chunked=req.chunked, content_length=req.content_length)
        self.request_deadline = trio.current_time() + t.timeout_ms / 1000 if t.timeout_ms else math.inf
        self.phase = EXCHANGE
        self.timer.deadline = self.request_deadline
        attempts = 2
        while True:
            attempts -= 1
            endpoint = state.pool.pick(cluster)
            if endpoint is None:
                state.upstream_errors += 1
                await self._local(503, b"no healthy upstream", close=must_close)
                return not must_close
            try:
                return await self._forward(req, head, endpoint, cluster, target)
            except _UpstreamFailed as exc:
                if exc.retryable and attempts > 0:
                    continue
                state.upstream_errors += 1
                if self.response_started:
                    raise _Abort() from None
                await self._local(exc.status, str(exc).encode(), close=True)
                return False

    async def _forward(self, req: Request, head: bytes, endpoint, cluster, target) -> bool:
        state = self.state
        try:
            up = await state.pool.acquire(endpoint, cluster.connect_timeout_ms)
        except ConnectTimeout as exc:
            raise _UpstreamFailed(504, f"upstream connect timeout: {exc}") from None
        except OSError as exc:
            raise _UpstreamFailed(502, f"upstream connect error: {exc.strerror or exc}") from None
        reuse = False
        try:
            sent_at = time.monotonic()
            try:
                await self._send_request(up, req, head)
            except OSError as exc:
                raise _UpstreamFailed(502, f"upstream reset: {exc.strerror or exc}",
                                      retryable=up.reused and not req.has_body) from None
            keep_client, reuse = await self._relay_response(up, req, target, sent_at)
            return keep_client
        finally:
            if reuse:
                state.pool.release(up)
            else:
                up.close()

    async def _send_request(self, up: UpstreamConn, req: Request, head: bytes) -> None:
        """Send the head and stream the body from the client (backpressure: we read from
        the client only after the upstream took the previous piece)."""
        events = self.parser.events
        if not req.has_body:
            await net.send_all(up.sock, head)
            return
        if req.expect_continue:
            await net.send_all(self.sock, CONTINUE)
        chunked = req.chunked
        out = [head]
        while True:
            while events:
                event = events[0]
                if type(event) is Body:
                    events.popleft()
                    out.append(chunk(event.data) if chunked else event.data)
                elif type(event) is End:
                    events.popleft()
                    if chunked:
                        out.append(last_chunk(event.trailers))
                    await self._upstream_send(up, out)
                    return
                else:
                    raise AssertionError(f"request event out of order: {event!r}")
            if out:
                await self._upstream_send(up, out)
                out = []
            try:
                more = await self._fill()
            except ClientError as exc:
                self.state.client_errors += 1
                await self._local(exc.status, exc.reason.encode(), close=True)
                raise _Abort() from None
            if not more:
                raise _Abort()  # the client left in the middle of its body

    @staticmethod
    async def _upstream_send(up: UpstreamConn, parts: list) -> None:
        await net.send_all(up.sock, parts[0] if len(parts) == 1 else b"".join(parts))

    async def _relay_response(self, up: UpstreamConn, req: Request, target, sent_at: float) -> tuple[bool, bool]:
        """Stream the upstream's response to the client; returns (keep the client
        connection, return the upstream connection to the pool)."""
        state = self.state
        parser = up.parser
        events = parser.events
        if req.method == b"HEAD":
            parser.expect_no_body()
        # idle_timeout_ms bounds each wait for upstream bytes (0 disables it)
        idle = target.target.idle_timeout_ms / 1000
        to_chunked = False
        close_client = False
        keep_upstream = False
        out: list = []
        while True:
            if not events:
                if out:
                    await net.send_all(self.sock, b"".join(out))
                    out = []
                if idle:
                    self.timer.deadline = min(self.request_deadline, trio.current_time() + idle)
                try:
                    n = await net.recv_into(up.sock, state.read_buf)
                    if n == 0:
                        parser.feed_eof()
                    else:
                        parser.feed(bytes(state.read_view[:n]))
                except (OSError, UpstreamError) as exc:
                    fresh = not self.response_started and not parser.in_message
                    raise _UpstreamFailed(502, f"upstream reset before response: {exc}",
                                          retryable=fresh and up.reused and not req.has_body) from None
                continue
            event = events.popleft()
            kind = type(event)
            if kind is Body:
                out.append(chunk(event.data) if to_chunked else event.data)
            elif kind is End:
                if to_chunked:
                    out.append(last_chunk(event.trailers))
                await net.send_all(self.sock, b"".join(out))
                return not close_client, keep_upstream and not parser.close_delimited and not parser.in_message
            elif kind is Response:
                if event.informational:
                    continue  # we answered Expect ourselves; other 1xx are not relayed
                settings = self.router.settings
                framing, to_chunked, close_delimited = self._framing(req, event)
                close_client = not req.keep_alive or close_delimited or state.draining
                keep_upstream = event.keep_alive
                service_ms = None if settings.suppress_envoy_headers else int((time.monotonic() - sent_at) * 1000)
                out.append(response_head(event.status, event.reason, event.headers, rules=target.headers,
                                         server=self.router.server, service_time_ms=service_ms,
                                         framing=framing, close=close_client))
                self.response_started = True

    @staticmethod
    def _framing(req: Request, resp: Response) -> tuple[bytes, bool, bool]:
        """(framing header line, re-chunk the body?, close to end the body?)"""
        if req.method == b"HEAD" or resp.status == 304:
            for name, value in resp.headers:
                if name == b"content-length":
                    return b"content-length: %b\r\n" % value, False, False
            return b"", False, False
        if resp.status == 204:
            return b"", False, False
        if resp.content_length is not None:
            return b"content-length: %d\r\n" % resp.content_length, False, False
        if req.version == "1.1":
            return CHUNKED, True, False
        return b"", False, True  # an HTTP/1.0 client reads to EOF
