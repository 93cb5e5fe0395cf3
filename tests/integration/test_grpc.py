"""gRPC, gRPC-Web and CORS through the real `edge serve` (2 workers), with grpcio clients
and a grpcio upstream (tests/grpcserver.py: the raw-bytes echo.Echo service).

Mappings are written as Emissary users write gRPC ones: `grpc: true`, a prefix of the
service's path, `rewrite` to that same path (Emissary's default rewrite is "/") and
`timeout_ms: 0` (its default route timeout is 3 s, which would cut a stream).
gRPC-Web requests are built by hand over HTTP/1.1 (http.client) as
https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md says.
"""

from __future__ import annotations

import base64
import http.client
import queue
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from tests import grpcserver
from tests.conftest import free_port, mapping, resource
from tests.grpcserver import fail_request, gather_request, slow_request, stream_message, stream_request, summary
from tests.integration.test_tls import tls_secret
from tests.tlscerts import make_ca, make_leaf

pytestmark = pytest.mark.integration

ECHO = "/echo.Echo/"
MIB = 1 << 20


@pytest.fixture(scope="module")
def pki():
    ca = make_ca()
    return {"ca": ca, "edge": make_leaf(ca, "grpc.test", "127.0.0.1"), "upstream": make_leaf(ca, "127.0.0.1")}


@pytest.fixture
def grpc_upstream():
    with grpcserver.serving() as server:
        yield server


@pytest.fixture
def grpc_tls_upstream(pki):
    with grpcserver.serving(pki["upstream"]) as server:
        yield server


def grpc_mapping(service: str, name: str = "grpc", prefix: str = ECHO, **spec) -> str:
    return mapping(name, service, prefix, grpc=True, rewrite=prefix, **{"timeout_ms": 0, **spec})


GRPC_WEB_MODULE = resource("Module", "ambassador", {"config": {"enable_grpc_web": True}})


@pytest.fixture
def channels():
    """open(port, tls=None): a grpcio channel to edge (its own connection), closed after the test."""
    opened = []

    def open_channel(port: int, root: str | None = None, name: str = "grpc.test") -> grpc.Channel:
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own, not a shared one
        if root is None:
            chan = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=root.encode())
            chan = grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                       options=[*options, ("grpc.ssl_target_name_override", name)])
        opened.append(chan)
        return chan

    yield open_channel
    for chan in opened:
        chan.close()


def unary(chan, name: str = "Unary"):
    return chan.unary_unary(ECHO + name)


def check_the_four_call_kinds(chan) -> None:
    """Unary, client stream, server stream and bidi through `chan`: messages, metadata, trailers."""
    response, call = unary(chan).with_call(b"\x00ping\xff" * 100, metadata=[("x-call", "unary"), ("y-not", "1")],
                                           timeout=20)
    assert response == b"\x00ping\xff" * 100
    initial = dict(call.initial_metadata())
    assert initial.get("x-call") == "unary" and "y-not" not in initial, initial
    assert dict(call.trailing_metadata()).get("x-trailer") == "yes", call.trailing_metadata()
    assert call.code() is grpc.StatusCode.OK

    messages = [bytes([i]) * (i * 3001) for i in range(1, 40)]
    response, call = chan.stream_unary(ECHO + "ClientStream").with_call(iter(messages), timeout=20)
    assert response == summary(messages)
    assert call.code() is grpc.StatusCode.OK

    stream = chan.unary_stream(ECHO + "ServerStream")(stream_request(30, 100_000), timeout=20)
    got = list(stream)
    assert len(got) == 30 and all(m == stream_message(i, 100_000) for i, m in enumerate(got))
    assert dict(stream.trailing_metadata()).get("x-trailer") == "yes", stream.trailing_metadata()
    assert stream.code() is grpc.StatusCode.OK

    bidi = Bidi(chan, metadata=[("x-call", "bidi")])
    try:
        for i in range(20):
            message = f"message {i} ".encode() * (i * 50 + 1)
            assert bidi.echo(message) == message
        assert dict(bidi.responses.initial_metadata()).get("x-call") == "bidi"
        bidi.finish()
    finally:
        bidi.abandon()


