# cython: language_level=3
"""HTTP/2 codec, sans-IO: bytes in, events out, bytes to send (nghttp2 underneath). The
server side (H2Codec) for edge's clients, the client side (H2ClientCodec) for upstreams.

One `H2Codec` per client connection. `feed(data)` appends events to `events` (a deque the
driver pops from the left); `respond`, `send_data`, `end_stream`, `reset`, `consume`,
`goaway` queue frames; `data_to_send()` serialises what nghttp2 wants to write (call it
when the socket can take bytes: the flood limits count the frames nghttp2 still holds).

Why compiled: the pure-Python h2 library cost ~96 µs per stream (receive HEADERS, send
HEADERS + DATA) where the whole HTTP/1 request cycle costs 27 µs. Here nghttp2's callbacks
are C functions that build the events; Python objects are made once per header (a tuple of
two bytes), once per DATA chunk and once per event.

nghttp2 validates HTTP messaging (pseudo-headers, connection-specific headers,
content-length against DATA, trailers): a stream error becomes RST_STREAM, and for a stream
whose RequestHeaders was delivered, StreamClosed; never an exception. Streams the driver
never saw (a malformed request refused before its headers were complete) produce no event.

Connection errors raise H2Error from feed() with GOAWAY already queued (data_to_send()
returns it; then close): bad preface (PROTOCOL_ERROR), SETTINGS/PING flood (nghttp2's
max_outbound_ack; ENHANCE_YOUR_CALM), more CONTINUATION frames than nghttp2's limit (8,
ENHANCE_YOUR_CALM), rapid reset (below), and every error nghttp2 itself answers with GOAWAY
(compression error, frame size, bad padding, too many SETTINGS entries, ...).

Header lists: the fields of a header block are kept as nghttp2's own reference-counted
buffers until the block ends, and become Python objects only for a block that is complete,
valid and within max_header_list_size (RFC 7541 size: name + value + 32 per field). A
request over the limit never reaches the driver: the codec answers 431 itself (and
RST_STREAM(NO_ERROR) when the request had not ended); trailers over the limit reset the
stream (ENHANCE_YOUR_CALM). Counted as `header_overflow`.

Rapid reset (CVE-2023-44487): two token buckets per connection, over the peer's RST_STREAM
frames. Premature resets (of a stream the server had not answered: no respond() yet) take
a token from a bucket of 2 * max_concurrent_streams, refilled at max_concurrent_streams / 3
per second (33/s at 100); every RST_STREAM takes one from a bucket of 1000 refilled at 33/s
(nghttp2 1.57's limiter, which Debian backported; the library's own is set twice as loose,
a backstop that never fires first). An empty bucket: GOAWAY(ENHANCE_YOUR_CALM) and
H2Error(11, "rapid reset"). A legitimate client cancelling a whole page of streams twice in a
row stays under it; HEADERS+RST_STREAM in a loop trips it in one read.

Flow control: automatic WINDOW_UPDATE is off. Every Data byte the driver has forwarded
upstream is given back with consume(stream_id, n): that is the backpressure. Bytes of a
stream still unconsumed when it closes are given back to the connection window by the
codec; consume() on a closed stream is then a no-op.

Client mode (H2ClientCodec: gRPC and other HTTP/2 upstreams, h2c or h2 over TLS): the same
machinery the other way round, sharing the events and the flow control. The connection
preface and our SETTINGS (push disabled) are queued at creation; request() opens a stream
and returns its id; send_data()/end_stream() carry the request body (Drained when its
buffered bytes are all framed); consume() gives the response body back to the upstream's
windows. A unary gRPC call: request(), send_data(..., end_stream=True), then from feed():
ResponseHeaders, Data..., Trailers, StreamClosed(0). 1xx heads are dropped. A stream the
upstream never processed ends with error_code 7 (REFUSED_STREAM), so it may be retried
elsewhere: above a GOAWAY's last stream id (closed in that feed(), after GoAwayReceived),
still held by nghttp2 when the GOAWAY came (closed at the next data_to_send()), or refused
by the upstream's RST_STREAM(7). request() raises StreamRefused when the connection can open
no stream (GOAWAY received or sent, stream ids used up, connection failed): open another;
can_open() and remote_max_concurrent_streams() tell beforehand. An upstream's connection
errors (bad frames, SETTINGS/PING flood, compression error, a header list decoding past
4 * max_header_list_size, PUSH_PROMISE) raise H2Error from feed() as on the server; a
response head or trailers merely over max_header_list_size reset that stream
(RST_STREAM(ENHANCE_YOUR_CALM); StreamClosed with 11) instead of reaching the driver.
nghttp2 validates the responses (pseudo-headers, content-length against DATA, ...): a stream
error ends the stream with StreamClosed(PROTOCOL_ERROR). No rapid-reset limiter: the resets
are ours.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from collections import deque

from edge.worker.proto cimport nghttp2 as ng

DEF STACK_NV = 32
cdef Py_ssize_t HEADER_OVERHEAD = 32  # RFC 7541 §4.1
cdef Py_ssize_t BOMB_FACTOR = 4  # a header block decoding past 4x the limit closes the connection
cdef Py_ssize_t MAX_GAPS = 64  # ranges of never-used client stream ids remembered per connection
cdef double ALL_RESET_BURST = 1000.0
cdef double ALL_RESET_RATE = 33.0
cdef bytes STATUS = b":status"
cdef bytes STATUS_431 = b"431"
cdef bytes EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
cdef bytes CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + EMPTY_SETTINGS


class H2Error(Exception):
    """A connection error: GOAWAY is already queued (data_to_send()), then close."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StreamRefused(Exception):
    """Client mode: this connection can open no new stream (the peer's GOAWAY, or ours,
    stream ids used up, or the connection failed). Nothing was sent: open another
    connection. Not an H2Error: the connection itself may still finish its open streams."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# ---- events -----------------------------------------------------------------------------

cdef class _Event:
    _fields = ()

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (f, getattr(self, f)) for f in self._fields))


cdef class RequestHeaders(_Event):
    """The request's header block: headers in wire order, pseudo-headers included, names lower-case."""
    _fields = ("stream_id", "headers", "end_stream")
    cdef readonly object stream_id
    cdef readonly list headers
    cdef readonly object end_stream

    def __init__(self, stream_id, headers, end_stream):
        self.stream_id, self.headers, self.end_stream = stream_id, headers, end_stream


cdef class ResponseHeaders(_Event):
    """Client mode: the final response's header block (b":status" first, in wire order,
    names lower-case); 1xx informational blocks are not delivered."""
    _fields = ("stream_id", "headers", "end_stream")
    cdef readonly object stream_id
    cdef readonly list headers
    cdef readonly object end_stream

    def __init__(self, stream_id, headers, end_stream):
        self.stream_id, self.headers, self.end_stream = stream_id, headers, end_stream


cdef class Data(_Event):
    """A DATA payload (padding excluded); end_stream=True on the frame's last chunk, or an
    empty Data when END_STREAM came on an empty frame."""
    _fields = ("stream_id", "data", "end_stream")
    cdef readonly object stream_id
    cdef readonly bytes data
    cdef readonly object end_stream

    def __init__(self, stream_id, data, end_stream):
        self.stream_id, self.data, self.end_stream = stream_id, data, end_stream


