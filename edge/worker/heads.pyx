# cython: language_level=3
"""The two heads every proxied request writes, compiled: the upstream request head and
the client response head. Pure functions of their arguments (the decisions about which
headers go where are `proxy.HeaderRules`, prepared once per table generation).

Why compiled: in Python each header line was a `%` format and a list item, 1.27 + 1.08 µs
per request in bench.micro; here the lines are copied into one reused buffer.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport realloc
from libc.string cimport memcpy

from random import getrandbits

from edge.worker.proto.h1 import REASONS

cdef dict _REASONS = REASONS

# One buffer for the head being written. A worker is one thread and no head function
# calls back into Python code that could write another head before this one is taken.
cdef char *_buf = NULL
cdef Py_ssize_t _cap = 0
cdef Py_ssize_t _len = 0


cdef int _grow(Py_ssize_t more) except -1:
    global _buf, _cap
    cdef Py_ssize_t cap = max(_len + more, 2 * _cap, 4096)
    cdef char *grown = <char *>realloc(_buf, <size_t>cap)
    if grown == NULL:
        raise MemoryError()
    _buf = grown
    _cap = cap
    return 0


cdef inline int _put(const char *s, Py_ssize_t n) except -1:
    global _len
    if _len + n > _cap:
        _grow(n)
    memcpy(_buf + _len, s, <size_t>n)
    _len += n
    return 0


cdef inline int _put_bytes(bytes b) except -1:
    if b is None:  # a typed argument admits None, and reading its bytes would crash
        raise TypeError("a part of a head is None, not bytes")
    return _put(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef inline int _put_line(bytes name, bytes value) except -1:
    _put_bytes(name)
    _put(b": ", 2)
    _put_bytes(value)
    _put(b"\r\n", 2)
    return 0


cdef int _put_int(long long value) except -1:
    cdef char digits[24]
    cdef int i = 24
    cdef bint negative = value < 0
    if negative:
        value = -value
    while True:
        i -= 1
        digits[i] = <char>(48 + value % 10)
        value //= 10
        if value == 0:
            break
    if negative:
        i -= 1
        digits[i] = 45  # "-"
    return _put(digits + i, 24 - i)


# x-request-id values in the version-4 UUID format: 74 random bits drawn once per process,
# then a 48-bit counter in the last 12 hex digits. Request ids must be unique, not secret;
# uuid.uuid4() costs a getrandom syscall per call, this a counter.
cdef char _request_id[36]
cdef unsigned long long _request_count
cdef const char *_HEX_DIGITS = b"0123456789abcdef"


def _seed_request_ids():
    global _request_count
    h = b"%032x" % (getrandbits(128) & ~((0xF000 << 64) | (0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48))
    prefix = b"%b-%b-%b-%b-" % (h[:8], h[8:12], h[12:16], h[16:20])
    memcpy(_request_id, <const char *>prefix, 24)
    _request_count = getrandbits(47)  # random start: two processes seldom share a prefix and a count


_seed_request_ids()


cdef int _put_request_id() except -1:
    global _request_count
    _request_count = (_request_count + 1) & 0xFFFFFFFFFFFF
    cdef unsigned long long count = _request_count
    cdef int i
    for i in range(35, 23, -1):
        _request_id[i] = _HEX_DIGITS[count & 15]
        count >>= 4
    return _put(_request_id, 36)


cdef bytes _take():
    global _len
    out = PyBytes_FromStringAndSize(_buf, _len)
    _len = 0
    return out


def request_head(bytes method, str path, str query, list headers, *, connection, str client_ip, bytes xfp,
                 bint trust_xff, original_path, rules, bint suppress_envoy, bint chunked, content_length):
    """The upstream request head (HTTP/1.1, keep-alive) for one target of a route.
    `connection` holds the tokens of the client's Connection header (dropped too);
    `rules` is the target's proxy.HeaderRules."""
    global _len
    _len = 0
    cdef frozenset drop = rules.request_drop | connection if connection else rules.request_drop
    cdef object host_rewrite = rules.host_rewrite
    cdef bint has_xrid = False
    cdef object xff = None
    cdef tuple pair
    cdef bytes name, value
    _put_bytes(method)
    _put(b" ", 1)
    _put_bytes((path + "?" + query if query else path).encode())
    _put(b" HTTP/1.1\r\n", 11)
    for pair in headers:
        name = pair[0]
        value = pair[1]
        if name in drop:
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        if name == b"x-forwarded-proto":
            if trust_xff:
                xfp = value
            continue
        if name == b"host" and host_rewrite is not None:
            value = host_rewrite
        elif name == b"x-request-id":
            has_xrid = True
        _put_line(name, value)
    _put_line(b"x-forwarded-for", client_ip.encode() if xff is None else xff + b", " + client_ip.encode())
    _put_line(b"x-forwarded-proto", xfp)
    if not has_xrid:
        _put(b"x-request-id: ", 14)
        _put_request_id()
        _put(b"\r\n", 2)
    if original_path is not None and not suppress_envoy:
        _put_line(b"x-envoy-original-path", original_path.encode())
    _put_bytes(rules.request_add)
    if chunked:
        _put_bytes(b"transfer-encoding: chunked\r\n")
    elif content_length is not None:
        _put_bytes(b"content-length: ")
        _put_int(content_length)
        _put(b"\r\n", 2)
    _put(b"\r\n", 2)
    return _take()


def response_head(int status, bytes reason, list headers, *, connection, rules, bytes server, service_time_ms,
                  bytes framing, bint close, bytes extra=b""):
    """The head sent to the client. `framing` is the content-length/transfer-encoding
    line (or b"") chosen by the caller; `service_time_ms` None omits the envoy header;
    `connection` holds the tokens of the upstream's Connection header (dropped too);
    `extra` is header lines to add (rate-limit headers)."""
    global _len
    _len = 0
    cdef frozenset drop = rules.response_drop | connection if connection else rules.response_drop
    cdef tuple pair
    _put(b"HTTP/1.1 ", 9)
    _put_int(status)
    _put(b" ", 1)
    _put_bytes(_REASONS.get(status) or reason or b"Unknown")
    _put(b"\r\n", 2)
    for pair in headers:
        if pair[0] not in drop:
            _put_line(pair[0], pair[1])
    _put_bytes(rules.response_add)
    _put_bytes(extra)
    _put_line(b"server", server)
    if service_time_ms is not None:
        _put_bytes(b"x-envoy-upstream-service-time: ")
        _put_int(service_time_ms)
        _put(b"\r\n", 2)
    _put_bytes(framing)
    if close:
        _put_bytes(b"connection: close\r\n")
    _put(b"\r\n", 2)
    return _take()
