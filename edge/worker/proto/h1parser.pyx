# cython: language_level=3
"""HTTP/1.1 parsers, sans-IO: bytes in, events out (llhttp underneath, Node.js's parser).

`RequestParser` reads what clients send and enforces our framing rules on top of llhttp
(which itself rejects obs-fold, bare CR/LF and control characters in header values):
every request-smuggling shape (Content-Length with Transfer-Encoding, conflicting lengths,
codings other than chunked, obs-fold, CR/LF/NUL in values, duplicate Host) is a
ClientError(400), oversized heads a ClientError(431). `ResponseParser` reads upstream
responses; its errors are UpstreamError (the upstream's fault: 502).

Why compiled: llhttp reports a message piece by piece through callbacks. Through httptools
every callback was a Python call (URL, each header, head, body, end), which cost 5.4 µs of
a 33 µs proxied request (measured in bench/micro's request cycle). Here the callbacks are
C; Python objects are made once per header and once per head, and the head's framing rules
stay the Python functions of `messages`.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from collections import deque

from edge.worker.proto cimport llhttp as ll

from edge.worker.proto.messages import (
    END,
    NO_TOKENS,
    REQUEST_SPECIAL,
    RESPONSE_SPECIAL,
    UNFINISHED_HEAD_SLACK,
    Body,
    ClientError,
    End,
    PriorKnowledge,
    Request,
    Response,
    UpstreamError,
    connection_tokens,
    framing,
    head_size,
)

cdef str V11 = "1.1"
cdef str V10 = "1.0"


cdef bytes _lowered(const char *at, size_t length):
    """A new bytes object holding `at[:length]` with ASCII letters lower-cased.

    Made empty and then filled: given the source, CPython returns its shared object for
    a one-byte string, which writing into would change for the whole process."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
    cdef char *s = PyBytes_AS_STRING(out)
    cdef size_t i
    cdef char c
    for i in range(length):
        c = at[i]
        s[i] = c + 32 if 65 <= c <= 90 else c
    return out


cdef object _plain_length(list lengths, list codings):
    """The usual framing, without a Python call: one Content-Length of up to 18 digits and
    no Transfer-Encoding gives its value; anything else None (then `framing` decides)."""
    if codings or len(lengths) != 1:
        return None
    cdef bytes value = lengths[0]
    cdef Py_ssize_t n = len(value), i
    cdef const char *s = value
    cdef long long total = 0
    if n == 0 or n > 18:
        return None
    for i in range(n):
        if not 48 <= s[i] <= 57:
            return None
        total = total * 10 + (s[i] - 48)
    return total


cdef object _tokens(list connection):
    """The tokens of the Connection headers: none for no header or for the usual single
    keep-alive or close, which name no header of their own (Keep-Alive is hop-by-hop
    anyway); else connection_tokens."""
    if not connection:
        return NO_TOKENS
    if len(connection) == 1:
        value = (<bytes>connection[0]).lower()
        if value == b"keep-alive" or value == b"close":
            return NO_TOKENS
    return connection_tokens(connection)


