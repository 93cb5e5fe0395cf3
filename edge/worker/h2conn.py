"""One HTTP/2 client connection: the nghttp2 codec's events to streams, and back.

An H2Connection is the reactor handler of the socket (plain, or an edge.worker.tls
TLSTransport); it feeds what it reads to its H2Codec (sans-IO, edge.worker.proto.h2codec)
and writes what the codec has to send, only while the socket takes it, so nghttp2's own
queue is the backpressure towards a slow client. Each request stream is an H2Stream: an
Exchange (edge.worker.exchange) that plans the request with the same plan() as HTTP/1
and proxies it to an HTTP/1 upstream.

Flow control is the backpressure both ways. A stream's request body is acknowledged to
the client (`consume`, so WINDOW_UPDATE) only once the upstream socket took it; a
response body is handed to the codec only while the stream's buffered bytes stay under
HIGH_WATER, and the upstream is read again when the codec says the stream drained.

Whose fault: a connection error of the peer (bad frames, floods) closes the connection
after the codec's GOAWAY and is counted; a stream error is a RST_STREAM of that stream
alone; upstream trouble is a 502/503/504 on the stream, or a reset once its response
started; our bugs are a 500 (or a reset) on that stream, counted.
"""

from __future__ import annotations

import logging
import math
import random
import time

from edge.worker import grpcstatus
from edge.worker.exchange import Exchange
from edge.worker.plan import plan
from edge.worker.proto.h1 import Body, End, Response
from edge.worker.proto.h2codec import (
    Data,
    Drained,
    GoAwayReceived,
    H2Codec,
    H2Error,
    RequestHeaders,
    StreamClosed,
    StreamReset,
    Trailers,
)
from edge.worker.proto.messages import CONNECTION_SPECIFIC, Request
from edge.worker.reactor import HUP_EVENTS, READ_EVENTS, WRITE_EVENTS, Handler, flush_kept, send_or_keep
from edge.worker.state import READ_SIZE, WorkerState
from edge.worker.tls import client_cert_of

log = logging.getLogger("edge.worker")

HIGH_WATER = 65536  # response bytes a stream may have queued in the codec before the upstream waits
NO_ERROR = 0
INTERNAL_ERROR = 2
ENHANCE_YOUR_CALM = 11