cdef class Trailers(_Event):
    """A header block after the request headers (server) or the final response headers
    (client): END_STREAM implied."""
    _fields = ("stream_id", "headers")
    cdef readonly object stream_id
    cdef readonly list headers

    def __init__(self, stream_id, headers):
        self.stream_id, self.headers = stream_id, headers


cdef class StreamReset(_Event):
    """The peer reset the stream (RST_STREAM received); StreamClosed follows."""
    _fields = ("stream_id", "error_code")
    cdef readonly object stream_id
    cdef readonly object error_code

    def __init__(self, stream_id, error_code):
        self.stream_id, self.error_code = stream_id, error_code


cdef class StreamClosed(_Event):
    """nghttp2 closed the stream, for any reason: the last event of a stream."""
    _fields = ("stream_id", "error_code")
    cdef readonly object stream_id
    cdef readonly object error_code

    def __init__(self, stream_id, error_code):
        self.stream_id, self.error_code = stream_id, error_code


cdef class Drained(_Event):
    """The stream's buffered outgoing body bytes (the response's on the server, the
    request's on the client) fell from above 0 to 0 (from data_to_send())."""
    _fields = ("stream_id",)
    cdef readonly object stream_id

    def __init__(self, stream_id):
        self.stream_id = stream_id


cdef class GoAwayReceived(_Event):
    _fields = ("error_code", "last_stream_id")
    cdef readonly object error_code
    cdef readonly object last_stream_id

    def __init__(self, error_code, last_stream_id):
        self.error_code, self.last_stream_id = error_code, last_stream_id


# ---- per-stream state -------------------------------------------------------------------

cdef class _Stream:
    cdef int32_t sid
    cdef list chunks  # outgoing body bytes not yet framed (bytes objects); the first from `offset`
    cdef Py_ssize_t offset
    cdef Py_ssize_t buffered
    cdef Py_ssize_t unconsumed  # received body bytes delivered, not yet given back by consume()
    cdef bint announced  # the driver knows the stream: RequestHeaders delivered, or request() returned it
    cdef bint answered  # our headers submitted: the final response's (server), the request's (client)
    cdef bint provider  # our message has a body: a data provider reads `chunks`
    cdef bint deferred  # the provider said NGHTTP2_ERR_DEFERRED: resume on new data
    cdef bint ending  # END_STREAM after the buffered bytes
    cdef bint finished  # nothing more may be sent (EOF given, HEADERS with END_STREAM, reset)
    cdef bint reset  # by either side: what the driver still sends for it is dropped
    cdef bint refused  # over max_header_list_size: answered 431 by the codec (server), reset (client)
    cdef bint end_sent  # the frame with END_STREAM went out
    cdef bint rst_after_end  # RST_STREAM(NO_ERROR) once the response is out, if the request goes on
    cdef bint responded  # client: the final ResponseHeaders was delivered (Data may follow)
    cdef object trailers


cdef inline _Stream _stream_of(ng.nghttp2_session *session, int32_t sid):
    cdef void *p = ng.nghttp2_session_get_stream_user_data(session, sid)
    return None if p == NULL else <_Stream>p


cdef inline double _now():
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline bint _take_token(double *tokens, double *at, double burst, double rate, double now):
    tokens[0] = min(burst, tokens[0] + (now - at[0]) * rate)
    at[0] = now
    if tokens[0] < 1.0:
        return False
    tokens[0] -= 1.0
    return True


cdef Py_ssize_t _fill_nva(list headers, ng.nghttp2_nv *nva) except -1:
    """Point nva at the names and values of `headers` (kept alive by the caller; nghttp2
    copies them at submit)."""
    cdef Py_ssize_t i = 0
    cdef bytes name, value
    for pair in headers:
        name, value = pair
        nva[i].name = <uint8_t *>PyBytes_AS_STRING(name)
        nva[i].namelen = PyBytes_GET_SIZE(name)
        nva[i].value = <uint8_t *>PyBytes_AS_STRING(value)
        nva[i].valuelen = PyBytes_GET_SIZE(value)
        nva[i].flags = ng.NGHTTP2_NV_FLAG_NONE
        i += 1
    return i


cdef inline void _drop_output(_Stream st) noexcept:
    """The stream was reset (by either side): what it still had to send goes."""
    st.finished = st.reset = True
    st.chunks = None
    st.buffered = st.offset = 0


# nghttp2 copies the callbacks into each session: one table per side for the process
cdef ng.nghttp2_session_callbacks *_CALLBACKS = NULL
cdef ng.nghttp2_session_callbacks *_CLIENT_CALLBACKS = NULL