cdef class _Parser:
    """What both directions share: llhttp's state, the headers being collected, the
    bounds on head size. Callbacks run inside `feed`; an exception raised by one is kept
    and raised by `feed` once llhttp has stopped."""

    cdef ll.llhttp_t _p
    cdef ll.llhttp_settings_t _settings
    cdef readonly object events
    cdef public Py_ssize_t max_head
    cdef public bint in_message
    cdef list _fields  # the headers; after the head, the trailers
    cdef list _special  # the headers our framing rules look at
    cdef frozenset _special_names
    cdef object _name  # bytes of the header being read, or None between headers
    cdef object _value
    cdef bint _headers_done
    cdef Py_ssize_t _unfinished_bytes
    cdef Py_ssize_t _fed
    cdef object _error

    cdef void _start(self, ll.llhttp_type_t kind, Py_ssize_t max_head, frozenset special):
        ll.llhttp_settings_init(&self._settings)
        self._settings.on_message_begin = _on_message_begin
        self._settings.on_header_field = _on_header_field
        self._settings.on_header_value = _on_header_value
        self._settings.on_header_value_complete = _on_header_value_complete
        self._settings.on_headers_complete = _on_headers_complete
        self._settings.on_body = _on_body
        self._settings.on_message_complete = _on_message_complete
        ll.llhttp_init(&self._p, kind, &self._settings)
        self._p.data = <void *>self
        self.events = deque()
        self.max_head = max_head
        self.in_message = False
        self._special_names = special
        self._fed = 0
        self._error = None
        self._new_message()

    cdef void _new_message(self):
        self._fields = []
        self._special = []
        self._name = None
        self._value = None
        self._headers_done = False
        self._unfinished_bytes = 0

    cdef str _version(self):
        if self._p.http_major == 1:
            return V11 if self._p.http_minor == 1 else V10 if self._p.http_minor == 0 else "1.%d" % self._p.http_minor
        return "%d.%d" % (self._p.http_major, self._p.http_minor)

    cdef bint _head_too_large(self, bytes first_line, list headers):
        # measured only for large feeds: a head inside a feed no longer than the limit is within it
        return self._fed + self._unfinished_bytes > self.max_head and head_size(first_line, headers) > self.max_head

    # -- the callbacks' work (llhttp -> module functions below -> these) --
    cdef int _begin(self) except -1:
        self._new_message()
        self.in_message = True
        return 0

    cdef int _first_line(self, const char *at, size_t length) except -1:
        raise NotImplementedError

    cdef int _header_field(self, const char *at, size_t length) except -1:
        if self._name is None:
            self._name = _lowered(at, length)
        else:  # a name split across two feeds
            self._name += _lowered(at, length)
        return 0

    cdef int _header_value(self, const char *at, size_t length) except -1:
        if self._value is None:
            self._value = PyBytes_FromStringAndSize(at, <Py_ssize_t>length)
        else:
            self._value += PyBytes_FromStringAndSize(at, <Py_ssize_t>length)
        return 0

    cdef int _header_done(self) except -1:
        name = self._name
        value = b"" if self._value is None else self._value
        self._name = self._value = None
        pair = (name, value)
        self._fields.append(pair)
        if name in self._special_names:
            self._special.append(pair)
        return 0

    cdef int _head_done(self) except -1:
        raise NotImplementedError

    cdef int _body(self, const char *at, size_t length) except -1:
        self.events.append(Body(PyBytes_FromStringAndSize(at, <Py_ssize_t>length)))
        return 0

    cdef int _end(self) except -1:
        self.in_message = False
        self.events.append(End(self._fields) if self._fields else END)
        return 0

    cdef ll.llhttp_errno_t _execute(self, data, Py_ssize_t length) except *:
        cdef Py_buffer buf
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        if length < 0 or length > buf.len:
            length = buf.len
        self._fed = length
        err = ll.llhttp_execute(&self._p, <const char *>buf.buf, <size_t>length)
        PyBuffer_Release(&buf)
        return err

    cdef object _callback_error(self):
        """The exception one of our callbacks raised, if that is why llhttp stopped."""
        error = self._error
        self._error = None
        return error

    cdef str _reason(self):
        return (<bytes>ll.llhttp_get_error_reason(&self._p)).decode("latin-1")

    cdef bint _unfinished_head_too_large(self):
        if self.in_message and not self._headers_done:
            self._unfinished_bytes += self._fed
            return self._unfinished_bytes > self.max_head + UNFINISHED_HEAD_SLACK
        return False


# llhttp's callbacks: C functions that hand over to the parser object and keep its error.
cdef int _on_message_begin(ll.llhttp_t *p) noexcept:
    cdef _Parser self = <_Parser>p.data
    try:
        return self._begin()
    except BaseException as exc:
        self._error = exc
        return -1


cdef int _on_first_line(ll.llhttp_t *p, const char *at, size_t length) noexcept:
    cdef _Parser self = <_Parser>p.data
    try:
        return self._first_line(at, length)
    except BaseException as exc:
        self._error = exc
        return ll.HPE_USER