class H2Connection(Handler):
    __slots__ = ("state", "reactor", "sock", "fd", "peer", "port", "scheme", "tls", "cert", "codec", "streams",
                 "out", "readable", "hup", "closing", "busy", "paused", "stalled_since")

    def __init__(self, state: WorkerState, sock, peer: str, port: int, scheme: bytes, initial: bytes = b""):
        """`initial`: what was read before the connection was known to be HTTP/2 (the preface)."""
        super().__init__()
        self.state = state
        self.reactor = state.reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.port = port
        self.scheme = scheme
        self.tls = hasattr(sock, "pending_output")  # a TLSTransport: its handshake flight may wait
        self.cert = None if self.tls else (None, "")
        listener = state.router.listeners.get(port)
        self.codec = H2Codec(max_concurrent_streams=listener.http2_max_concurrent_streams if listener else 100,
                             max_header_list_size=state.router.max_head)
        self.streams: dict[int, H2Stream] = {}
        self.out: list | None = None
        self.readable = True  # the handover may leave unread bytes: try a read
        self.hup = False
        self.closing = False  # GOAWAY sent: close once the streams ended and the output left
        self.busy = False
        self.paused = 0  # streams whose upstream waits for the client to take their response
        self.stalled_since: float | None = None  # paused streams, and the client takes nothing
        state.connections.add(self)
        state.h2_connections += 1
        self._idle()
        self.reactor.register(self.fd, self)
        if initial:
            self._feed(initial, len(initial))
        if self.tls:
            self._read()  # what came with the handshake is in the TLS buffers, not the socket's
        if state.draining:
            self.close_if_idle(0)
        self.pump()

    # ---- reactor callbacks -----------------------------------------------------------

    def on_event(self, mask: int) -> None:
        if mask & WRITE_EVENTS and (self.out or self.tls and self.sock.pending_output):
            self._flush()
            if self.closed:
                return
        if mask & READ_EVENTS:
            self.readable = True
            if mask & HUP_EVENTS:
                self.hup = True
            self._read()
        self.pump()

    def on_timeout(self) -> None:
        if self.stalled_since is not None:
            # the client kept its window shut on responses we hold for send_timeout: a
            # zero-window stall, holding upstream connections and buffers
            self.state.h2_connection_errors += 1
            log.info("HTTP/2 connection from %s closed: it took no response bytes for %g s",
                     self.peer, self.state.send_timeout)
            self.codec.goaway(ENHANCE_YOUR_CALM)
            self.closing = True
            self.pump()
            self._close()
            return
        # idle (no stream open) past the idle timeout, or a drain's grace: say goodbye
        self.codec.goaway(NO_ERROR)
        self.closing = True
        self.pump()
        if not self.closed and not self.out:
            self._close()

    def on_bug(self, exc: Exception) -> None:
        self.state.internal_errors += 1
        log.error("internal error on an HTTP/2 connection from %s", self.peer, exc_info=exc)
        self._close()

    def close_if_idle(self, grace: float) -> None:
        """A drain: GOAWAY now (streams already open finish), close when none is left."""
        if not self.closing:
            self.codec.goaway(NO_ERROR)
            self.closing = True
        if not self.streams:
            self.reactor.set_deadline(self, min(self.deadline, time.monotonic() + grace))
        self.pump()

    def client_cert(self) -> tuple:
        """(xfcc.ClientCert or None, our certificate's URI SAN), read once per connection."""
        if self.cert is None:
            self.cert = client_cert_of(self.sock, self.state.router)
        return self.cert

    # ---- input -----------------------------------------------------------------------

    def _read(self) -> None:
        state = self.state
        sock = self.sock
        while self.readable and not self.closed:
            try:
                n = sock.recv_into(state.read_buf)
            except BlockingIOError:
                self.readable = False
                break
            except OSError:
                self._close()
                return
            if n == 0:
                self._close()
                return
            if n < READ_SIZE and not self.hup:
                self.readable = False
            self._feed(state.read_buf, n)

    def _feed(self, data, n: int) -> None:
        codec = self.codec
        try:
            codec.feed(data, n)
        except H2Error as exc:
            self.state.h2_connection_errors += 1
            log.info("HTTP/2 connection from %s closed: %s", self.peer, exc.reason)
            self.closing = True
            self._dispatch()
            self.pump()  # the GOAWAY the codec queued
            if not self.closed:
                self._close()
            return
        self._dispatch()

    def _dispatch(self) -> None:
        events = self.codec.events
        streams = self.streams
        while events:
            event = events.popleft()
            kind = type(event)
            if kind is RequestHeaders:
                stream = H2Stream(self, event.stream_id)
                streams[event.stream_id] = stream
                self.reactor.set_deadline(self, math.inf)
                stream.start(event.headers, event.end_stream)
            elif kind is Data:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.body(event.data, event.end_stream)
            elif kind is Drained:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.drained()
            elif kind is Trailers:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.trailers = event.headers
                    stream.body(b"", True)
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.cancelled()
            elif kind is StreamClosed:
                stream = streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.cancelled()
                if not streams:
                    self._idle()
            elif kind is GoAwayReceived:
                self.closing = True

    # ---- output ----------------------------------------------------------------------

    def pump(self) -> None:
        """Write what the codec has to send while the socket takes it; close when done."""
        if self.closed or self.busy:
            return
        self.busy = True
        try:
            codec = self.codec
            wrote = False
            while not self.out:
                data = codec.data_to_send()
                if codec.events:
                    self._dispatch()  # Drained streams
                if not data:
                    break
                self._write(data)
                wrote = True
                if self.closed:
                    return
            self._watch_stall(wrote)
            if not self.out and not self.closed and (
                    (self.closing and not self.streams) or not (codec.want_read or codec.want_write)):
                self._close()
        finally:
            self.busy = False

    def _watch_stall(self, wrote: bool) -> None:
        """Paused streams while the socket has room and the codec sends nothing: the
        client's windows are shut. send_timeout of that closes the connection."""
        if self.paused and not wrote and not self.out:
            if self.stalled_since is None:
                self.stalled_since = now = time.monotonic()
                self.reactor.set_deadline(self, now + self.state.send_timeout)
        elif self.stalled_since is not None and (wrote or not self.paused):
            self.stalled_since = None
            if self.streams:
                self.reactor.set_deadline(self, math.inf)  # streams open: no idle timer either

    def _write(self, data) -> None:
        try:
            self.out = send_or_keep(self.sock, self.out, data)
        except OSError:
            self._close()

    def _flush(self) -> None:
        try:
            if self.out:
                self.out = flush_kept(self.sock, self.out)
            else:
                self.sock.flush()  # a TLS handshake's flight
        except OSError:
            self._close()

    def _idle(self) -> None:
        state = self.state
        idle = min(state.idle_timeout, state.drain_idle_grace) if state.draining else state.idle_timeout
        self.reactor.set_deadline(self, time.monotonic() + idle)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream.cancelled()
        self.streams.clear()
        self.reactor.unregister(self.fd)
        self.reactor.forget(self)
        self.sock.close()
        self.state.connections.discard(self)


