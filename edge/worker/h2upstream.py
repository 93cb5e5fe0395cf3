"""HTTP/2 to upstreams (a Mapping's `grpc: true`): multiplexed connections, a call per request.

An H2Upstream is one connection to an endpoint (h2c, or h2 over TLS through the table's
Origin, ALPN h2), the reactor handler of its socket, over the sans-IO client codec
(edge.worker.proto.h2codec.H2ClientCodec). Many requests share it: each is an
UpstreamCall, which is what an Exchange (edge.worker.exchange) holds as its `up`. A call
offers the exchange what an HTTP/1 UpstreamConn does (send_head, send_body, end_body,
`out`, `readable`, done, close) and turns the stream's frames into the HTTP/1 parser's own
events (Response, Body, End with trailers), so the client halves (HTTP/1, HTTP/2) relay
an HTTP/2 upstream's answer with the same code as an HTTP/1 upstream's.

The request head is the one request_head() writes for HTTP/1 (one declaration of the
header rules: drops, adds, x-forwarded-*, x-request-id), turned into an HTTP/2 header
block: the Host becomes :authority, connection-specific headers go, `te: trailers` is set
(gRPC servers require it).

Flow control is the backpressure both ways: response bytes are given back to the
upstream's window (`consume`) only once the exchange relayed them to its client, which
happens only while the client takes them (`owner.out` falsy); a call's `out` is truthy
while the codec holds more than HIGH_WATER of its request body, and the exchange waits.

Whose fault: a connection or TLS failure of the upstream fails every call on it with
502/503 (as the HTTP/1 path does); a stream the upstream resets fails that call alone
(REFUSED_STREAM, which the upstream never processed, is retried once on a fresh stream
when the request has no body); a protocol error of the upstream closes the connection
and fails its calls.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections import deque

from edge.model import Endpoint
from edge.worker import grpcstatus, grpcweb
from edge.worker.proto.messages import CONNECTION_SPECIFIC, END, Body, End, Response
from edge.worker.proto.h2codec import (
    Data,
    Drained,
    GoAwayReceived,
    H2ClientCodec,
    H2Error,
    ResponseHeaders,
    StreamClosed,
    StreamRefused,
    StreamReset,
    Trailers,
)
from edge.worker.reactor import HUP_EVENTS, READ_EVENTS, WRITE_EVENTS, Handler, Reactor, flush_kept, send_or_keep
from edge.worker.tls import Origin, TLSTransport
from edge.worker.upstream import IDLE_TTL, connect

log = logging.getLogger("edge.worker")

MAX_STREAMS = 100  # calls per connection at most, whatever the upstream allows
WINDOW = 1 << 20  # each stream's receive window: a response may be this far ahead of its client
HIGH_WATER = 65536  # request body bytes a call may have queued in the codec before its client waits
NO_ERROR = 0
REFUSED_STREAM = 7
CANCEL = 8


class UpstreamCall:
    """One request on an H2Upstream, the Exchange's `up`; `owner` is that Exchange."""

    __slots__ = ("conn", "owner", "sid", "events", "connected", "out", "readable", "unconsumed",
                 "started", "request_done", "ended", "web")

    multiplexed = True  # its connection reads the socket, and hands the events over (deliver)
    reused = False  # never worth a retry on the grounds of a stale connection
    tcp_connected = False  # the connection does its own connect and handshake

    def __init__(self, conn: H2Upstream, owner):
        self.conn = conn
        self.owner = owner
        self.sid = -1  # the stream, once send_head opened it
        self.events: deque = deque()  # response events not yet relayed
        self.connected = False  # the connection is ready: the exchange may send the head
        self.out = None  # truthy while the codec holds more than HIGH_WATER of the request body
        self.readable = False  # events wait for the client to take them
        self.unconsumed = 0  # response body bytes received and not yet given back to the window
        self.started = False  # the response head came
        self.request_done = False  # END_STREAM sent
        self.ended = False  # the response ended, or the stream was reset
        self.web = None  # a gRPC-Web translation, when the request is one

    # ---- the exchange's side ---------------------------------------------------------------

    def send_head(self, head: bytes, req) -> None:
        """Open the stream with `head` (request_head's HTTP/1 bytes) for `req`. Raises
        OSError when the connection can open no stream (it got a GOAWAY meanwhile)."""
        conn = self.conn
        end = not req.has_body
        headers = request_headers(head, conn.scheme)
        if self.owner.router.settings.grpc_web:
            content_type = grpcstatus.content_type_of(req.headers)
            if content_type is not None and grpcweb.is_grpc_web(content_type):
                self.web = web = grpcweb.GrpcWebCall(content_type)
                headers[4:] = web.request_headers(headers[4:])
        try:
            self.sid = sid = conn.codec.request(headers, end)
        except StreamRefused as exc:
            raise OSError(f"the upstream's connection takes no new stream: {exc}") from None
        self.request_done = end
        conn.calls[sid] = self
        conn.pump()

    def send_body(self, data: bytes) -> None:
        """Raises OSError for a gRPC-Web body that is not base64 (-text)."""
        conn = self.conn
        if self.web is not None:
            data = self._web_request(self.web.request_data, data)
        conn.codec.send_data(self.sid, data)
        if conn.codec.buffered(self.sid) > HIGH_WATER:
            self.out = True  # the stream's window is shut: the client waits for Drained
        conn.pump()

    def end_body(self, trailers: list) -> None:
        if self.web is not None:
            self._web_request(self.web.request_end)
        self.request_done = True
        self.conn.codec.end_stream(self.sid, trailers or None)
        self.conn.pump()

    def _web_request(self, method, *args) -> bytes:
        try:
            return method(*args)
        except grpcweb.GrpcWebError as exc:
            # the client's fault, seen only once the head went: the stream ends as a reset would
            raise OSError(f"the gRPC-Web request body is invalid: {exc}") from None

    def deliver(self) -> None:
        """Relay the waiting response events to the owner, and give their bytes back to
        the upstream's window."""
        owner = self.owner
        conn = self.conn
        self.readable = False
        if self.unconsumed:
            conn.codec.consume(self.sid, self.unconsumed)
            self.unconsumed = 0
        if owner.idle_s:
            owner._exchange_deadline(time.monotonic())
        owner._relay(self.events)  # True: the owner called done()
        conn.pump()

    def done(self, keep: bool) -> None:
        """The exchange ended (its response was relayed whole). A request still being
        sent is cut short, as Envoy does when the upstream answered early."""
        if not self.request_done and not self.ended:
            self.conn.codec.reset(self.sid, NO_ERROR)
        self.ended = True
        self._detach()

    def close(self) -> None:
        """The exchange gave up (timeout, client gone): the stream is cancelled."""
        if self.owner is None:
            return
        if self.sid > 0 and not self.ended:
            self.conn.codec.reset(self.sid, CANCEL)
        self.ended = True
        self._detach()

    def _detach(self) -> None:
        conn = self.conn
        self.owner = None
        self.events.clear()
        if self.sid < 0 and self in conn.waiting:
            conn.waiting.remove(self)
        conn.call_ended()

    # ---- from the connection -----------------------------------------------------------

    def on_headers(self, headers: list, end: bool) -> None:
        regular = []
        status = 0
        length = None
        for pair in headers:
            name = pair[0]
            if name == b":status":
                status = int(pair[1])
            elif name[:1] != b":":
                if name == b"content-length":
                    length = int(pair[1])
                regular.append(pair)
        self.started = True
        trailers = []
        if self.web is not None:
            if end:  # trailers-only: gRPC-Web carries grpc-status in the body's trailer frame
                regular, trailers = grpcweb.split_trailers_only(regular)
            regular, length = self.web.response_headers(regular), None
        self.events.append(Response(status, b"", "2", regular, True, False, length, frozenset(), False))
        if end:
            self._end(trailers)

    def on_data(self, data: bytes, end: bool) -> None:
        self.unconsumed += len(data)
        if self.web is not None:
            data = self.web.response_data(data)
        if data:
            self.events.append(Body(data))
        if end:
            self._end([])

    def _end(self, trailers: list) -> None:
        self.ended = True
        if self.web is not None:
            tail = self.web.response_trailers(trailers)
            if tail:
                self.events.append(Body(tail))
            self.events.append(END)
        else:
            self.events.append(End(trailers) if trailers else END)

    def on_trailers(self, headers: list) -> None:
        self._end(headers)

    def on_reset(self, code: int) -> None:
        """The upstream reset the stream (or it closed without an end)."""
        owner = self.owner
        self.ended = True
        self._detach()
        owner._upstream_failed(502, f"upstream reset: stream reset, HTTP/2 error code {code}",
                               retryable=code == REFUSED_STREAM and not self.started and not owner.req.has_body)

    def on_drained(self) -> None:
        if self.out:
            self.out = None
            self.owner._resume()