cdef int _on_header_field(ll.llhttp_t *p, const char *at, size_t length) noexcept:
    cdef _Parser self = <_Parser>p.data
    try:
        return self._header_field(at, length)
    except BaseException as exc:
        self._error = exc
        return ll.HPE_USER


cdef int _on_header_value(ll.llhttp_t *p, const char *at, size_t length) noexcept:
    cdef _Parser self = <_Parser>p.data
    try:
        return self._header_value(at, length)
    except BaseException as exc:
        self._error = exc
        return ll.HPE_USER


cdef int _on_header_value_complete(ll.llhttp_t *p) noexcept:
    cdef _Parser self = <_Parser>p.data
    try:
        return self._header_done()
    except BaseException as exc:
        self._error = exc
        return ll.HPE_USER


cdef int _on_headers_complete(ll.llhttp_t *p) noexcept:
    # 0: a body follows as framed; 1: no body whatever the head says (HEAD, upgrades)
    cdef _Parser self = <_Parser>p.data
    try:
        return self._head_done()
    except BaseException as exc:
        self._error = exc
        return -1


cdef int _on_body(ll.llhttp_t *p, const char *at, size_t length) noexcept:
    cdef _Parser self = <_Parser>p.data
    try:
        return self._body(at, length)
    except BaseException as exc:
        self._error = exc
        return ll.HPE_USER


cdef int _on_message_complete(ll.llhttp_t *p) noexcept:
    cdef _Parser self = <_Parser>p.data
    try:
        return self._end()
    except BaseException as exc:
        self._error = exc
        return -1


cdef class RequestParser(_Parser):
    """Parses a stream of pipelined requests into Request, Body and End events.

    feed(data) appends to `events`; it raises ClientError for anything malformed, after
    which the connection must be closed. `max_head` bounds request line plus headers.
    A request that upgrades the connection (an Upgrade header, or CONNECT) ends the
    parsing of that feed: its Request says `upgrade=True` and the bytes after its head
    belong to the new protocol.
    """

    cdef bytes _url

    def __init__(self, Py_ssize_t max_head=60 * 1024):
        self._start(ll.HTTP_REQUEST, max_head, REQUEST_SPECIAL)
        self._settings.on_url = _on_first_line
        self._url = b""

    cdef int _begin(self) except -1:
        _Parser._begin(self)
        self._url = b""
        return 0

    cdef int _first_line(self, const char *at, size_t length) except -1:
        self._url += PyBytes_FromStringAndSize(at, <Py_ssize_t>length)
        if len(self._url) > self.max_head:
            raise ClientError(431, "request headers too large")
        return 0

    cdef int _head_done(self) except -1:
        self._headers_done = True
        headers = self._fields
        self._fields = []
        if self._head_too_large(self._url, headers):
            raise ClientError(431, "request headers too large")
        version = self._version()
        host = None
        hosts = 0
        lengths, codings, connection = [], [], []
        expect = False
        upgrade = self._p.method == ll.HTTP_CONNECT
        for n, v in self._special:
            if n == b"host":
                host = v
                hosts += 1
            elif n == b"content-length":
                lengths.append(v)
            elif n == b"transfer-encoding":
                codings.append(v)
            elif n == b"connection":
                connection.append(v)
            elif n == b"expect":
                if v.lower() != b"100-continue":
                    raise ClientError(417, f"unsupported Expect {v[:30]!r}")
                expect = version == V11
            else:  # upgrade
                upgrade = True
        chunked, length = False, None
        if lengths or codings:
            length = _plain_length(lengths, codings)
            if length is None:
                chunked, length = framing(lengths, codings, True, version)
        if hosts > 1:
            raise ClientError(400, "more than one Host header")
        if not hosts and version == V11:
            raise ClientError(400, "HTTP/1.1 request without Host")
        method = <bytes>ll.llhttp_method_name(<ll.llhttp_method_t>self._p.method)
        self.events.append(Request(method, self._url, version, headers,
                                   bool(ll.llhttp_should_keep_alive(&self._p)), chunked, length, host, expect,
                                   upgrade, _tokens(connection),
                                   chunked or bool(length)))
        return 1 if self._p.upgrade else 0

    def feed(self, data, Py_ssize_t length=-1) -> None:
        """Parse `data` (bytes or a buffer; its first `length` bytes when given, which
        spares the caller a slice); raise ClientError on malformed or hostile input."""
        err = self._execute(data, length)
        if err != ll.HPE_OK:
            if err == ll.HPE_PAUSED_UPGRADE:
                # the Request event says upgrade=True; the bytes after it are the new protocol's
                ll.llhttp_resume_after_upgrade(&self._p)
            elif err == ll.HPE_PAUSED_H2_UPGRADE:
                raise PriorKnowledge()
            else:
                error = self._callback_error()
                if error is not None:
                    raise error
                reason = self._reason()
                raise ClientError(431 if "too large" in reason.lower() else 400, f"malformed request: {reason}")
        if self._unfinished_head_too_large():
            raise ClientError(431, "request headers too large")


