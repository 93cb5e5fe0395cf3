"""The upstream half of answering one request: the HTTP/1 exchange with an endpoint.

`Exchange` holds what every client protocol shares once plan() has chosen a target:
the rate limiter's answer, picking an endpoint, the pooled or new connection, sending the
head and the request body with backpressure, reading and relaying the response, the
retry of a stale pooled connection, and the deadlines of connect, request and idle
timeouts. An HTTP/1 client connection (conn.ClientConnection) and an HTTP/2 stream
(h2conn.H2Stream) are both Exchanges; each supplies the client half:

- `_relay(events) -> bool`: give the parsed response events to the client; True once
  the response ended (and `_release_upstream()` was called);
- `_local(status, body, close, extra=b"", content_type=b"text/plain")`: answer ourselves;
- `_abort()`: the response started and cannot be finished: end the client side;
- `_resume()`: the upstream takes request body bytes again;
- `_continue()`: the client waits for `100 Continue` before sending its body;
- `out`: truthy while the client side has not taken what it was given; the upstream is
  not read meanwhile (backpressure).

One deadline per Exchange serves every upstream timeout; `phase` says which one runs.
Whose fault (DESIGN.md §5): upstream trouble answers 502/503/504.

TLS origination (a cluster with `tls`): the pool connects through the table's Origin,
and the connect phase (and its connect_timeout_ms) lasts until the TLS handshake is done;
a handshake that fails answers 503 as Envoy does ("... transport failure reason: TLS
error: ...").
"""

from __future__ import annotations

import math
import os
import ssl
import time

from edge.ratelimit import responses as ratelimit_responses
from edge.worker import grpcstatus
from edge.worker.heads import request_head
from edge.worker.plan import LocalReply
from edge.worker.proto.h1 import UpstreamError
from edge.worker.reactor import HUP_EVENTS, READ_EVENTS, WRITE_EVENTS, Handler
from edge.worker.state import READ_SIZE
from edge.worker.upstream import UpstreamConn

# What the deadline is waiting for when it passes
IDLE = 0  # the next request: close quietly (a client connection's)
HEAD = 1  # the rest of a request head: 408 (a client connection's)
CONNECT = 2  # the upstream's accept (connect_timeout_ms): 504
EXCHANGE = 3  # the upstream's answer (timeout_ms, idle_timeout_ms): 504


class Exchange(Handler):
    __slots__ = (
        "state", "reactor", "router", "peer", "phase", "out",
        "req", "plan", "endpoint", "head", "attempts", "up", "head_sent", "request_sent",
        "response_started", "request_deadline", "idle_s", "sent_at", "extra_response", "keep_upstream",
    )

    def on_upstream_event(self, up: UpstreamConn, mask: int) -> None:
        if up is not self.up:
            return  # an event from before this exchange took it
        if not up.connected:
            if not up.tcp_connected:
                if not mask & WRITE_EVENTS:
                    return
                err = up.connect_error()
                if err:
                    self._upstream_failed(502, f"upstream connect error: {os.strerror(err)}", retryable=False)
                    return
                up.tcp_connected = True
                if up.tls is None:
                    up.connected = True
            if not up.connected and not self._handshake(up):
                return
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

    def _planned(self, decided, scheme: bytes) -> None:
        """Go on with what plan() decided for `self.req`: a LocalReply is answered here;
        a Plan gets its upstream head, then the rate limiter's answer, then the upstream."""
        state = self.state
        req = self.req
        if type(decided) is LocalReply:
            if decided.close and decided.status < 500:
                state.client_errors += 1  # a malformed request
            self._local(decided.status, decided.body, decided.close or not req.keep_alive or req.has_body,
                        decided.extra, decided.content_type)
            return
        self.plan = decided
        self.head = request_head(
            req.method, decided.path, decided.query, decided.headers, connection=req.connection, client_ip=self.peer,
            xfp=scheme, trust_xff=decided.trust_xff, original_path=decided.original_path,
            rules=decided.target.headers, suppress_envoy=self.router.settings.suppress_envoy_headers,
            chunked=req.chunked, content_length=req.content_length)
        self.extra_response = decided.extra
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
        if self.plan.cluster.http2:
            allowed = grpcstatus.timeout_of(self.req.headers)  # the client's deadline, when tighter
            if allowed is not None:
                self.request_deadline = min(self.request_deadline, time.monotonic() + allowed)
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
                self.extra_response += ratelimit_responses.injected(inject)
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
        origin = None
        if cluster.tls >= 0:
            try:
                origin = self.router.tls.client.origin(self.router.table, cluster.tls)
            except ssl.SSLError as exc:
                self._tls_failed(exc)
                return
        try:
            up = (state.h2pool if cluster.http2 else state.pool).acquire(endpoint, self, origin)
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
            if up.tcp_connected and self._handshake(up):  # connected at once: the ClientHello goes now
                self._send_head()

    def _handshake(self, up: UpstreamConn) -> bool:
        """Drive the TLS handshake with the upstream; True once done (the caller sends the
        head). A failure is the upstream's: 503, counted, as Envoy answers it."""
        try:
            return up.handshake()
        except (ssl.SSLError, OSError) as exc:
            self._tls_failed(exc)
            return False

    def _tls_failed(self, exc: OSError) -> None:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or type(exc).__name__
        self._upstream_failed(503, "upstream connect error or disconnect/reset before headers. reset reason: "
                              f"connection failure, transport failure reason: TLS error: {reason}", retryable=False)

    def _exchange_deadline(self, now: float) -> None:
        idle = self.idle_s
        self.reactor.set_deadline(self, min(self.request_deadline, now + idle) if idle else self.request_deadline)

    def _send_head(self) -> None:
        up = self.up
        req = self.req
        self.phase = EXCHANGE
        self.sent_at = now = time.monotonic()
        self._exchange_deadline(now)
        try:
            up.send_head(self.head, req)
        except OSError as exc:
            self._upstream_failed(502, f"upstream reset: {exc.strerror or exc}",
                                  retryable=up.reused and not req.has_body)
            return
        self.head_sent = True
        if not req.has_body:
            self.request_sent = True
            return
        if req.expect_continue:
            self._continue()
        self._resume()

    def _upstream_progress(self) -> None:
        """An HTTP/2 upstream's connection called into this exchange: what it wrote to the
        client goes out (an HTTP/1 client's writes already went)."""

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
            self._abort()
        else:
            self._local(status, message.encode(), close=True)

    def _exchange_timeout(self) -> None:
        """The connect, request or idle deadline passed."""
        self.state.upstream_errors += 1
        self._drop_upstream()
        if self.response_started:
            self._abort()
        elif time.monotonic() >= self.request_deadline:
            self._local(504, b"upstream request timeout", close=True)
        elif self.phase == CONNECT:
            ep = self.endpoint
            self._local(504, b"upstream connect timeout: connect to %s:%d timed out after %d ms" % (
                ep.address.encode(), ep.port, self.plan.cluster.connect_timeout_ms), close=True)
        else:
            self._local(504, b"upstream idle timeout", close=True)

    def _release_upstream(self) -> None:
        """The response ended: the connection goes back to the pool if it can serve again."""
        up = self.up
        self.up = None
        up.done(self.keep_upstream and self.request_sent)

    def _read_upstream(self) -> None:
        """Read and relay what the upstream sent, until it has nothing more or the
        client stops taking it."""
        up = self.up
        if up.multiplexed:
            up.deliver()  # an HTTP/2 stream: its connection has read the events already
            return
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