class Bidi:
    """An open Bidi call: echo(message) sends one message and returns the one that comes
    back; finish() half-closes and checks nothing more came; abandon() cancels it (finally)."""

    def __init__(self, chan, metadata=(), timeout: float = 120):
        self.sent: queue.Queue = queue.Queue()
        self.responses = chan.stream_stream(ECHO + "Bidi")(iter(self.sent.get, None), metadata=metadata,
                                                          timeout=timeout)

    def echo(self, message: bytes) -> bytes:
        self.sent.put(message)
        return next(self.responses)  # bounded by the call's deadline

    def finish(self) -> None:
        self.sent.put(None)
        rest = list(self.responses)
        assert rest == [], rest
        assert self.responses.code() is grpc.StatusCode.OK, self.responses.details()

    def abandon(self) -> None:
        self.sent.put(None)
        self.responses.cancel()  # a no-op once the call is over


# -- the call kinds, cleartext and TLS on either side -----------------------------------------


def test_the_four_call_kinds_over_h2c(make_edge, grpc_upstream, channels):
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)})
    check_the_four_call_kinds(channels(edge.port))


def test_the_four_call_kinds_over_tls_to_edge(make_edge, grpc_upstream, channels, pki):
    edge = make_edge({
        "secrets.yaml": tls_secret("grpc-cert", pki["edge"]),
        "hosts.yaml": resource("Host", "grpc", {"hostname": "*", "tlsSecret": {"name": "grpc-cert"}}),
        "m.yaml": grpc_mapping(grpc_upstream.service),
    }, protocol="HTTPS")
    check_the_four_call_kinds(channels(edge.port, root=pki["ca"].cert_pem))


def test_the_four_call_kinds_to_a_tls_grpc_upstream(make_edge, grpc_tls_upstream, channels):
    assert grpc_tls_upstream.service.startswith("https://127.0.0.1:")
    edge = make_edge({"m.yaml": grpc_mapping(grpc_tls_upstream.service)})
    check_the_four_call_kinds(channels(edge.port))


# -- deadlines ---------------------------------------------------------------------------------


def wait_for(what, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"never true: {what.__doc__ or what}"
        time.sleep(0.02)


def test_a_client_deadline_ends_the_call_and_the_upstream_stops_working_on_it(make_edge, grpc_upstream, channels):
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)})
    chan = channels(edge.port)
    assert unary(chan, "Slow")(slow_request(10), timeout=20) == b"done"  # the route works
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        unary(chan, "Slow")(slow_request(2000), timeout=0.3)
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.8
    # edge passed the end on (grpc-timeout, or a reset of the upstream stream): the upstream
    # saw the call end before its 2 s were up, and never finished it
    wait_for(lambda: grpc_upstream.cancelled == 1)
    assert grpc_upstream.completed == 1