class H2Upstream(Handler):
    """One HTTP/2 connection to an endpoint, shared by its calls."""

    __slots__ = ("pool", "key", "raw", "tls", "sock", "fd", "scheme", "codec", "calls", "waiting", "connected",
                 "tcp_connected", "out", "readable", "hup", "closing", "busy", "idle_since")

    def __init__(self, sock: socket.socket, key: tuple, pool: H2Pool, connected: bool, origin: Origin | None):
        super().__init__()
        self.pool = pool
        self.key = key
        self.raw = sock
        self.fd = sock.fileno()
        self.tls = None if origin is None else TLSTransport(sock, origin.ctx, server_side=False,
                                                             server_hostname=origin.sni)
        self.sock = sock if origin is None else self.tls
        self.scheme = b"http" if origin is None else b"https"
        self.codec = H2ClientCodec(initial_window_size=WINDOW, max_header_list_size=pool.max_head)
        self.calls: dict[int, UpstreamCall] = {}  # open streams
        self.waiting: list[UpstreamCall] = []  # calls made before the connection was ready
        self.tcp_connected = connected
        self.connected = connected and origin is None
        self.out: list | None = None  # bytes the kernel did not take yet
        self.readable = False
        self.hup = False
        self.closing = False  # a GOAWAY came, or a failure: no new calls; closed once idle
        self.busy = False
        self.idle_since = time.monotonic()

    def open(self, owner) -> UpstreamCall:
        call = UpstreamCall(self, owner)
        if self.connected:
            call.connected = True
        else:
            self.waiting.append(call)
        return call

    def available(self) -> bool:
        """Whether a new call may go on this connection."""
        if self.closing or self.closed:
            return False
        load = len(self.calls) + len(self.waiting)
        return load < min(MAX_STREAMS, self.codec.remote_max_concurrent_streams()) if self.connected \
            else load < MAX_STREAMS

    def call_ended(self) -> None:
        if not self.calls and not self.waiting:
            self.idle_since = time.monotonic()
            if self.closing or not self.tcp_connected:
                self.close()  # nobody waits for a connect that may never end
        self.pump()

    # ---- reactor callbacks -------------------------------------------------------------

    def on_event(self, mask: int) -> None:
        if not self.connected:
            if not self.tcp_connected:
                if not mask & WRITE_EVENTS:
                    return
                err = self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._fail(502, f"upstream connect error: {os.strerror(err)}")
                    return
                self.tcp_connected = True
                self.connected = self.tls is None
            if not self.connected:
                try:
                    if not self.tls.do_handshake():
                        return
                except (ssl.SSLError, OSError) as exc:
                    reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or type(exc).__name__
                    self._fail(503, "upstream connect error or disconnect/reset before headers. reset reason: "
                               f"connection failure, transport failure reason: TLS error: {reason}")
                    return
                self.connected = True
            self._ready()
        if mask & WRITE_EVENTS and self.out:
            try:
                self.out = flush_kept(self.sock, self.out)
            except OSError as exc:
                self._fail(502, f"upstream reset: {exc.strerror or exc}")
                return
        if mask & READ_EVENTS:
            self.readable = True
            if mask & HUP_EVENTS:
                self.hup = True
            self._read()
        self.pump()

    def on_timeout(self) -> None:
        pass  # each call's exchange keeps its own deadlines

    def on_bug(self, exc: Exception) -> None:
        log.error("internal error on an HTTP/2 upstream connection", exc_info=exc)
        self._fail(502, "upstream connection failed (internal error)")

    # ---- input -------------------------------------------------------------------------

    def _ready(self) -> None:
        waiting, self.waiting = self.waiting, []
        for call in waiting:
            owner = call.owner
            if owner is not None:
                call.connected = True
                _to_owner(owner, owner._send_head)

    def _read(self) -> None:
        buf = self.pool.read_buf
        while self.readable and not self.closed:
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                self.readable = False
                break
            except OSError as exc:
                self._fail(502, f"upstream reset: {exc.strerror or exc}")
                return
            if n == 0:
                self._fail(502, "upstream closed the connection")
                return
            if n < len(buf) and not self.hup:
                self.readable = False
            try:
                self.codec.feed(buf, n)
            except H2Error as exc:
                log.info("HTTP/2 upstream %s:%d closed: %s", self.key[0], self.key[1], exc.reason)
                self._dispatch()
                self._fail(502, f"upstream protocol error: {exc.reason}")
                return
            self._dispatch()

    def _dispatch(self) -> None:
        events = self.codec.events
        calls = self.calls
        while events:
            event = events.popleft()
            kind = type(event)
            if kind is GoAwayReceived:
                self.closing = True
                continue
            if kind is StreamClosed:
                call = calls.pop(event.stream_id, None)
                if call is not None and not call.ended and call.owner is not None:
                    _to_owner(call.owner, call.on_reset, event.error_code)
                continue
            call = calls.get(event.stream_id)
            if call is None or call.owner is None:
                continue
            owner = call.owner
            if kind is Data:
                _to_owner(owner, call.on_data, event.data, event.end_stream)
            elif kind is ResponseHeaders:
                _to_owner(owner, call.on_headers, event.headers, event.end_stream)
            elif kind is Trailers:
                _to_owner(owner, call.on_trailers, event.headers)
            elif kind is Drained:
                _to_owner(owner, call.on_drained)
                continue
            elif kind is StreamReset:
                _to_owner(owner, call.on_reset, event.error_code)
                continue
            if call.events and not owner.out and call.owner is owner:
                call.readable = True
                _to_owner(owner, owner._read_upstream)
            elif call.events:
                call.readable = True  # the client is slow: relayed when it drains

    # ---- output ------------------------------------------------------------------------

    def pump(self) -> None:
        """Write what the codec has to send while the socket takes it."""
        if self.busy or self.closed or not self.connected:
            return
        self.busy = True
        try:
            codec = self.codec
            while not self.out:
                data = codec.data_to_send()
                if codec.events:
                    self._dispatch()  # Drained calls
                if not data:
                    break
                try:
                    self.out = send_or_keep(self.sock, self.out, data)
                except OSError as exc:
                    self.busy = False
                    self._fail(502, f"upstream reset: {exc.strerror or exc}")
                    return
        finally:
            self.busy = False
        if self.closing and not self.calls and not self.waiting and not self.out:
            self.close()

    def _fail(self, status: int, message: str) -> None:
        """The connection is unusable: every call on it fails, then it closes."""
        self.closing = True
        calls = [*self.waiting, *self.calls.values()]
        self.waiting = []
        self.calls = {}
        self.close()
        for call in calls:
            owner = call.owner
            if owner is not None and not call.ended:
                call.ended = True
                call.owner = None
                _to_owner(owner, owner._upstream_failed, status, message, False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            self.pool.reactor.unregister(self.fd)
            self.sock.close()


def _to_owner(owner, method, *args) -> None:
    """Call into an exchange from the connection's handler: its bugs are its own (a 500 on
    that request), and what it wrote goes out (an HTTP/2 client's codec is pumped)."""
    try:
        method(*args)
    except Exception as exc:  # noqa: BLE001 (the owner reports it)
        owner.on_bug(exc)
    owner._upstream_progress()


def request_headers(head: bytes, scheme: bytes) -> list:
    """An HTTP/1 request head (request_head's bytes) as an HTTP/2 header block."""
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    authority = b""
    regular = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"host":
            authority = value.strip()
        elif name not in CONNECTION_SPECIFIC and name != b"te":
            regular.append((name, value.strip()))
    regular.append((b"te", b"trailers"))
    return [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", target), *regular]


class H2Pool:
    """The worker's HTTP/2 upstream connections, per endpoint (and Origin, for TLS)."""

    def __init__(self, reactor: Reactor, read_buf: bytearray, max_head: int = 65536):
        self.reactor = reactor
        self.read_buf = read_buf
        self.max_head = max_head
        self._conns: dict[tuple, list[H2Upstream]] = {}

    def acquire(self, ep: Endpoint, owner, origin: Origin | None = None) -> UpstreamCall:
        """A call on a connection to `ep` with room for one more stream, or on a new one.
        Raises OSError when a new connection's connect fails at once."""
        key = (ep.address, ep.port) if origin is None else (ep.address, ep.port, origin)
        conns = self._conns.get(key)
        if conns:
            for conn in conns:
                if conn.available():
                    return conn.open(owner)
        sock, connected = connect(ep)
        conn = H2Upstream(sock, key, self, connected, origin)
        self._conns.setdefault(key, []).append(conn)
        self.reactor.register(conn.fd, conn)
        return conn.open(owner)

    def forget(self, conn: H2Upstream) -> None:
        conns = self._conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.key]

    def sweep(self, now: float | None = None) -> int:
        """Close connections without calls for longer than IDLE_TTL; returns how many."""
        now = time.monotonic() if now is None else now
        idle = [c for conns in self._conns.values() for c in conns
                if not c.calls and not c.waiting and now - c.idle_since >= IDLE_TTL]
        for conn in idle:
            conn.close()
        return len(idle)

    def close_all(self) -> None:
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.close()
        self._conns.clear()
