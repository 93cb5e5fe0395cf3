"""One client connection as a reactor handler: read requests, route, proxy, stream back.

Requests on a keep-alive connection are answered in order (pipelining): the next request
is not read until the previous answer has left. Each request takes the worker's current
Router when its head arrives and keeps it to the end (routes, Module settings, the
Server header): a keep-alive client sees a new table on its next request.

Whose fault: ClientError -> 4xx and close; upstream trouble -> 502/503/504; once a
response has started, any failure closes the connection (there is no way left to report
it); our own bugs -> 500 (DESIGN.md §5).

Bodies stream both ways with backpressure: while the upstream has unsent request bytes
the client is not read, and while the client has unsent response bytes the upstream is
not read. One deadline per connection serves every timeout, since each one ends the
connection; `phase` says what to answer when it fires.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time

from edge.ratelimit import responses as ratelimit_responses
from edge.worker.proto.h1 import (
    Body,
    ClientError,
    End,
    Request,
    Response,
    RequestParser,
    UpstreamError,
    chunk,
    last_chunk,
    simple_response,
)
from edge.worker.heads import request_head, response_head
from edge.worker.plan import LocalReply, Plan, plan
from edge.worker.reactor import HUP_EVENTS, READ_EVENTS, WRITE_EVENTS, Handler, flush_kept, send_or_keep
from edge.worker.state import READ_SIZE, WorkerState
from edge.worker.upstream import UpstreamConn

log = logging.getLogger("edge.worker")

# What the connection is waiting for when its deadline passes
IDLE = 0  # the next request: close quietly
HEAD = 1  # the rest of a request head: 408
CONNECT = 2  # the upstream's accept (connect_timeout_ms): 504
EXCHANGE = 3  # the upstream's answer (timeout_ms, idle_timeout_ms): 504

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"


class ClientConnection(Handler):
    scheme = b"http"  # X-Forwarded-Proto, when the client's is not trusted

    __slots__ = (
        "state", "reactor", "sock", "fd", "peer", "port", "parser", "router", "phase",
        "readable", "hup", "out", "closing", "busy",
        # the request being answered
        "req", "plan", "endpoint", "head", "attempts", "up", "head_sent", "request_sent",
        "response_started", "request_deadline", "idle_s", "sent_at", "to_chunked", "close_client",
        "keep_upstream", "extra_response",
    )

    def __init__(self, state: WorkerState, sock: socket.socket, peer: str, port: int):
        super().__init__()
        self.state = state
        self.reactor = state.reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.port = port
        self.router = state.router
        self.parser = RequestParser(self.router.max_head)
        self.readable = False
        self.hup = False  # the client closed its side: read until EOF
        self.out: list | None = None  # response bytes the kernel did not take yet
        self.closing = False  # close once `out` is sent
        self.busy = False  # inside _resume: triggers only mark work for its loop
        self.req: Request | None = None
        self.up: UpstreamConn | None = None
        self.response_started = False
        self.plan: Plan | None = None  # the last request's; its rate limits may serve the next one
        state.connections.add(self)
        self._wait_request()
        self.reactor.register(self.fd, self)

    # ---- reactor callbacks ---------------------------------------------------------------

    def on_event(self, mask: int) -> None:
        if mask & WRITE_EVENTS and self.out:
            self._flush()
            if self.closed:
                return
        if mask & READ_EVENTS:
            self.readable = True
            if mask & HUP_EVENTS:
                self.hup = True
            self._resume()

    def on_upstream_event(self, up: UpstreamConn, mask: int) -> None:
        if up is not self.up:
            return  # an event from before this connection took it
        if not up.connected:
            if not mask & WRITE_EVENTS:
                return
            err = up.connect_error()
            if err:
                self._upstream_failed(502, f"upstream connect error: {os.strerror(err)}", retryable=False)
                return
            up.connected = True
            self._send_head()
            if self.up is not up:
                return
        if mask & WRITE_EVENTS and up.out:
            try:
                drained = up.flush()
            except OSError as exc:
                self._upstream_failed(502, f"upstream reset: {exc.strerror or exc}", retryable=False)
                return
            if drained:
                self._resume()  # the client's body may flow again
                if self.up is not up:
                    return
        if mask & READ_EVENTS:
            up.readable = True
            if mask & HUP_EVENTS:
                up.hup = True
            if not self.out:
                self._read_upstream()

    def on_timeout(self) -> None:
        state = self.state
        phase = self.phase
        if phase == IDLE:
            self._close()
        elif phase == HEAD:
            if state.draining:
                self._close()
                return
            state.client_errors += 1
            self._local(408, b"request timeout", close=True)
        else:
            state.upstream_errors += 1
            self._drop_upstream()
            if self.response_started:
                self._close()
            elif time.monotonic() >= self.request_deadline:
                self._local(504, b"upstream request timeout", close=True)
            elif phase == CONNECT:
                ep = self.endpoint
                self._local(504, b"upstream connect timeout: connect to %s:%d timed out after %d ms" % (
                    ep.address.encode(), ep.port, self.plan.cluster.connect_timeout_ms), close=True)
            else:
                self._local(504, b"upstream idle timeout", close=True)

    def on_bug(self, exc: Exception) -> None:
        self.state.internal_errors += 1
        log.error("internal error on a connection from %s", self.peer, exc_info=exc)
        if self.closed:
            return
        self._drop_upstream()
        if self.response_started or self.out:
            self._close()
        else:
            self._local(500, b"internal error", close=True)

    def close_if_idle(self, grace: float) -> None:
        """A drain: if waiting for a request that has not begun, wait at most `grace`
        seconds more for it."""
        if self.phase == IDLE and not self.closing:
            self.reactor.set_deadline(self, min(self.deadline, time.monotonic() + grace))

    # ---- reading requests ----------------------------------------------------------------

    def _wait_request(self) -> None:
        """Between requests: take today's table, wait (idle or for the rest of a head).
        While draining, the wait for a next request is the drain's idle grace: the last
        answer did not say `connection: close`, so the client may be sending one."""
        state = self.state
        self.router = router = state.router
        self.parser.max_head = router.max_head
        self.req = None
        self.response_started = False
        if self.parser.in_message:
            self.phase = HEAD
            self.reactor.set_deadline(self, time.monotonic() + self.state.header_timeout)
        else:
            self.phase = IDLE
            idle = min(state.idle_timeout, state.drain_idle_grace) if state.draining else state.idle_timeout
            self.reactor.set_deadline(self, time.monotonic() + idle)

    def _wants_read(self) -> bool:
        if self.closing or self.closed or self.parser.events:
            return False
        if self.req is None:
            return not self.out  # the previous answers leave before the next request is read
        up = self.up  # a request body flows while the upstream takes it
        return self.head_sent and not self.request_sent and up is not None and not up.out

    def _resume(self) -> None:
        """Handle what the parser holds, then read while the connection wants to."""
        if self.busy:
            return  # the loop below is already running further up the stack
        self.busy = True
        try:
            if self.parser.events:
                self._process()
            state = self.state
            sock = self.sock
            while self.readable and self._wants_read():
                try:
                    n = sock.recv_into(state.read_buf)
                except BlockingIOError:
                    self.readable = False
                    break
                except OSError:
                    self._close()
                    break
                if n == 0:  # only read between requests or inside a body: either way, done
                    self.readable = False
                    self._close()
                    break
                if n < READ_SIZE and not self.hup:
                    self.readable = False  # edge-triggered: new bytes bring a new event
                try:
                    self.parser.feed(state.read_buf, n)
                except ClientError as exc:
                    self._client_error(exc)
                    break
                if self.phase == IDLE and self.parser.in_message and self.req is None:
                    self.phase = HEAD
                    self.reactor.set_deadline(self, time.monotonic() + state.header_timeout)
                self._process()
        finally:
            self.busy = False

    def _process(self) -> None:
        """Start the next request, or forward the current request's body."""
        events = self.parser.events
        while events and not self.closed and not self.closing:
            if self.req is None:
                if self.out:
                    return
                event = events.popleft()
                if type(event) is not Request:  # the parser only emits a head first
                    raise AssertionError(f"expected a request head, got {event!r}")
                if not event.has_body:
                    # llhttp completes a bodiless message in the same feed as its head
                    end = events.popleft()
                    if type(end) is not End:
                        raise AssertionError(f"expected the end of a bodiless request, got {end!r}")
                self._start(event)
                continue
            up = self.up
            if not self.head_sent or self.request_sent or up is None or up.out:
                return
            event = events.popleft()
            chunked = self.req.chunked
            if type(event) is Body:
                data = chunk(event.data) if chunked else event.data
            elif type(event) is End:
                data = last_chunk(event.trailers) if chunked else b""
                self.request_sent = True
            else:
                raise AssertionError(f"request event out of order: {event!r}")
            if data:
                try:
                    up.send(data)
                except OSError as exc:
                    self._upstream_failed(502, f"upstream reset: {exc.strerror or exc}", retryable=False)

    def _client_error(self, exc: ClientError) -> None:
        self.state.client_errors += 1
        self._drop_upstream()
        if self.response_started:
            self._close()
        else:
            self._local(exc.status, exc.reason.encode(), close=True)

    # ---- one request ---------------------------------------------------------------------

    def _start(self, req: Request) -> None:
        state = self.state
        state.requests += 1
        self.router = router = state.router  # the request's table, kept until its response ends
        self.req = req
        decided = plan(router, self.port, self.peer, req, self.plan, scheme=self.scheme)
        if type(decided) is LocalReply:
            if decided.close and decided.status < 500:
                state.client_errors += 1  # a malformed request
            self._local(decided.status, decided.body, decided.close or not req.keep_alive or req.has_body,
                        decided.extra, decided.content_type)
            return
        self.plan = decided
        self.head = request_head(
            req.method, decided.path, decided.query, req.headers, connection=req.connection, client_ip=self.peer,
            xfp=self.scheme, trust_xff=decided.trust_xff, original_path=decided.original_path,
            rules=decided.target.headers, suppress_envoy=router.settings.suppress_envoy_headers,
            chunked=req.chunked, content_length=req.content_length)
        self.extra_response = b""
        limits = decided.limits
        if limits and state.limits is not None:
            limiter = state.limits
            if not limiter.synchronous:
                limiter.decide(limits, self._limits_decided)  # answers when Redis has
                return
            refusal, inject = limiter.check(limits)  # shared memory: now
            if refusal is not None or inject:
                self._limits_decided(refusal, inject)
                return
        self._go()

    def _go(self) -> None:
        t = self.plan.target.target
        self.request_deadline = time.monotonic() + t.timeout_ms / 1000 if t.timeout_ms else math.inf
        self.idle_s = t.idle_timeout_ms / 1000
        self.attempts = 2
        self._attempt()

    def _limits_decided(self, refusal, inject) -> None:
        """The rate limiter's answer: 429, or on to the upstream. The fleet store calls
        this from its own handler: our bugs must still land on this connection."""
        if self.closed or self.req is None:
            return
        try:
            if refusal is not None:
                self.state.ratelimited += 1
                extra, body, content_type = ratelimit_responses.refusal(refusal.rule, refusal.decision)
                self._local(429, body, not self.req.keep_alive or self.req.has_body, extra, content_type)
                return
            if inject:
                self.extra_response = ratelimit_responses.injected(inject)
            self._go()
        except Exception as exc:  # noqa: BLE001 (reported as our bug: 500 and a counter)
            self.on_bug(exc)

    def _attempt(self) -> None:
        """Send the request to an endpoint of the target's cluster (again, after a stale
        pooled connection failed)."""
        state = self.state
        self.attempts -= 1
        self.head_sent = self.request_sent = False
        cluster = self.plan.cluster
        self.endpoint = endpoint = state.pool.pick(cluster)
        if endpoint is None:
            state.upstream_errors += 1
            self._local(503, b"no healthy upstream", close=not self.req.keep_alive or self.req.has_body)
            return
        try:
            up = state.pool.acquire(endpoint, self)
        except OSError as exc:
            self._upstream_failed(502, f"upstream connect error: {exc.strerror or exc}", retryable=False)
            return
        self.up = up
        if up.connected:
            self._send_head()
        else:
            self.phase = CONNECT
            connect_deadline = time.monotonic() + cluster.connect_timeout_ms / 1000
            self.reactor.set_deadline(self, min(self.request_deadline, connect_deadline))

    def _exchange_deadline(self, now: float) -> None:
        idle = self.idle_s
        self.reactor.set_deadline(self, min(self.request_deadline, now + idle) if idle else self.request_deadline)

    def _send_head(self) -> None:
        up = self.up
        req = self.req
        self.phase = EXCHANGE
        self.sent_at = now = time.monotonic()
        self._exchange_deadline(now)
        if req.method == b"HEAD":
            up.parser.expect_no_body()
        try:
            up.send(self.head)
        except OSError as exc:
            self._upstream_failed(502, f"upstream reset: {exc.strerror or exc}",
                                  retryable=up.reused and not req.has_body)
            return
        self.head_sent = True
        if not req.has_body:
            self.request_sent = True
            return
        if req.expect_continue:
            self._write(CONTINUE)
        self._resume()

    def _drop_upstream(self) -> None:
        if self.up is not None:
            self.up.close()
            self.up = None

    def _upstream_failed(self, status: int, message: str, retryable: bool) -> None:
        self._drop_upstream()
        if retryable and self.attempts > 0 and not self.response_started:
            self._attempt()
            return
        self.state.upstream_errors += 1
        if self.response_started:
            self._close()
        else:
            self._local(status, message.encode(), close=True)

    # ---- the response --------------------------------------------------------------------

    def _read_upstream(self) -> None:
        """Read and relay what the upstream sent, until it has nothing more or the
        client stops taking it."""
        up = self.up
        state = self.state
        parser = up.parser
        events = parser.events
        while up.readable and not self.out:
            try:
                n = up.sock.recv_into(state.read_buf)
            except BlockingIOError:
                up.readable = False
                return
            except OSError as exc:
                self._upstream_gone(f"upstream reset before response: {exc}")
                return
            try:
                if n == 0:
                    up.readable = False
                    parser.feed_eof()
                    if not events:
                        self._upstream_gone("upstream closed the connection before responding")
                        return
                else:
                    if n < READ_SIZE and not up.hup:
                        up.readable = False  # edge-triggered: new bytes bring a new event
                    parser.feed(state.read_buf, n)
            except UpstreamError as exc:
                self._upstream_gone(f"upstream reset before response: {exc}")
                return
            if self.idle_s:
                self._exchange_deadline(time.monotonic())
            if self._relay(events):
                return

    def _upstream_gone(self, message: str) -> None:
        fresh = not self.response_started and not self.up.parser.in_message
        self._upstream_failed(502, message, retryable=fresh and self.up.reused and not self.req.has_body)

    def _relay(self, events) -> bool:
        """Write the parsed response events to the client; True once the response ended."""
        parts = []
        while events:
            event = events.popleft()
            kind = type(event)
            if kind is Body:
                parts.append(chunk(event.data) if self.to_chunked else event.data)
            elif kind is End:
                if self.to_chunked:
                    parts.append(last_chunk(event.trailers))
                self._write(parts[0] if len(parts) == 1 else b"".join(parts))
                self._end_exchange()
                return True
            elif kind is Response:
                if event.informational:
                    continue  # we answered Expect ourselves; other 1xx are not relayed
                parts.append(self._response_head(event))
        if parts:
            self._write(parts[0] if len(parts) == 1 else b"".join(parts))
        return False

    def _response_head(self, resp: Response) -> bytes:
        req = self.req
        rules = self.plan.target.headers
        framing, self.to_chunked, close_delimited = _framing(req, resp)
        self.close_client = (not req.keep_alive or close_delimited or self.state.draining
                             or not self.request_sent)  # an unread body poisons the stream
        self.keep_upstream = resp.keep_alive
        service_ms = int((time.monotonic() - self.sent_at) * 1000) if rules.service_time else None
        self.response_started = True
        return response_head(resp.status, resp.reason, resp.headers, connection=resp.connection,
                             rules=rules, server=self.router.server, service_time_ms=service_ms,
                             framing=framing, close=self.close_client, extra=self.extra_response)

    def _end_exchange(self) -> None:
        up = self.up
        self.up = None
        parser = up.parser
        if self.keep_upstream and self.request_sent and not parser.close_delimited and not parser.in_message:
            self.state.pool.release(up)
        else:
            up.close()
        if self.close_client:
            self.req = None
            self.closing = True
            if not self.out:
                self._close()
            return
        self._wait_request()
        if self.parser.events or self.readable:
            self._resume()  # a pipelined request waits in the parser, or unread bytes in the socket

    # ---- writing to the client -------------------------------------------------------------

    def _local(self, status: int, body: bytes, close: bool, extra: bytes = b"",
               content_type: bytes = b"text/plain") -> None:
        """Answer the current request ourselves (`extra`: header lines)."""
        close = close or self.state.draining
        self._write(simple_response(status, body, self.router.server, close, extra, content_type))
        if close:
            self.req = None
            self.closing = True
            if not self.out:
                self._close()
        else:
            self._wait_request()

    def _write(self, data) -> None:
        if self.closed:
            return
        try:
            self.out = send_or_keep(self.sock, self.out, data)
        except OSError:
            self._close()

    def _flush(self) -> None:
        try:
            self.out = flush_kept(self.sock, self.out)
        except OSError:
            self._close()
            return
        if self.out:
            return
        if self.closing:
            self._close()
            return
        up = self.up
        if up is not None and up.readable:
            self._read_upstream()  # the response may flow again
        else:
            self._resume()  # pipelined requests wait until their predecessors' answers left

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._drop_upstream()
        self.reactor.unregister(self.fd)
        self.reactor.forget(self)
        self.sock.close()
        self.state.connections.discard(self)


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


class TLSConnection(ClientConnection):
    """An HTTP/1 connection over TLS (`sock` is an edge.worker.tls.TLSTransport)."""

    scheme = b"https"
    __slots__ = ()

    def on_event(self, mask: int) -> None:
        # the handshake's flight is the one write with nothing of ours kept behind it
        if mask & WRITE_EVENTS and not self.out and self.sock.pending_output:
            try:
                self.sock.flush()
            except OSError:
                self._close()
                return
        super().on_event(mask)