def h2_grpc_call(port: int, path: str, message: bytes, headers: list[tuple[bytes, bytes]] = (),
                 timeout: float = 20) -> tuple[dict, dict, bytes]:
    """One gRPC call with the h2 library, which (unlike grpcio) never gives up on its own:
    whatever ends the call is edge's doing. Returns (headers, trailers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"POST"), (b":path", path.encode()), (b":scheme", b"http"),
                                (b":authority", b"grpc.test"), (b"content-type", b"application/grpc"),
                                (b"te", b"trailers"), *headers])
        conn.send_data(sid, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
        sock.sendall(conn.data_to_send())
        head, trailers, body = {}, {}, b""
        while True:
            data = sock.recv(65536)
            assert data, "edge closed the connection before the call ended"
            ended = False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    head = dict(event.headers)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"edge reset the stream: {event.error_code!r}")
                ended |= isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
            if ended:
                return head, trailers, body


def test_grpc_timeout_is_honoured_by_edge(make_edge, grpc_upstream):
    """grpc-timeout: 300m on a call the upstream takes 2 s over, from a client that never times
    out by itself: edge ends it with DEADLINE_EXCEEDED well before the 2 s."""
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)})
    head, trailers, body = h2_grpc_call(edge.port, ECHO + "Slow", slow_request(10))
    assert (head[b":status"], {**head, **trailers}.get(b"grpc-status")) == (b"200", b"0")  # the route works
    start = time.monotonic()
    head, trailers, body = h2_grpc_call(edge.port, ECHO + "Slow", slow_request(2000),
                                        headers=[(b"grpc-timeout", b"300m")])
    took = time.monotonic() - start
    status = {**head, **trailers}.get(b"grpc-status")
    assert head[b":status"] == b"200" and status == b"4", (head, trailers, body)
    assert took < 1.8, took
    wait_for(lambda: grpc_upstream.cancelled == 1)  # and the upstream's call ended with it


def test_a_mapping_timeout_gives_deadline_exceeded(make_edge, grpc_upstream, channels):
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)
                      + grpc_mapping(grpc_upstream.service, "slow", ECHO + "Slow", timeout_ms=200)})
    chan = channels(edge.port)
    assert unary(chan, "Slow")(slow_request(10), timeout=20) == b"done"
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        unary(chan, "Slow")(slow_request(2000), timeout=20)  # the client would wait: edge's timeout ends it
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
    assert time.monotonic() - start < 1.8
    assert unary(chan)(b"other routes", timeout=20) == b"other routes"  # no timeout on the other Mapping


# -- errors as gRPC statuses -------------------------------------------------------------------


def test_edges_own_errors_are_grpc_statuses(make_edge, grpc_upstream, channels):
    """No Mapping for the method: UNIMPLEMENTED; nothing listening where the Mapping points: UNAVAILABLE."""
    dead = free_port()  # nothing listens there
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)
                      + grpc_mapping(f"127.0.0.1:{dead}", "dead", "/dead.Dead/")})
    chan = channels(edge.port)
    with pytest.raises(grpc.RpcError) as failed:
        chan.unary_unary("/unmapped.Service/Method")(b"x", timeout=20)
    assert failed.value.code() is grpc.StatusCode.UNIMPLEMENTED, failed.value
    with pytest.raises(grpc.RpcError) as failed:
        chan.unary_unary("/dead.Dead/Method")(b"x", timeout=20)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, failed.value
    assert unary(chan)(b"still fine", timeout=20) == b"still fine"  # the connection outlived them


def test_an_upstream_abort_passes_through_with_its_code_and_message(make_edge, grpc_upstream, channels):
    """grpcio answers an abort trailers-only (one HEADERS frame with END_STREAM holding
    grpc-status and grpc-message): the client must get that code and message, not UNKNOWN."""
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)})
    chan = channels(edge.port)
    for code, message in ((grpc.StatusCode.NOT_FOUND, "no such thing"),
                          (grpc.StatusCode.PERMISSION_DENIED, "not you: caf\u00e9 100%"),
                          (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")):
        with pytest.raises(grpc.RpcError) as failed:
            unary(chan, "Fail")(fail_request(code, message), timeout=20)
        assert (failed.value.code(), failed.value.details()) == (code, message)
    assert unary(chan)(b"still fine", timeout=20) == b"still fine"  # the connection outlived them


# -- streams: memory, table swaps, concurrency -------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_100_mb_server_stream_arrives_whole_and_workers_stay_small(make_edge, grpc_upstream, channels):
    """1600 messages of 64 KiB through edge, with the reader pausing midway until the
    upstream stops sending (flow control): every byte arrives in order, and no worker's
    resident memory reaches 150 MB at any sample taken during the stream."""
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)})
    pids = edge.worker_pids()
    assert len(pids) == 2 and all(pids), pids
    peak = {pid: rss_mib(pid) for pid in pids}
    samples = [0]
    streaming = threading.Event()
    streaming.set()

    def sample():
        while streaming.is_set():
            for pid in pids:
                peak[pid] = max(peak[pid], rss_mib(pid))
            samples[0] += 1
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    count, size = 1600, 64 * 1024
    received = 0
    stalled_at = None
    try:
        stream = channels(edge.port).unary_stream(ECHO + "ServerStream")(stream_request(count, size), timeout=300)
        for i, message in enumerate(stream):
            assert message == stream_message(i, size), f"message {i} differs"
            received += len(message)
            if i == 100:  # a slow reader: wait until the upstream stops, held back by flow control
                last, still_since = grpc_upstream.streamed, time.monotonic()
                give_up = time.monotonic() + 30
                while time.monotonic() - still_since < 1.0 and time.monotonic() < give_up:
                    time.sleep(0.1)
                    if grpc_upstream.streamed != last:
                        last, still_since = grpc_upstream.streamed, time.monotonic()
                stalled_at = last
        assert stream.code() is grpc.StatusCode.OK
    finally:
        streaming.clear()
        sampler.join(10)
    assert received == count * size
    assert samples[0] >= 2, samples
    # while the reader stopped at message 101, the upstream could not send the rest
    assert stalled_at is not None and stalled_at < count, stalled_at
    assert all(mib < 150 for mib in peak.values()), f"worker RSS peaks (MiB): {peak}"


def applied(edge, previous: int) -> int:
    """The generation after `previous` (a change was just written), once every worker serves it."""
    deadline = time.monotonic() + 20
    while (generation := edge.config()["generation"]) <= previous:
        assert time.monotonic() < deadline, f"no generation after {previous} was published"
        time.sleep(0.01)
    edge.wait_generation(generation, timeout=20)
    return generation


def test_table_swaps_never_reset_an_open_stream(make_edge, grpc_upstream, upstream, channels):
    """A Bidi call stays open and echoes while 50 configurations apply, among them changes
    of its own Mapping (an added request header, which new calls see and it does not)."""
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)})
    chan = channels(edge.port)
    generation = edge.config()["generation"]
    bidi = Bidi(chan, metadata=[("x-stream", "kept")], timeout=300)
    try:
        assert bidi.echo(b"before") == b"before"
        for i in range(50):
            if i % 10 == 9:  # the stream's own Mapping changes: new calls get the header
                edge.write("m.yaml", grpc_mapping(grpc_upstream.service, add_request_headers={"x-gen": str(i)}))
            else:
                edge.write("other.yaml", mapping(f"other-{i}", upstream.service, f"/other-{i}/"))
            generation = applied(edge, generation)
            message = f"after change {i}".encode()
            assert bidi.echo(message) == message, i
            if i % 10 == 9:
                _, call = unary(chan).with_call(b"new call", timeout=20)
                assert dict(call.initial_metadata()).get("x-gen") == str(i), call.initial_metadata()
        initial = dict(bidi.responses.initial_metadata())
        assert initial.get("x-stream") == "kept" and "x-gen" not in initial, initial  # its table: the first
        bidi.finish()
    finally:
        bidi.abandon()


def test_hundreds_of_concurrent_calls_are_multiplexed_to_the_upstream(make_edge, grpc_upstream, channels):
    """200 calls over 4 client connections, all in the upstream at once (Gather answers only
    when all 200 are there), on far fewer upstream connections than calls."""
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service)})
    chans = [channels(edge.port) for _ in range(4)]
    calls = [unary(chans[i % 4], "Gather").future(gather_request("all", 200), timeout=60) for i in range(200)]
    results = [c.result() for c in calls]
    assert results == [b"gathered"] * 200
    assert len(grpc_upstream.peers) <= 16, grpc_upstream.peers
    # and plain calls after them still work on the same connections
    ok = [unary(chans[i % 4]).future(f"call {i}".encode(), timeout=60) for i in range(200)]
    assert [c.result() for c in ok] == [f"call {i}".encode() for i in range(200)]


# -- gRPC-Web and CORS -------------------------------------------------------------------------


def web_frame(message: bytes, flags: int = 0) -> bytes:
    return bytes((flags,)) + len(message).to_bytes(4, "big") + message


def web_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while body:
        assert len(body) >= 5, f"a truncated frame: {body!r}"
        length = int.from_bytes(body[1:5], "big")
        assert len(body) >= 5 + length, f"a truncated frame: {body[:5]!r} and {len(body) - 5} bytes"
        frames.append((body[0], body[5:5 + length]))
        body = body[5 + length:]
    return frames


def b64decode_chunks(text: bytes) -> bytes:
    """grpc-web-text: base64 that may be several padded pieces end to end."""
    text = b"".join(text.split())
    assert len(text) % 4 == 0, text
    return b"".join(base64.b64decode(text[i:i + 4], validate=True) for i in range(0, len(text), 4))


def trailer_block(payload: bytes) -> dict[str, str]:
    fields = {}
    for line in payload.decode().split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return fields


def web_call(port: int, method: str, messages: list[bytes], text: bool = False, headers: dict | None = None):
    """A gRPC-Web call over HTTP/1.1: (status, headers by lower-case name, data messages, trailers)."""
    body = b"".join(web_frame(m) for m in messages)
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", ECHO + method, base64.b64encode(body) if text else body,
                     {"content-type": content_type, "accept": content_type, "x-grpc-web": "1",
                      "x-user-agent": "grpc-web-javascript/0.1", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    head = {k.lower(): v for k, v in response.getheaders()}
    frames = web_frames(b64decode_chunks(raw) if text else raw)
    data = [payload for flags, payload in frames if not flags & 0x80]
    trailers = [payload for flags, payload in frames if flags & 0x80]
    assert len(trailers) <= 1 and all(flags in (0, 0x80) for flags, _ in frames), frames
    assert not trailers or frames[-1][0] == 0x80, "data after the trailers"
    return response.status, head, data, trailer_block(trailers[0]) if trailers else {}


def test_grpc_web_binary_unary(make_edge, grpc_upstream):
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service), "module.yaml": GRPC_WEB_MODULE})
    status, head, data, trailers = web_call(edge.port, "Unary", [b"\x00web\xff" * 10], headers={"x-web": "1"})
    assert status == 200
    assert head["content-type"].startswith("application/grpc-web"), head
    assert not head["content-type"].startswith("application/grpc-web-text"), head  # binary asked, binary given
    assert data == [b"\x00web\xff" * 10]
    assert trailers.get("grpc-status") == "0", trailers
    assert trailers.get("x-trailer") == "yes", trailers
    assert head.get("x-web") == "1"  # initial metadata are the response's headers


def test_grpc_web_text_unary(make_edge, grpc_upstream):
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service), "module.yaml": GRPC_WEB_MODULE})
    status, head, data, trailers = web_call(edge.port, "Unary", [bytes(range(256))], text=True)
    assert status == 200
    assert head["content-type"].startswith("application/grpc-web-text"), head
    assert data == [bytes(range(256))]
    assert trailers.get("grpc-status") == "0", trailers


def test_grpc_web_server_stream(make_edge, grpc_upstream):
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service), "module.yaml": GRPC_WEB_MODULE})
    for text in (False, True):
        status, head, data, trailers = web_call(edge.port, "ServerStream", [stream_request(25, 40_000)], text=text)
        assert status == 200
        assert len(data) == 25 and all(m == stream_message(i, 40_000) for i, m in enumerate(data)), text
        assert trailers.get("grpc-status") == "0" and trailers.get("x-trailer") == "yes", trailers


def test_grpc_web_errors_carry_grpc_status(make_edge, grpc_upstream):
    """An upstream's abort, and edge's own no-route answer: grpc-status in the trailer frame
    (or, for a trailers-only answer, in the HTTP headers), HTTP status 200."""
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service), "module.yaml": GRPC_WEB_MODULE})
    status, head, data, trailers = web_call(edge.port, "Fail", [fail_request(grpc.StatusCode.NOT_FOUND, "gone")])
    outcome = {**head, **trailers}
    assert (status, outcome.get("grpc-status"), outcome.get("grpc-message"), data) == (200, "5", "gone", [])
    assert head.get("content-type", "").startswith("application/grpc-web"), head  # translated, not gRPC's own
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=20)
    conn.request("POST", "/unmapped.Service/Method", web_frame(b"x"),
                 {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"})
    response = conn.getresponse()
    frames = web_frames(response.read())
    conn.close()
    outcome = {**{k.lower(): v for k, v in response.getheaders()},
               **{k: v for flags, p in frames if flags & 0x80 for k, v in trailer_block(p).items()}}
    assert response.status == 200 and outcome.get("grpc-status") == "12", (response.status, outcome)


CORS = {"origins": ["https://app.example"], "methods": ["POST", "OPTIONS"],
        "headers": ["content-type", "x-grpc-web", "x-user-agent"],
        "exposed_headers": ["grpc-status", "grpc-message"], "max_age": "86400"}


def names(value: str | None) -> set[str]:
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


def preflight(port: int, origin: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("OPTIONS", ECHO + "Unary", headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web,x-user-agent"})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_cors_preflight_and_a_grpc_web_call_from_an_allowed_origin(make_edge, grpc_upstream):
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service, cors=CORS), "module.yaml": GRPC_WEB_MODULE})
    status, head = preflight(edge.port, "https://app.example")
    assert status == 200, (status, head)
    assert head.get("access-control-allow-origin") == "https://app.example", head
    assert names(head.get("access-control-allow-methods")) == {"post", "options"}, head
    assert names(head.get("access-control-allow-headers")) == {"content-type", "x-grpc-web", "x-user-agent"}, head
    assert head.get("access-control-max-age") == "86400", head

    status, head, data, trailers = web_call(edge.port, "Unary", [b"from the browser"],
                                            headers={"origin": "https://app.example"})
    assert (status, data, trailers.get("grpc-status")) == (200, [b"from the browser"], "0"), (status, head, trailers)
    assert head.get("access-control-allow-origin") == "https://app.example", head
    assert names(head.get("access-control-expose-headers")) >= {"grpc-status", "grpc-message"}, head


def test_cors_allows_nothing_to_other_origins(make_edge, grpc_upstream):
    edge = make_edge({"m.yaml": grpc_mapping(grpc_upstream.service, cors=CORS), "module.yaml": GRPC_WEB_MODULE})
    _, head = preflight(edge.port, "https://evil.example")
    assert head.get("access-control-allow-origin") in (None, ""), head
    status, head, data, _ = web_call(edge.port, "Unary", [b"x"], headers={"origin": "https://evil.example"})
    assert head.get("access-control-allow-origin") in (None, ""), head
