"""The gRPC test upstream (tests/grpcserver.py) called directly with grpcio, no edge: every
method does what tests/integration/test_grpc.py relies on, in cleartext and over TLS."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from tests import grpcserver
from tests.grpcserver import fail_request, gather_request, slow_request, stream_message, stream_request, summary
from tests.tlscerts import make_ca, make_leaf


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(params=["h2c", "tls"])
def channel(request, ca):
    tls = make_leaf(ca, "grpc.test", "127.0.0.1") if request.param == "tls" else None
    with grpcserver.serving(tls) as server:
        if tls is None:
            chan = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.encode())
            chan = grpc.secure_channel(f"127.0.0.1:{server.port}", creds,
                                       options=[("grpc.ssl_target_name_override", "grpc.test")])
        chan.server = server
        with chan:
            yield chan


def method(chan, kind: str, name: str):
    return getattr(chan, kind)(f"/echo.Echo/{name}")


def test_service_names_the_tls_scheme_only_over_tls(ca):
    with grpcserver.serving() as plain, grpcserver.serving(make_leaf(ca, "127.0.0.1")) as tls:
        assert plain.service == f"127.0.0.1:{plain.port}"
        assert tls.service == f"https://127.0.0.1:{tls.port}"


def test_unary_echoes_the_message_and_x_metadata_and_sets_a_trailer(channel):
    response, call = method(channel, "unary_unary", "Unary").with_call(
        b"\x00hello\xff", metadata=[("x-one", "1"), ("other", "no")], timeout=10)
    assert response == b"\x00hello\xff"
    initial = dict(call.initial_metadata())
    assert initial["x-one"] == "1" and "other" not in initial
    assert ("x-trailer", "yes") in call.trailing_metadata()
    assert call.code() is grpc.StatusCode.OK


def test_client_stream_answers_count_bytes_and_digest(channel):
    messages = [bytes([i]) * (i * 1000) for i in range(20)]
    assert method(channel, "stream_unary", "ClientStream")(iter(messages), timeout=10) == summary(messages)
    assert summary(messages) == b"20 messages %d bytes" % sum(i * 1000 for i in range(20))


def test_server_stream_sends_count_messages_of_size(channel):
    got = list(method(channel, "unary_stream", "ServerStream")(stream_request(50, 70_000), timeout=10))
    assert len(got) == 50
    assert all(m == stream_message(i, 70_000) for i, m in enumerate(got))
    assert got[3][:8] == (3).to_bytes(8, "big") and len(got[3]) == 70_000


def test_bidi_echoes_each_message_as_it_comes(channel):
    sent = []
    more = threading.Semaphore(0)

    def requests():
        for i in range(10):
            more.acquire(timeout=10)
            sent.append(f"m{i}".encode())
            yield sent[-1]

    more.release()
    responses = method(channel, "stream_stream", "Bidi")(requests(), timeout=20, metadata=[("x-b", "2")])
    got = []
    for response in responses:  # the next message is sent only once this one came back
        got.append(response)
        assert response == sent[-1]
        more.release()
    assert got == [f"m{i}".encode() for i in range(10)]
    assert dict(responses.initial_metadata())["x-b"] == "2"


def test_slow_sleeps_and_stops_when_its_deadline_passes(channel):
    start = time.monotonic()
    assert method(channel, "unary_unary", "Slow")(slow_request(200), timeout=10) == b"done"
    assert time.monotonic() - start >= 0.2
    with pytest.raises(grpc.RpcError) as failed:
        method(channel, "unary_unary", "Slow")(slow_request(3000), timeout=0.2)
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while channel.server.cancelled < 1:
        assert time.monotonic() < deadline, "the server kept sleeping for a call that was over"
        time.sleep(0.05)
    assert channel.server.completed == 1


def test_the_raw_request_formats(channel):
    """The formats as written by hand: ASCII milliseconds for Slow, "CODE:message" for Fail."""
    assert method(channel, "unary_unary", "Slow")(b"20", timeout=10) == b"done"
    with pytest.raises(grpc.RpcError) as failed:
        method(channel, "unary_unary", "Fail")(b"UNAVAILABLE:try later: or not", timeout=10)
    assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.UNAVAILABLE, "try later: or not")
    assert method(channel, "stream_unary", "ClientStream")(iter([b"ab", b"cde"]), timeout=10) == b"2 messages 5 bytes"


def test_fail_aborts_with_the_requested_code_and_message(channel):
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        with pytest.raises(grpc.RpcError) as failed:
            method(channel, "unary_unary", "Fail")(fail_request(code, f"no {code.name} today"), timeout=10)
        assert failed.value.code() is code
        assert failed.value.details() == f"no {code.name} today"


def test_gather_answers_once_n_calls_are_in_flight_together(channel):
    gather = method(channel, "unary_unary", "Gather")
    with futures.ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(gather, gather_request("k", 8), timeout=20) for _ in range(8)]
        assert [c.result() for c in calls] == [b"gathered"] * 8
    assert len(channel.server.peers) == 1  # one channel, one connection


def test_gather_aborts_when_too_few_calls_come(channel, monkeypatch):
    monkeypatch.setattr(grpcserver, "GATHER_WAIT", 0.3)
    with pytest.raises(grpc.RpcError) as failed:
        method(channel, "unary_unary", "Gather")(gather_request("lonely", 2), timeout=10)
    assert failed.value.code() is grpc.StatusCode.ABORTED


def test_unknown_methods_are_unimplemented(channel):
    with pytest.raises(grpc.RpcError) as failed:
        method(channel, "unary_unary", "Nope")(b"", timeout=10)
    assert failed.value.code() is grpc.StatusCode.UNIMPLEMENTED