cdef class _H2Connection:
    """What both sides of an HTTP/2 connection share: the nghttp2 session, the input, the
    output, the outgoing bodies and the windows. Not for use by itself: H2Codec (server)
    and H2ClientCodec (client) are its two sides. The methods here act on either side's
    streams: the body they send (the response's, the request's) and the body they receive."""

    cdef ng.nghttp2_session *_session
    cdef readonly object events
    cdef object _push
    cdef dict _streams  # stream id -> _Stream, while nghttp2 has it open (client: from request())
    # the header block being received: nghttp2's buffers, (name, value) pairs
    cdef ng.nghttp2_rcbuf **_hdrs
    cdef Py_ssize_t _nhdrs
    cdef Py_ssize_t _hdrs_cap
    cdef Py_ssize_t _hdr_size
    cdef bint _hdr_overflow
    cdef Py_ssize_t _max_header_list
    # output serialised during feed() (to see a GOAWAY nghttp2 queued) and not yet returned
    cdef char *_out
    cdef Py_ssize_t _out_len
    cdef Py_ssize_t _out_cap
    cdef Py_ssize_t _out_limit
    cdef Data _last_data  # the last Data of the DATA frame being received (END_STREAM goes on it)
    cdef object _error  # an exception raised inside a callback
    cdef bint _dead  # nghttp2 returned a fatal error: no more calls into it
    cdef bint _failed  # a connection error was raised (or is to be)
    cdef bint _goaway_queued  # goaway() was called: a client opens no more streams
    cdef bint _client  # H2ClientCodec: we open the streams, the peer answers them
    cdef bint _preface_sent
    cdef bytes _preface  # what goes before our own GOAWAY when nghttp2 sent nothing yet
    cdef uint32_t _fail_code
    cdef str _fail_reason
    cdef Py_ssize_t _own_goaways  # GOAWAY frames goaway()/shutdown_notice() queued, not yet serialised
    cdef Py_ssize_t _expected  # outbound frames the peer's frames explain in this feed (ACKs, ...)
    cdef Py_ssize_t _conn_unconsumed  # bytes of closed streams, to give back to the connection
    cdef Py_ssize_t _n_streams, _n_rst_received, _n_rst_sent, _n_header_overflow
    cdef Py_ssize_t _n_invalid, _n_goaway_received, _n_flood, _n_refused_data

    def __init__(self, *args, **kwargs):
        raise TypeError("use H2Codec (server) or H2ClientCodec (client)")

    cdef int _setup(self, bint client, int initial_window_size, int max_header_list_size, Py_ssize_t max_outbound_ack,
                    Py_ssize_t max_settings, ng.nghttp2_settings_entry *iv, size_t niv) except -1:
        """The session of either side (options, our SETTINGS iv, the connection window)."""
        cdef ng.nghttp2_option *opt
        self.events = deque()
        self._push = self.events.append
        self._streams = {}
        self._client = client
        self._preface = CLIENT_PREFACE if client else EMPTY_SETTINGS
        self._max_header_list = max_header_list_size
        self._out_limit = max(65536, 32 * max_outbound_ack)
        if ng.nghttp2_option_new(&opt) != 0:
            raise MemoryError()
        ng.nghttp2_option_set_no_auto_window_update(opt, 1)
        ng.nghttp2_option_set_max_outbound_ack(opt, max_outbound_ack)
        ng.nghttp2_option_set_max_settings(opt, max_settings)
        if client:
            rv = ng.nghttp2_session_client_new2(&self._session, _CLIENT_CALLBACKS, <void *>self, opt)
        else:
            ng.nghttp2_option_set_stream_reset_rate_limit(opt, <uint64_t>(2 * ALL_RESET_BURST),
                                                          <uint64_t>(2 * ALL_RESET_RATE))
            rv = ng.nghttp2_session_server_new2(&self._session, _CALLBACKS, <void *>self, opt)
        ng.nghttp2_option_del(opt)
        if rv != 0:
            self._session = NULL
            raise MemoryError()
        rv = ng.nghttp2_submit_settings(self._session, ng.NGHTTP2_FLAG_NONE, iv, niv)
        if rv != 0:
            raise ValueError(f"SETTINGS refused by nghttp2: {ng.nghttp2_strerror(rv).decode()}")
        if initial_window_size > 65535:  # else one stream's window would be the connection's
            ng.nghttp2_session_set_local_window_size(self._session, ng.NGHTTP2_FLAG_NONE, 0, initial_window_size)
        return 0

    def __dealloc__(self):
        self._release_headers()
        if self._session != NULL:
            ng.nghttp2_session_del(self._session)
            self._session = NULL
        free(self._hdrs)
        free(self._out)

    # ---- input ------------------------------------------------------------------------

    def feed(self, data, Py_ssize_t n=-1) -> None:
        """Process the first n bytes of data (bytes or a buffer; all when n is -1). Nothing
        of data is kept. Raises H2Error on a connection error."""
        cdef Py_buffer buf
        cdef ssize_t rv
        cdef size_t queued
        if self._dead or self._failed:
            return
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        if n < 0 or n > buf.len:
            n = buf.len
        queued = ng.nghttp2_session_get_outbound_queue_size(self._session)
        self._expected = 0
        self._last_data = None
        try:
            rv = ng.nghttp2_session_mem_recv(self._session, <const uint8_t *>buf.buf, <size_t>n)
        finally:
            PyBuffer_Release(&buf)
            self._last_data = None
        if rv < 0:
            self._fatal(<int>rv)
        if not self._failed and ng.nghttp2_session_get_outbound_queue_size(self._session) > queued + self._expected:
            # frames none of the peer's frames explain: a stream error, or nghttp2 ending the connection
            self._pump(True)
        if self._failed:
            raise H2Error(self._fail_code, self._fail_reason)
        self._give_back()

    # ---- output -----------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything nghttp2 wants to write now (b"" when nothing). Streams whose buffered
        bytes were all framed get a Drained event. (H2Error only if nghttp2 itself fails:
        then the rest is a GOAWAY, and the connection is done.)"""
        cdef bytes out
        if not self._dead:
            self._give_back()
            self._pump(False)
        if self._out_len == 0:
            return b""
        out = PyBytes_FromStringAndSize(self._out, self._out_len)
        self._out_len = 0
        if self._out_cap > 1 << 20:
            free(self._out)
            self._out = NULL
            self._out_cap = 0
        return out

    def send_data(self, int stream_id, data, bint end_stream=False) -> None:
        """Append to the stream's outgoing body (the response's; the request's on a client);
        framed as the peer's windows allow. Dropped when the stream was reset meanwhile (by
        either side) or is closed. ValueError when no body may follow (server: no respond()
        yet; client: request() had end_stream; either: the body was ended)."""
        cdef _Stream st = self._live(stream_id)
        if st is None or st.reset:
            return
        if not st.provider or st.ending:
            raise ValueError(f"stream {stream_id}: no body may follow (no headers with a body yet, or already ended)")
        if type(data) is not bytes:
            data = bytes(data)
        if PyBytes_GET_SIZE(data):
            if st.chunks is None:
                st.chunks = [data]
            else:
                st.chunks.append(data)
            st.buffered += PyBytes_GET_SIZE(data)
        if end_stream:
            st.ending = True
        self._resume(st)

    def end_stream(self, int stream_id, trailers=None) -> None:
        """END_STREAM after the buffered bytes; with trailers ([(name, value)]) as a HEADERS
        frame. A no-op on an ended, reset or closed stream."""
        cdef _Stream st = self._live(stream_id)
        if st is None or st.finished or st.ending:
            return
        if not st.answered:
            raise ValueError(f"stream {stream_id}: end_stream before respond")
        st.ending = True
        st.trailers = trailers or None
        self._resume(st)

    def reset(self, int stream_id, uint32_t error_code=8) -> None:
        """RST_STREAM (8 = CANCEL); the stream's buffered bytes are dropped. NO_ERROR (0) on a
        stream whose complete message (response; request on a client) is still queued waits
        for it to go out (RFC 9113 §8.1: the peer's body is not wanted), else a RST_STREAM
        queued now would drop it. A no-op on a closed or already reset stream."""
        cdef _Stream st = self._live(stream_id)
        if st is None or self._failed or st.reset:
            return
        if error_code == ng.NGHTTP2_NO_ERROR and st.answered and (st.finished or st.ending) and not st.end_sent:
            st.rst_after_end = True
            return
        ng.nghttp2_submit_rst_stream(self._session, ng.NGHTTP2_FLAG_NONE, stream_id, error_code)
        _drop_output(st)

    def consume(self, int stream_id, Py_ssize_t n) -> None:
        """The driver forwarded n bytes of the stream's received body (request body on the
        server, response body on the client): the windows reopen (WINDOW_UPDATE when
        nghttp2 finds it worth sending)."""
        cdef _Stream st = self._live(stream_id)
        if st is None or n <= 0:
            return
        if n > st.unconsumed:
            n = st.unconsumed
        if n:
            st.unconsumed -= n
            ng.nghttp2_session_consume(self._session, stream_id, n)

    def buffered(self, int stream_id) -> int:
        """Outgoing body bytes of the stream queued in the codec, not yet framed."""
        cdef _Stream st = self._live(stream_id)
        return 0 if st is None else st.buffered

    def goaway(self, uint32_t error_code=0) -> None:
        """GOAWAY with the last stream id seen: open streams finish, new ones are refused
        (a client's: last stream id 0, and request() raises StreamRefused from now on)."""
        cdef size_t before
        if self._dead:
            return
        self._goaway_queued = True
        before = ng.nghttp2_session_get_outbound_queue_size(self._session)
        ng.nghttp2_submit_goaway(self._session, ng.NGHTTP2_FLAG_NONE,
                                 ng.nghttp2_session_get_last_proc_stream_id(self._session), error_code, NULL, 0)
        self._own_goaways += ng.nghttp2_session_get_outbound_queue_size(self._session) - before

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def want_read(self) -> bool:
        return not self._dead and ng.nghttp2_session_want_read(self._session) != 0

    @property
    def want_write(self) -> bool:
        return self._out_len > 0 or (not self._dead and ng.nghttp2_session_want_write(self._session) != 0)

    # ---- internals --------------------------------------------------------------------

    cdef inline _Stream _live(self, int32_t sid):
        return <_Stream>self._streams.get(sid)

    cdef int _resume(self, _Stream st) except -1:
        if st.deferred:
            st.deferred = False
            ng.nghttp2_session_resume_data(self._session, st.sid)
        return 0

    cdef int _give_back(self) except -1:
        cdef Py_ssize_t n = self._conn_unconsumed
        if n:
            self._conn_unconsumed = 0
            ng.nghttp2_session_consume_connection(self._session, n)
        return 0

    cdef int _append_out(self, const uint8_t *p, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap = self._out_cap
        cdef char *grown
        if self._out_len + n > cap:
            cap = max(cap * 2, self._out_len + n, 16384)
            grown = <char *>realloc(self._out, cap)
            if grown == NULL:
                raise MemoryError()
            self._out, self._out_cap = grown, cap
        memcpy(self._out + self._out_len, p, n)
        self._out_len += n
        return 0

    cdef int _pump(self, bint control_only) except -1:
        """Serialise into _out: everything, or (control_only, from feed) the frames queued
        ahead of any DATA, where a GOAWAY of nghttp2's own shows."""
        cdef const uint8_t *p
        cdef ssize_t n
        while not control_only or ng.nghttp2_session_get_outbound_queue_size(self._session):
            n = ng.nghttp2_session_mem_send(self._session, &p)
            if n < 0:
                self._fatal(<int>n)
            if n == 0:
                break
            self._append_out(p, n)
            if control_only and self._out_len > self._out_limit:
                self._n_flood = 1
                self._die(ng.NGHTTP2_ENHANCE_YOUR_CALM, "flood (output not read)")
                raise H2Error(self._fail_code, self._fail_reason)
        return 0

    cdef int _fatal(self, int rv) except -1:
        """nghttp2 returned a fatal error: it may not be called again. Our own GOAWAY."""
        error = self._error
        self._error = None
        if rv == ng.NGHTTP2_ERR_BAD_CLIENT_MAGIC:
            self._die(ng.NGHTTP2_PROTOCOL_ERROR, "bad client preface")
        elif rv == ng.NGHTTP2_ERR_FLOODED:
            self._n_flood = 1
            self._die(ng.NGHTTP2_ENHANCE_YOUR_CALM, "flood")
        elif rv == ng.NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
            self._n_flood = 1
            self._die(ng.NGHTTP2_ENHANCE_YOUR_CALM, "CONTINUATION flood")
        else:
            self._die(ng.NGHTTP2_INTERNAL_ERROR, "internal error: " + (
                repr(error) if error is not None else ng.nghttp2_strerror(rv).decode()))
        raise H2Error(self._fail_code, self._fail_reason) from error

    cdef int _die(self, uint32_t code, str reason) except -1:
        cdef bytes debug = reason.encode("latin-1", "replace")[:256]
        cdef int32_t last = ng.nghttp2_session_get_last_proc_stream_id(self._session)
        cdef bytes frame
        self._failed = self._dead = True
        self._fail_code, self._fail_reason = code, reason
        if not self._preface_sent:  # our preface comes first, even now
            self._append_out(<const uint8_t *>PyBytes_AS_STRING(self._preface), PyBytes_GET_SIZE(self._preface))
            self._preface_sent = True
        frame = b"%b\x07\x00\x00\x00\x00\x00%b%b%b" % (
            (8 + len(debug)).to_bytes(3, "big"), int(last).to_bytes(4, "big"), int(code).to_bytes(4, "big"), debug)
        self._append_out(<const uint8_t *>PyBytes_AS_STRING(frame), len(frame))
        return 0

    cdef int _connection_error(self, uint32_t code, str reason) except -1:
        """From inside a callback: nghttp2 queues GOAWAY and ignores the rest of the input."""
        if not self._failed:
            self._failed = True
            self._fail_code, self._fail_reason = code, reason
            ng.nghttp2_session_terminate_session(self._session, code)
        return 0

    cdef void _release_headers(self) noexcept:
        cdef Py_ssize_t i
        for i in range(2 * self._nhdrs):
            ng.nghttp2_rcbuf_decref(self._hdrs[i])
        self._nhdrs = 0

    cdef list _take_headers(self):
        cdef Py_ssize_t i, n = self._nhdrs
        cdef list out = PyList_New(n)
        cdef ng.nghttp2_vec name, value
        for i in range(n):
            name = ng.nghttp2_rcbuf_get_buf(self._hdrs[2 * i])
            value = ng.nghttp2_rcbuf_get_buf(self._hdrs[2 * i + 1])
            pair = (PyBytes_FromStringAndSize(<char *>name.base, name.len),
                    PyBytes_FromStringAndSize(<char *>value.base, value.len))
            Py_INCREF(pair)
            PyList_SET_ITEM(out, i, pair)
        self._release_headers()
        return out

    # ---- the callbacks' work (the sides override what differs) ------------------------

    cdef int _begin_headers(self, const ng.nghttp2_frame *frame) except -1:
        cdef _Stream st
        cdef int32_t sid = frame.hd.stream_id
        self._release_headers()
        self._hdr_size = 0
        self._hdr_overflow = False
        if frame.headers.cat == ng.NGHTTP2_HCAT_REQUEST:  # server only: a client never receives one
            st = _Stream.__new__(_Stream)
            st.sid = sid
            self._streams[sid] = st
            ng.nghttp2_session_set_stream_user_data(self._session, sid, <void *>st)
            self._n_streams += 1
        return 0

    cdef int _header(self, const ng.nghttp2_frame *frame, ng.nghttp2_rcbuf *name, ng.nghttp2_rcbuf *value) except -1:
        cdef ng.nghttp2_vec n, v
        cdef Py_ssize_t cap
        cdef ng.nghttp2_rcbuf **grown
        n = ng.nghttp2_rcbuf_get_buf(name)
        v = ng.nghttp2_rcbuf_get_buf(value)
        self._hdr_size += n.len + v.len + HEADER_OVERHEAD
        if self._hdr_overflow:
            # an HPACK bomb: a small block that decodes far past the limit (references to a
            # large dynamic-table entry); a peer merely over the limit gets its 431 (server)
            # or its stream reset (client) once the block ends
            if self._hdr_size > BOMB_FACTOR * self._max_header_list:
                return self._connection_error(ng.NGHTTP2_ENHANCE_YOUR_CALM, "HPACK bomb")
            return 0
        if self._hdr_size > self._max_header_list:
            self._release_headers()
            self._n_header_overflow += 1
            if frame.headers.cat != ng.NGHTTP2_HCAT_REQUEST and not self._client:
                # server, trailers: the response may be under way
                self._expect(ng.nghttp2_submit_rst_stream(self._session, ng.NGHTTP2_FLAG_NONE, frame.hd.stream_id,
                                                          ng.NGHTTP2_ENHANCE_YOUR_CALM))
                return ng.NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
            self._hdr_overflow = True  # the rest of the block is decoded (HPACK state) but not kept
            return 0
        if self._nhdrs == self._hdrs_cap:
            cap = max(16, 2 * self._hdrs_cap)
            grown = <ng.nghttp2_rcbuf **>realloc(self._hdrs, 2 * cap * sizeof(ng.nghttp2_rcbuf *))
            if grown == NULL:
                raise MemoryError()
            self._hdrs, self._hdrs_cap = grown, cap
        ng.nghttp2_rcbuf_incref(name)
        ng.nghttp2_rcbuf_incref(value)
        self._hdrs[2 * self._nhdrs] = name
        self._hdrs[2 * self._nhdrs + 1] = value
        self._nhdrs += 1
        return 0

    cdef void _expect(self, int rv) noexcept:
        if rv == 0:
            self._expected += 1

    cdef int _frame_recv(self, const ng.nghttp2_frame *frame) except -1:
        """The frames both sides take alike; the sides handle DATA and HEADERS first."""
        cdef uint8_t kind = frame.hd.type
        cdef GoAwayReceived ga
        if kind == ng.NGHTTP2_RST_STREAM:
            self._reset_received(frame.hd.stream_id, frame.rst_stream.error_code)
        elif kind == ng.NGHTTP2_SETTINGS or kind == ng.NGHTTP2_PING:
            if not frame.hd.flags & ng.NGHTTP2_FLAG_ACK:
                self._expected += 1  # the ACK nghttp2 queued
        elif kind == ng.NGHTTP2_GOAWAY:
            self._n_goaway_received += 1
            ga = GoAwayReceived.__new__(GoAwayReceived)
            ga.error_code, ga.last_stream_id = frame.goaway.error_code, frame.goaway.last_stream_id
            self._push(ga)
        return 0

    cdef int _reset_received(self, int32_t sid, uint32_t code) except -1:
        """The peer's RST_STREAM (the client's handling; the server adds its limiter)."""
        cdef _Stream st = _stream_of(self._session, sid)
        cdef StreamReset ev
        self._n_rst_received += 1
        if st is None:
            return 0
        _drop_output(st)
        if st.announced:
            ev = StreamReset.__new__(StreamReset)
            ev.stream_id, ev.error_code = sid, code
            self._push(ev)
        return 0

    cdef int _data_chunk(self, int32_t sid, const uint8_t *data, size_t length) except -1:
        cdef _Stream st = _stream_of(self._session, sid)
        if st is None or not st.announced:
            return self._drop_data(sid, length)  # a refused request's body
        return _deliver_data(self, st, data, length)

    cdef int _drop_data(self, int32_t sid, size_t length) except -1:
        """A body the driver never gets: given back at once."""
        cdef size_t before
        self._n_refused_data += length
        before = ng.nghttp2_session_get_outbound_queue_size(self._session)
        ng.nghttp2_session_consume(self._session, sid, length)
        self._expected += ng.nghttp2_session_get_outbound_queue_size(self._session) - before
        return 0

    cdef int _stream_close(self, int32_t sid, uint32_t code) except -1:
        cdef _Stream st = <_Stream>self._streams.pop(sid, None)
        cdef StreamClosed ev
        if st is None:
            return 0
        self._conn_unconsumed += st.unconsumed
        st.unconsumed = 0
        st.chunks = None
        if st.announced:
            ev = StreamClosed.__new__(StreamClosed)
            ev.stream_id, ev.error_code = sid, code
            self._push(ev)
        return 0

    cdef int _before_send(self, const ng.nghttp2_frame *frame) except -1:
        cdef uint8_t kind = frame.hd.type
        if kind == ng.NGHTTP2_GOAWAY:
            if self._own_goaways:
                self._own_goaways -= 1
            elif not self._failed:  # nghttp2 ends the connection (it found a connection error)
                self._failed = True
                self._fail_code = frame.goaway.error_code
                self._fail_reason = (PyBytes_FromStringAndSize(<char *>frame.goaway.opaque_data,
                                                                frame.goaway.opaque_data_len).decode("latin-1")
                                     if frame.goaway.opaque_data_len else
                                     ng.nghttp2_http2_strerror(frame.goaway.error_code).decode())
        elif kind == ng.NGHTTP2_RST_STREAM:
            self._n_rst_sent += 1
        elif kind == ng.NGHTTP2_SETTINGS:
            self._preface_sent = True
        return 0

    cdef int _frame_send(self, const ng.nghttp2_frame *frame) except -1:
        cdef _Stream st
        if frame.hd.flags & ng.NGHTTP2_FLAG_END_STREAM and frame.hd.type <= ng.NGHTTP2_HEADERS:  # DATA, HEADERS
            st = _stream_of(self._session, frame.hd.stream_id)
            if st is None:
                return 0
            st.end_sent = True
            if st.rst_after_end and not ng.nghttp2_session_get_stream_remote_close(self._session, st.sid):
                st.reset = True
                ng.nghttp2_submit_rst_stream(self._session, ng.NGHTTP2_FLAG_NONE, st.sid, ng.NGHTTP2_NO_ERROR)
        return 0

    cdef ssize_t _read(self, _Stream st, uint8_t *buf, size_t length, uint32_t *flags) except -1:
        cdef Py_ssize_t n = 0, take, avail
        cdef bytes chunk
        cdef Drained ev
        cdef ng.nghttp2_nv stack[STACK_NV]
        cdef ng.nghttp2_nv *nva = stack
        cdef Py_ssize_t nt
        while st.buffered and n < <Py_ssize_t>length:
            chunk = <bytes>st.chunks[0]
            avail = PyBytes_GET_SIZE(chunk) - st.offset
            take = min(avail, <Py_ssize_t>length - n)
            memcpy(buf + n, PyBytes_AS_STRING(chunk) + st.offset, take)
            n += take
            st.buffered -= take
            if take == avail:
                del st.chunks[0]
                st.offset = 0
            else:
                st.offset += take
        if st.buffered == 0:
            if n:
                ev = Drained.__new__(Drained)
                ev.stream_id = st.sid
                self._push(ev)
            if st.ending:
                st.finished = True
                flags[0] |= ng.NGHTTP2_DATA_FLAG_EOF
                if st.trailers:
                    flags[0] |= ng.NGHTTP2_DATA_FLAG_NO_END_STREAM
                    nt = len(st.trailers)
                    if nt > STACK_NV:
                        nva = <ng.nghttp2_nv *>malloc(nt * sizeof(ng.nghttp2_nv))
                        if nva == NULL:
                            raise MemoryError()
                    try:
                        _fill_nva(list(st.trailers), nva)
                        ng.nghttp2_submit_trailer(self._session, st.sid, nva, nt)
                    finally:
                        if nva != stack:
                            free(nva)
                    st.trailers = None
            elif n == 0:
                st.deferred = True
                return ng.NGHTTP2_ERR_DEFERRED
        return n


cdef inline int _deliver_data(_H2Connection conn, _Stream st, const uint8_t *data, size_t length) except -1:
    """A DATA chunk the driver gets: a Data event, the bytes owed to the windows."""
    cdef Data d = Data.__new__(Data)
    d.stream_id, d.data, d.end_stream = st.sid, PyBytes_FromStringAndSize(<const char *>data, length), False
    st.unconsumed += length
    conn._last_data = d
    conn._push(d)
    return 0


cdef inline int _end_of_data(_H2Connection conn, int32_t sid) except -1:
    """END_STREAM on a DATA frame of a stream whose Data the driver gets: on the frame's
    last Data, or an empty Data."""
    cdef Data d
    if conn._last_data is not None and conn._last_data.stream_id == sid:
        conn._last_data.end_stream = True
    else:
        d = Data.__new__(Data)
        d.stream_id, d.data, d.end_stream = sid, b"", True
        conn._push(d)
    return 0

cdef class H2Codec(_H2Connection):
    """The server side of one HTTP/2 connection (see the module docstring)."""

    cdef double _pre_tokens, _pre_burst, _pre_rate, _pre_at
    cdef double _all_tokens, _all_at
    cdef Py_ssize_t _n_rst_premature, _n_rapid_reset
    cdef int32_t _max_sid  # the highest stream id a client HEADERS frame opened
    cdef list _gaps  # [(low, high)]: odd ids skipped below it, which never opened (bounded)

    def __init__(self, *, int max_concurrent_streams=100, int initial_window_size=65535,
                 int max_header_list_size=65536, Py_ssize_t max_outbound_ack=1000, Py_ssize_t max_settings=32):
        cdef ng.nghttp2_settings_entry iv[4]
        if self._session != NULL:
            raise RuntimeError("H2Codec.__init__ called twice")
        if max_concurrent_streams < 1 or max_header_list_size < 1 or max_outbound_ack < 1 or max_settings < 1:
            raise ValueError("limits must be positive")
        if not 0 <= initial_window_size <= 2147483647:
            raise ValueError("initial_window_size out of range")
        self._max_sid = 0
        self._gaps = []
        self._pre_burst = self._pre_tokens = 2.0 * max_concurrent_streams
        self._pre_rate = max(1.0, max_concurrent_streams / 3.0)
        self._all_tokens = ALL_RESET_BURST
        self._pre_at = self._all_at = _now()
        iv[0].settings_id = ng.NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = max_concurrent_streams
        iv[1].settings_id = ng.NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = initial_window_size
        iv[2].settings_id = ng.NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[2].value = max_header_list_size
        iv[3].settings_id = ng.NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL
        iv[3].value = 0
        self._setup(False, initial_window_size, max_header_list_size, max_outbound_ack, max_settings, iv, 4)

    def respond(self, int stream_id, list headers, bint end_stream) -> None:
        """Submit the response headers ([(name, value)] bytes, lower-case names, b":status"
        first); a 1xx status is sent as an informational response. With end_stream False the
        body follows through send_data()/end_stream()."""
        cdef ng.nghttp2_nv stack[STACK_NV]
        cdef ng.nghttp2_nv *nva = stack
        cdef ng.nghttp2_data_provider prd
        cdef Py_ssize_t n = len(headers)
        cdef _Stream st = self._live(stream_id)
        cdef bint informational
        if st is None or st.reset:
            return  # closed or reset meanwhile: the StreamClosed event is on its way
        if st.answered:
            raise ValueError(f"stream {stream_id} already has a response")
        if n > STACK_NV:
            nva = <ng.nghttp2_nv *>malloc(n * sizeof(ng.nghttp2_nv))
            if nva == NULL:
                raise MemoryError()
        try:
            _fill_nva(headers, nva)
            informational = n > 0 and nva[0].valuelen == 3 and nva[0].value[0] == 49
            if informational:
                rv = ng.nghttp2_submit_headers(self._session, ng.NGHTTP2_FLAG_NONE, stream_id, NULL, nva, n, NULL)
                rv = 0 if rv > 0 else rv
            elif end_stream:
                rv = ng.nghttp2_submit_response(self._session, stream_id, nva, n, NULL)
            else:
                prd.source.ptr = <void *>st
                prd.read_callback = _read_callback
                rv = ng.nghttp2_submit_response(self._session, stream_id, nva, n, &prd)
        finally:
            if nva != stack:
                free(nva)
        if rv != 0:
            raise ValueError(f"stream {stream_id}: response refused by nghttp2: {ng.nghttp2_strerror(rv).decode()}")
        if not informational:
            st.answered = True
            st.provider = not end_stream
            st.finished = end_stream

    def shutdown_notice(self) -> None:
        """The first GOAWAY of a graceful shutdown (last stream id 2^31-1); goaway() later."""
        cdef size_t before
        if self._dead:
            return
        before = ng.nghttp2_session_get_outbound_queue_size(self._session)
        ng.nghttp2_submit_shutdown_notice(self._session)  # nothing when a GOAWAY was queued already
        self._own_goaways += ng.nghttp2_session_get_outbound_queue_size(self._session) - before

    def statistics(self) -> dict:
        return {"streams": self._n_streams, "rst_received": self._n_rst_received,
                "rst_premature": self._n_rst_premature, "rst_sent": self._n_rst_sent,
                "rapid_reset": self._n_rapid_reset, "flood": self._n_flood,
                "header_overflow": self._n_header_overflow, "invalid_frames": self._n_invalid,
                "goaway_received": self._n_goaway_received, "refused_data_bytes": self._n_refused_data}

    # ---- the callbacks' work ----------------------------------------------------------

    cdef int _begin_frame(self, const ng.nghttp2_frame_hd *hd) except -1:
        """RFC 9113 §5.1.1: a client stream id lower than one already opened is a connection
        error when it was never used (opening a higher id closed it). nghttp2 ignores such
        HEADERS, not knowing which ids were used; ids are opened in order, so the unused
        ones are the gaps a client left, kept as ranges (bounded: the oldest are forgotten,
        which errs towards nghttp2's leniency). A used id (trailers after a reset) stays
        nghttp2's to handle."""
        cdef int32_t sid = hd.stream_id
        if hd.type != ng.NGHTTP2_HEADERS or not sid & 1:
            return 0
        if sid > self._max_sid:
            if sid > self._max_sid + 2:
                self._gaps.append((self._max_sid + 2, sid - 2))
                if len(self._gaps) > MAX_GAPS:
                    del self._gaps[0]
            self._max_sid = sid
            return 0
        for low, high in self._gaps:
            if low <= sid <= high:
                return self._connection_error(ng.NGHTTP2_PROTOCOL_ERROR,
                                              f"stream {sid} opened after stream {self._max_sid}")
        return 0

    cdef int _frame_recv(self, const ng.nghttp2_frame *frame) except -1:
        cdef uint8_t kind = frame.hd.type
        cdef int32_t sid = frame.hd.stream_id
        cdef _Stream st
        cdef RequestHeaders req
        cdef Trailers tr
        if kind == ng.NGHTTP2_DATA:
            if frame.hd.flags & ng.NGHTTP2_FLAG_END_STREAM:
                st = _stream_of(self._session, sid)
                if st is not None and st.announced:
                    _end_of_data(self, sid)
            self._last_data = None
        elif kind == ng.NGHTTP2_HEADERS:
            st = _stream_of(self._session, sid)
            if st is None:
                self._release_headers()
            elif frame.headers.cat == ng.NGHTTP2_HCAT_REQUEST:
                if self._hdr_overflow:
                    self._refuse(st, frame)
                else:
                    req = RequestHeaders.__new__(RequestHeaders)
                    req.stream_id, req.headers = sid, self._take_headers()
                    req.end_stream = (frame.hd.flags & ng.NGHTTP2_FLAG_END_STREAM) != 0
                    st.announced = True
                    self._push(req)
            elif st.announced:
                tr = Trailers.__new__(Trailers)
                tr.stream_id, tr.headers = sid, self._take_headers()
                self._push(tr)
            else:
                self._release_headers()
        else:
            return _H2Connection._frame_recv(self, frame)
        return 0

    cdef int _refuse(self, _Stream st, const ng.nghttp2_frame *frame) except -1:
        """A request over max_header_list_size: 431, then RST_STREAM(NO_ERROR) once the
        response is out if the request goes on (see _frame_send)."""
        cdef ng.nghttp2_nv nv
        nv.name, nv.namelen = <uint8_t *>PyBytes_AS_STRING(STATUS), 7
        nv.value, nv.valuelen = <uint8_t *>PyBytes_AS_STRING(STATUS_431), 3
        nv.flags = ng.NGHTTP2_NV_FLAG_NONE
        st.refused = st.answered = st.finished = True
        st.rst_after_end = not frame.hd.flags & ng.NGHTTP2_FLAG_END_STREAM
        self._expect(ng.nghttp2_submit_response(self._session, st.sid, &nv, 1, NULL))
        return 0

    cdef int _reset_received(self, int32_t sid, uint32_t code) except -1:
        """The client's RST_STREAM, through the rapid-reset limiter (module docstring)."""
        cdef _Stream st = _stream_of(self._session, sid)
        cdef StreamReset ev
        cdef double now = _now()
        self._n_rst_received += 1
        if not _take_token(&self._all_tokens, &self._all_at, ALL_RESET_BURST, ALL_RESET_RATE, now):
            self._n_rapid_reset = 1
            return self._connection_error(ng.NGHTTP2_ENHANCE_YOUR_CALM, "rapid reset")
        if st is None:
            return 0
        if not st.answered:
            self._n_rst_premature += 1
            if not _take_token(&self._pre_tokens, &self._pre_at, self._pre_burst, self._pre_rate, now):
                self._n_rapid_reset = 1
                return self._connection_error(ng.NGHTTP2_ENHANCE_YOUR_CALM, "rapid reset")
        st.finished = st.reset = True
        st.chunks = None
        st.buffered = 0
        if st.announced:
            ev = StreamReset.__new__(StreamReset)
            ev.stream_id, ev.error_code = sid, code
            self._push(ev)
        return 0


cdef class H2ClientCodec(_H2Connection):
    """The client side of one HTTP/2 connection to an upstream ("Client mode" in the module
    docstring). Creation queues the connection preface and our SETTINGS (ENABLE_PUSH 0,
    INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE; a connection WINDOW_UPDATE when the window
    is over 65535): data_to_send() returns them.

    request(headers, end_stream) -> stream id. send_data, end_stream, reset, consume,
    buffered, goaway, feed, data_to_send, and the properties open_streams, want_read,
    want_write and events: as on the server, for the request's side (send_data queues
    request body bytes, framed as the upstream's windows allow; consume gives response
    body bytes back: no WINDOW_UPDATE before it).

    Events of a stream, in order: Drained whenever its buffered request bytes fell to 0
    (from data_to_send()); ResponseHeaders once (the final head: 1xx heads are dropped;
    end_stream when it is all); Data (the last with end_stream) or Trailers ending the
    response; StreamReset(code) when the upstream reset it; last, always, StreamClosed(code):
    0 for a complete exchange; 7 (REFUSED_STREAM) for a request the upstream never
    processed, safe to retry elsewhere (above a GOAWAY's last stream id: closed in the
    feed() that brought the GOAWAY, after GoAwayReceived; still held by nghttp2 when the
    GOAWAY came: closed at the next data_to_send(); or the upstream's RST_STREAM(7)); 11 for
    a response head or trailers over max_header_list_size (the codec reset the stream);
    1 for a malformed response (nghttp2's checks); 8 after reset(). A stream closes once
    both sides ended it: a response that ends while the request body is still going (an
    early gRPC error) leaves it open until end_stream() or reset().

    Errors: request() raises StreamRefused when the connection can open no stream (GOAWAY
    received or sent, stream ids used up, connection failed); nothing was queued. feed()
    raises H2Error on a connection error (GOAWAY queued: send it, then close; the open
    streams are lost, with no StreamClosed for them). ValueError for the driver's mistakes
    (send_data on a request sent with end_stream, or after its body ended); TypeError for
    headers that are not (bytes, bytes) pairs.

    max_concurrent_streams is our own cap: can_open() is false at min(it,
    remote_max_concurrent_streams()) open streams. A request() past the upstream's limit is
    still accepted: nghttp2 holds its HEADERS until one of the streams closes."""

    cdef Py_ssize_t _max_streams
    cdef Py_ssize_t _n_refused_streams

    def __init__(self, *, int initial_window_size=65535, int max_header_list_size=65536,
                 int max_concurrent_streams=100, Py_ssize_t max_outbound_ack=1000, Py_ssize_t max_settings=32):
        cdef ng.nghttp2_settings_entry iv[3]
        if self._session != NULL:
            raise RuntimeError("H2ClientCodec.__init__ called twice")
        if max_concurrent_streams < 1 or max_header_list_size < 1 or max_outbound_ack < 1 or max_settings < 1:
            raise ValueError("limits must be positive")
        if not 0 <= initial_window_size <= 2147483647:
            raise ValueError("initial_window_size out of range")
        self._max_streams = max_concurrent_streams
        iv[0].settings_id = ng.NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[0].value = 0
        iv[1].settings_id = ng.NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = initial_window_size
        iv[2].settings_id = ng.NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[2].value = max_header_list_size
        self._setup(True, initial_window_size, max_header_list_size, max_outbound_ack, max_settings, iv, 3)

    def request(self, list headers, bint end_stream) -> int:
        """Open a stream with the request's header block ([(name, value)] bytes, lower-case
        names, :method, :scheme, :authority, :path first); with end_stream False the body
        follows through send_data()/end_stream(). Returns the new stream id (HEADERS go
        out at the next data_to_send()). Raises StreamRefused when this connection can open
        no stream: nothing was queued."""
        cdef ng.nghttp2_nv stack[STACK_NV]
        cdef ng.nghttp2_nv *nva = stack
        cdef ng.nghttp2_data_provider prd
        cdef Py_ssize_t n = len(headers)
        cdef int32_t sid
        cdef _Stream st
        if self._dead or self._failed:
            raise StreamRefused(f"the connection failed: {self._fail_reason}")
        if self._goaway_queued or not ng.nghttp2_session_check_request_allowed(self._session):
            raise StreamRefused(self._refusal())
        st = _Stream.__new__(_Stream)
        if n > STACK_NV:
            nva = <ng.nghttp2_nv *>malloc(n * sizeof(ng.nghttp2_nv))
            if nva == NULL:
                raise MemoryError()
        try:
            _fill_nva(headers, nva)
            if end_stream:
                sid = ng.nghttp2_submit_request(self._session, NULL, nva, n, NULL, <void *>st)
            else:
                prd.source.ptr = <void *>st
                prd.read_callback = _read_callback
                sid = ng.nghttp2_submit_request(self._session, NULL, nva, n, &prd, <void *>st)
        finally:
            if nva != stack:
                free(nva)
        if sid == ng.NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE:
            raise StreamRefused("stream ids used up")
        if sid < 0:
            raise ValueError(f"request refused by nghttp2: {ng.nghttp2_strerror(sid).decode()}")
        st.sid = sid
        st.announced = st.answered = True
        st.provider = not end_stream
        st.finished = end_stream
        self._streams[sid] = st
        self._n_streams += 1
        return sid

    def remote_max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS: nghttp2's assumption (100) until the
        peer's SETTINGS came, 2^32-1 when the peer set no limit."""
        return ng.nghttp2_session_get_remote_settings(self._session, ng.NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)

    def can_open(self) -> bool:
        """Whether request() may open one more stream now: the connection is alive, no
        GOAWAY came or went, stream ids remain, and fewer than min(max_concurrent_streams,
        remote_max_concurrent_streams()) streams are open."""
        if self._dead or self._failed or self._goaway_queued or not ng.nghttp2_session_check_request_allowed(
                self._session):
            return False
        return len(self._streams) < min(<uint32_t>self._max_streams, ng.nghttp2_session_get_remote_settings(
            self._session, ng.NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))

    def statistics(self) -> dict:
        """The server's counters (rst_premature and rapid_reset stay 0: no limiter here;
        refused_data_bytes: response bytes of streams reset for their head's size, given
        back at once), and refused_streams: streams closed with REFUSED_STREAM."""
        return {"streams": self._n_streams, "rst_received": self._n_rst_received, "rst_premature": 0,
                "rst_sent": self._n_rst_sent, "rapid_reset": 0, "flood": self._n_flood,
                "header_overflow": self._n_header_overflow, "invalid_frames": self._n_invalid,
                "goaway_received": self._n_goaway_received, "refused_data_bytes": self._n_refused_data,
                "refused_streams": self._n_refused_streams}

    cdef str _refusal(self):
        if self._n_goaway_received:
            return "the peer sent GOAWAY"
        if self._goaway_queued:
            return "GOAWAY sent"
        if ng.nghttp2_session_get_next_stream_id(self._session) > 2147483647:
            return "stream ids used up"
        return "the connection is closing"

    # ---- the callbacks' work ----------------------------------------------------------

    cdef int _frame_recv(self, const ng.nghttp2_frame *frame) except -1:
        cdef uint8_t kind = frame.hd.type
        cdef int32_t sid = frame.hd.stream_id
        cdef _Stream st
        cdef ResponseHeaders resp
        cdef Trailers tr
        cdef ng.nghttp2_vec status
        if kind == ng.NGHTTP2_DATA:
            if frame.hd.flags & ng.NGHTTP2_FLAG_END_STREAM:
                st = _stream_of(self._session, sid)
                if st is not None and st.responded:
                    _end_of_data(self, sid)
            self._last_data = None
        elif kind == ng.NGHTTP2_HEADERS:
            st = _stream_of(self._session, sid)
            if st is None:
                self._release_headers()
            elif self._hdr_overflow:  # over max_header_list_size (see _header): the stream goes
                st.refused = True  # its StreamClosed says 11 even when this block ends it
                if not st.reset and not (frame.hd.flags & ng.NGHTTP2_FLAG_END_STREAM
                                         and ng.nghttp2_session_get_stream_local_close(self._session, sid)):
                    ng.nghttp2_submit_rst_stream(self._session, ng.NGHTTP2_FLAG_NONE, sid,
                                                 ng.NGHTTP2_ENHANCE_YOUR_CALM)
                _drop_output(st)
            elif st.responded:
                tr = Trailers.__new__(Trailers)
                tr.stream_id, tr.headers = sid, self._take_headers()
                self._push(tr)
            else:
                if self._nhdrs:  # nghttp2 checked :status comes first, 3 digits
                    status = ng.nghttp2_rcbuf_get_buf(self._hdrs[1])
                    if status.base[0] == 49:  # 1xx: informational, not delivered
                        self._release_headers()
                        return 0
                resp = ResponseHeaders.__new__(ResponseHeaders)
                resp.stream_id, resp.headers = sid, self._take_headers()
                resp.end_stream = (frame.hd.flags & ng.NGHTTP2_FLAG_END_STREAM) != 0
                st.responded = True
                self._push(resp)
        else:
            return _H2Connection._frame_recv(self, frame)
        return 0

    cdef int _data_chunk(self, int32_t sid, const uint8_t *data, size_t length) except -1:
        cdef _Stream st = _stream_of(self._session, sid)
        if st is None or not st.responded:
            return self._drop_data(sid, length)  # the stream was reset for its head's size
        return _deliver_data(self, st, data, length)

    cdef int _stream_close(self, int32_t sid, uint32_t code) except -1:
        cdef _Stream st = self._live(sid)
        if st is not None and st.refused and code == ng.NGHTTP2_NO_ERROR:
            code = ng.NGHTTP2_ENHANCE_YOUR_CALM  # a head over the limit that ended the stream: not a success
        if code == ng.NGHTTP2_REFUSED_STREAM:
            self._n_refused_streams += 1
        return _H2Connection._stream_close(self, sid, code)


# ---- nghttp2's callbacks: C functions handing over to the codec, keeping its exception --

cdef int _on_begin_headers(ng.nghttp2_session *s, const ng.nghttp2_frame *frame, void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    if frame.hd.type != ng.NGHTTP2_HEADERS:
        return 0
    try:
        return self._begin_headers(frame)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_begin_frame(ng.nghttp2_session *s, const ng.nghttp2_frame_hd *hd, void *user_data) noexcept:
    cdef H2Codec self = <H2Codec>user_data  # the server's table only
    try:
        return self._begin_frame(hd)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_header(ng.nghttp2_session *s, const ng.nghttp2_frame *frame, ng.nghttp2_rcbuf *name,
                    ng.nghttp2_rcbuf *value, uint8_t flags, void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    if frame.hd.type != ng.NGHTTP2_HEADERS:
        return 0
    try:
        return self._header(frame, name, value)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_frame_recv(ng.nghttp2_session *s, const ng.nghttp2_frame *frame, void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    try:
        return self._frame_recv(frame)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_invalid_frame_recv(ng.nghttp2_session *s, const ng.nghttp2_frame *frame, int lib_error_code,
                                void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    self._n_invalid += 1
    if frame.hd.type == ng.NGHTTP2_HEADERS:
        self._release_headers()
    return 0


cdef int _on_data_chunk_recv(ng.nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                             size_t length, void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    try:
        return self._data_chunk(stream_id, data, length)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_stream_close(ng.nghttp2_session *s, int32_t stream_id, uint32_t error_code,
                          void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    try:
        return self._stream_close(stream_id, error_code)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _before_frame_send(ng.nghttp2_session *s, const ng.nghttp2_frame *frame, void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    try:
        return self._before_send(frame)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_frame_send(ng.nghttp2_session *s, const ng.nghttp2_frame *frame, void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    try:
        return self._frame_send(frame)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef ssize_t _read_callback(ng.nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
                               uint32_t *data_flags, ng.nghttp2_data_source *source, void *user_data) noexcept:
    cdef _H2Connection self = <_H2Connection>user_data
    try:
        return self._read(<_Stream>source.ptr, buf, length, data_flags)
    except BaseException as exc:
        self._error = exc
        return ng.NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _make_callbacks(ng.nghttp2_session_callbacks **table, bint server) except -1:
    cdef ng.nghttp2_session_callbacks *cbs
    if ng.nghttp2_session_callbacks_new(table) != 0:
        raise MemoryError()
    cbs = table[0]
    ng.nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, _on_begin_headers)
    if server:  # the client's stream ids are its own: nothing to check
        ng.nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, _on_begin_frame)
    ng.nghttp2_session_callbacks_set_on_header_callback2(cbs, _on_header)
    ng.nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, _on_frame_recv)
    ng.nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, _on_invalid_frame_recv)
    ng.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, _on_data_chunk_recv)
    ng.nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _on_stream_close)
    ng.nghttp2_session_callbacks_set_before_frame_send_callback(cbs, _before_frame_send)
    ng.nghttp2_session_callbacks_set_on_frame_send_callback(cbs, _on_frame_send)
    return 0


_make_callbacks(&_CALLBACKS, True)
_make_callbacks(&_CLIENT_CALLBACKS, False)