cdef class ResponseParser(_Parser):
    """Parses one upstream connection's responses into Response, Body and End events.

    Call `expect_no_body()` before feeding the answer to a HEAD request. Raises
    UpstreamError on malformed responses.
    """

    cdef bytes _status_reason
    cdef bint _no_body
    cdef bint _informational
    cdef public bint close_delimited  # the body ends when the upstream closes

    def __init__(self, Py_ssize_t max_head=64 * 1024):
        self._start(ll.HTTP_RESPONSE, max_head, RESPONSE_SPECIAL)
        self._settings.on_status = _on_first_line
        self._status_reason = b""
        self._no_body = False
        self._informational = False
        self.close_delimited = False

    def expect_no_body(self):
        self._no_body = True

    cdef int _first_line(self, const char *at, size_t length) except -1:
        self._status_reason += PyBytes_FromStringAndSize(at, <Py_ssize_t>length)
        return 0

    cdef int _head_done(self) except -1:
        self._headers_done = True
        headers = self._fields
        self._fields = []
        if self._head_too_large(self._status_reason, headers):
            raise UpstreamError("response headers too large")
        status = self._p.status_code
        version = self._version()
        lengths, codings, connection = [], [], []
        for n, v in self._special:
            if n == b"content-length":
                lengths.append(v)
            elif n == b"transfer-encoding":
                codings.append(v)
            else:
                connection.append(v)
        chunked, length = False, None
        if lengths or codings:
            length = _plain_length(lengths, codings)
            if length is None:
                chunked, length = framing(lengths, codings, False, version)
        informational = 100 <= status < 200
        no_body = informational or status == 204 or status == 304 or self._no_body
        if no_body:
            chunked, length = False, None
        self.events.append(Response(status, self._status_reason, version, headers,
                                    bool(ll.llhttp_should_keep_alive(&self._p)), chunked, length,
                                    _tokens(connection),
                                    informational))
        self._status_reason = b""
        if informational:
            self._informational = True  # its message end is not the response's end
            return 0
        self.close_delimited = not no_body and not chunked and length is None
        if self._no_body:
            self._no_body = False
            return 1  # the answer to HEAD: llhttp ends the message here, whatever its length says
        return 0

    cdef int _end(self) except -1:
        if self._informational:
            self._informational = False
            return 0
        return _Parser._end(self)

    def feed(self, data, Py_ssize_t length=-1) -> None:
        """Parse `data` (bytes or a buffer; its first `length` bytes when given); raise
        UpstreamError on a malformed response."""
        err = self._execute(data, length)
        if err != ll.HPE_OK:
            if err == ll.HPE_PAUSED_UPGRADE:
                raise UpstreamError("upgrade response to a request that did not ask for one")
            error = self._callback_error()
            if error is not None:
                raise error
            raise UpstreamError(f"malformed response: {self._reason()}")
        if self._unfinished_head_too_large():
            raise UpstreamError("response headers too large")

    def feed_eof(self) -> None:
        """The upstream closed; ends a close-delimited body, else raises UpstreamError."""
        if self.in_message:
            if self.close_delimited and self._headers_done:
                self.in_message = False
                self.events.append(End([]))
                return
            raise UpstreamError("upstream closed the connection mid-response")
