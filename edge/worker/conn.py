"""One HTTP/1 client connection as a reactor handler: read requests, plan, proxy, stream back.

The upstream half of each request is the Exchange it inherits (edge.worker.exchange);
this module holds HTTP/1 I/O and framing on the client side.

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
import random
import socket
import time

from edge.worker.proto.h1 import (
    Body,
    ClientError,
    End,
    PriorKnowledge,
    Request,
    Response,
    RequestParser,
    chunk,
    last_chunk,
    simple_response,
)
from edge.worker import grpcstatus
from edge.worker.exchange import HEAD, IDLE, Exchange
from edge.worker.h2conn import H2Connection
from edge.worker.heads import response_head
from edge.worker.plan import Plan, plan
from edge.worker.reactor import HUP_EVENTS, READ_EVENTS, WRITE_EVENTS, flush_kept, send_or_keep
from edge.worker.state import READ_SIZE, WorkerState
from edge.worker.tls import client_cert_of
from edge.worker.upstream import UpstreamConn

log = logging.getLogger("edge.worker")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"


class ClientConnection(Exchange):
    scheme = b"http"  # X-Forwarded-Proto, when the client's is not trusted

    __slots__ = ("sock", "fd", "port", "parser", "readable", "hup", "closing", "busy",
                 # the response being relayed
                 "to_chunked", "close_client")

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

    def on_timeout(self) -> None:
        phase = self.phase
        if phase == IDLE:
            self._close()
        elif phase == HEAD:
            if self.state.draining:
                self._close()
                return
            self.state.client_errors += 1
            self._local(408, b"request timeout", close=True)
        else:
            self._exchange_timeout()

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
                except PriorKnowledge as exc:
                    self._to_http2(exc, n)
                    break
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
            try:
                if type(event) is Body:
                    up.send_body(event.data)
                elif type(event) is End:
                    self.request_sent = True
                    up.end_body(event.trailers)
                else:
                    raise AssertionError(f"request event out of order: {event!r}")
            except OSError as exc:
                self._upstream_failed(502, f"upstream reset: {exc.strerror or exc}", retryable=False)

    def client_cert(self) -> tuple:
        """(xfcc.ClientCert or None, our certificate's URI SAN): a cleartext connection has none."""
        return None, ""

    def _to_http2(self, exc: PriorKnowledge, n: int) -> None:
        """The client speaks HTTP/2 (h2c with prior knowledge, or h2 chosen by ALPN): an
        H2Connection takes the socket, and the bytes read so far, from here."""
        state = self.state
        data = bytes(memoryview(state.read_buf)[:n])
        if self.req is not None or self.out or not data.startswith(PREFACE):
            self._client_error(exc)  # not at the start of the stream we read
            return
        self.closed = True  # handed over: the socket stays open
        self.reactor.unregister(self.fd)
        self.reactor.forget(self)
        state.connections.discard(self)
        H2Connection(state, self.sock, self.peer, self.port, self.scheme, data)

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
        self._planned(plan(router, self.port, self.peer, req, self.plan, random.random, self.scheme, self.client_cert),
                      self.scheme)

    # ---- the response --------------------------------------------------------------------

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
        self._release_upstream()
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
        grpc = grpcstatus.content_type_of(self.req.headers) if self.req is not None else None
        if grpc is not None:  # a gRPC(-Web) client reads grpc-status: a trailers-only answer, as Envoy's
            fields = grpcstatus.local_reply(status, body, grpc)
            extra += b"".join(b"%b: %b\r\n" % pair for pair in fields[1:])
            status, body, content_type = 200, b"", fields[0][1]
        self._write(simple_response(status, body, self.router.server, close, extra, content_type))
        if close:
            self.req = None
            self.closing = True
            if not self.out:
                self._close()
        else:
            self._wait_request()

    def _continue(self) -> None:
        self._write(CONTINUE)

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

    _abort = _close  # a response that cannot be finished ends the connection


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
    __slots__ = ("cert",)

    def __init__(self, state: WorkerState, sock, peer: str, port: int):
        self.cert = None
        super().__init__(state, sock, peer, port)

    def client_cert(self) -> tuple:
        """The client's certificate as XFCC tells it, read once per connection."""
        if self.cert is None:
            self.cert = client_cert_of(self.sock, self.state.router)
        return self.cert

    def on_event(self, mask: int) -> None:
        # the handshake's flight is the one write with nothing of ours kept behind it
        if mask & WRITE_EVENTS and not self.out and self.sock.pending_output:
            try:
                self.sock.flush()
            except OSError:
                self._close()
                return
        super().on_event(mask)