class H2Stream(Exchange):
    """One request stream, proxied to an HTTP/1 upstream."""

    __slots__ = ("conn", "codec", "sid", "pending", "unacked", "client_done", "ended", "trailers")

    def __init__(self, conn: H2Connection, sid: int):
        super().__init__()
        self.conn = conn
        self.codec = conn.codec
        self.sid = sid
        self.peer = conn.peer
        self.state = conn.state
        self.reactor = conn.reactor
        self.router = conn.state.router  # the stream's table, kept until it ends
        self.out = None  # truthy while the codec holds more than HIGH_WATER of our response
        self.req = None
        self.plan = None
        self.up = None
        self.response_started = False
        self.head_sent = self.request_sent = False
        self.pending: list = []  # request body bytes the upstream has not taken yet
        self.unacked = 0  # request body bytes not yet acknowledged to the client
        self.client_done = False  # the client's END_STREAM arrived
        self.ended = False  # our answer ended (or the stream was reset)
        self.trailers: list = []  # the request's, forwarded after its body

    # ---- from the connection --------------------------------------------------------

    def start(self, headers: list, end_stream: bool) -> None:
        state = self.state
        state.requests += 1
        self.client_done = end_stream
        req = _request(headers, end_stream)
        if req is None:
            self._local(400, b"malformed HTTP/2 request", close=True)
            return
        self.req = req
        conn = self.conn
        self._planned(plan(self.router, conn.port, self.peer, req, None, random.random, conn.scheme, conn.client_cert),
                      conn.scheme)

    def body(self, data: bytes, end_stream: bool) -> None:
        """Request body from the client (acknowledged once the upstream took it)."""
        if self.ended:
            if data:
                self.codec.consume(self.sid, len(data))  # answered already: drop, but keep the window open
            return
        if data:
            self.pending.append(data)
            self.unacked += len(data)
        if end_stream:
            self.client_done = True
        self._resume()

    def drained(self) -> None:
        if self.out:
            self.out = None
            self.conn.paused -= 1
        up = self.up
        if up is not None and up.readable:
            self._read_upstream()

    def cancelled(self) -> None:
        """The client reset the stream, or the connection is gone: stop the exchange."""
        if self.closed:
            return
        self.closed = True
        self.ended = True
        if self.out:
            self.out = None
            self.conn.paused -= 1
        self._drop_upstream()
        self.reactor.forget(self)

    # ---- reactor callbacks (the stream's deadlines, its upstream's events) ------------

    def on_timeout(self) -> None:
        if not self.closed:
            self._exchange_timeout()
        self.conn.pump()

    def on_upstream_event(self, up, mask: int) -> None:
        Exchange.on_upstream_event(self, up, mask)
        self.conn.pump()

    def on_bug(self, exc: Exception) -> None:
        self.state.internal_errors += 1
        log.error("internal error on an HTTP/2 stream from %s", self.peer, exc_info=exc)
        if not self.ended:
            self._drop_upstream()
            if self.response_started:
                self._abort()
            else:
                self._local(500, b"internal error", close=True)
        self.conn.pump()

    def _limits_decided(self, refusal, inject) -> None:
        Exchange._limits_decided(self, refusal, inject)
        self.conn.pump()

    def _upstream_progress(self) -> None:
        self.conn.pump()

    # ---- the Exchange's client half ---------------------------------------------------

    def _resume(self) -> None:
        """Hand the upstream what it takes of the request body."""
        up = self.up
        if not self.head_sent or self.request_sent or up is None:
            return
        pending = self.pending
        try:
            while pending and not up.out:
                up.send_body(pending.pop(0))
            if not pending and not up.out and self.unacked:
                self.codec.consume(self.sid, self.unacked)
                self.unacked = 0
            if self.client_done and not pending:
                self.request_sent = True
                up.end_body(self.trailers)
        except OSError as exc:
            self._upstream_failed(502, f"upstream reset: {exc.strerror or exc}", retryable=False)

    def _continue(self) -> None:
        pass  # HTTP/2 requests are never told to wait (Request.expect_continue is False)

    def _relay(self, events) -> bool:
        codec = self.codec
        sid = self.sid
        while events:
            event = events.popleft()
            kind = type(event)
            if kind is Body:
                codec.send_data(sid, event.data)
            elif kind is End:
                codec.end_stream(sid, _trailers(event.trailers))
                return self._relayed()
            elif kind is Response:
                if event.informational:
                    continue
                self.keep_upstream = event.keep_alive
                self.response_started = True
                if events and type(events[0]) is End and not events[0].trailers:
                    # a head alone (gRPC's trailers-only answer, a 204): one HEADERS frame
                    # with END_STREAM, which gRPC clients need to read grpc-status from it
                    events.popleft()
                    codec.respond(sid, self._response_headers(event), end_stream=True)
                    return self._relayed()
                codec.respond(sid, self._response_headers(event), end_stream=False)
        if codec.buffered(sid) > HIGH_WATER and not self.out:
            self.out = True  # the client is slow: the upstream waits until the codec drains
            self.conn.paused += 1
        return False

    def _relayed(self) -> bool:
        """The whole response is with the codec: the exchange is over."""
        self.ended = True
        self._release_upstream()
        self.reactor.forget(self)
        return True

    def _response_headers(self, resp: Response) -> list:
        rules = self.plan.target.headers
        drop = rules.response_drop | CONNECTION_SPECIFIC
        if resp.connection:
            drop = drop | resp.connection
        headers = [(b":status", b"%d" % resp.status)]
        headers += [pair for pair in resp.headers if pair[0] not in drop]
        if resp.content_length is not None:
            headers.append((b"content-length", b"%d" % resp.content_length))
        headers += rules.response_add_pairs
        if self.extra_response:
            headers += _pairs(self.extra_response)
        headers.append((b"server", self.router.server))
        if rules.service_time:
            headers.append((b"x-envoy-upstream-service-time", b"%d" % int((time.monotonic() - self.sent_at) * 1000)))
        return headers

    def _local(self, status: int, body: bytes, close: bool, extra: bytes = b"",
               content_type: bytes = b"text/plain") -> None:
        """Answer the stream ourselves. `close` has no meaning for one stream of many."""
        if self.ended:
            return
        self.ended = True
        self._drop_upstream()
        self.reactor.forget(self)
        grpc = grpcstatus.content_type_of(self.req.headers) if self.req is not None else None
        if grpc is not None:  # a gRPC client reads grpc-status: a trailers-only answer, as Envoy's
            headers = [(b":status", b"200"), *grpcstatus.local_reply(status, body, grpc), (b"server", self.router.server)]
            body = b""
        else:
            headers = [(b":status", b"%d" % status), (b"server", self.router.server)]
            if body or status >= 200 and status not in (204, 304):
                headers += [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if extra:
            headers += _pairs(extra)
        codec = self.codec
        codec.respond(self.sid, headers, end_stream=not body)
        if body:
            codec.send_data(self.sid, body, end_stream=True)
        if not self.client_done:
            codec.reset(self.sid, NO_ERROR)  # the rest of the request body is not wanted

    def _abort(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._drop_upstream()
        self.reactor.forget(self)
        self.codec.reset(self.sid, INTERNAL_ERROR)


def _request(headers: list, end_stream: bool) -> Request | None:
    """An HTTP/2 request head as the Request plan() and request_head() read; None when a
    pseudo-header plan() needs is missing (nghttp2 has checked the rest)."""
    method = path = authority = None
    regular = []
    cookies = []
    host = None
    length = None
    for pair in headers:
        name = pair[0]
        if name[:1] == b":":
            if name == b":method":
                method = pair[1]
            elif name == b":path":
                path = pair[1]
            elif name == b":authority":
                authority = pair[1]
            continue
        if name == b"cookie":
            cookies.append(pair[1])  # RFC 9113 §8.2.3: one header again for HTTP/1
            continue
        if name == b"host":
            host = pair[1]
        elif name == b"content-length":
            try:
                length = int(pair[1])
            except ValueError:
                return None
        regular.append(pair)
    if method is None or path is None:
        return None
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    if host is None and authority is not None:
        host = authority
        regular.insert(0, (b"host", authority))
    has_body = not end_stream
    return Request(method, path, "2", regular, True, has_body and length is None, length, host, False,
                   False, frozenset(), has_body)


def _trailers(trailers) -> list | None:
    return [pair for pair in trailers if pair[0] not in CONNECTION_SPECIFIC] if trailers else None


def _pairs(lines: bytes) -> list:
    """Header lines (`name: value\\r\\n`...) as HTTP/2 pairs, names lower-cased."""
    out = []
    for line in lines.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip().lower(), value.strip()))
    return out
