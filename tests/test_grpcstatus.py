"""gRPC's rules for edge's own answers: statuses as Envoy maps them, grpc-timeout, grpc-message."""

from __future__ import annotations

import pytest

from edge.worker import grpcstatus
from edge.worker.h2upstream import request_headers


@pytest.mark.parametrize("status, code", [
    (404, 12),  # no route: UNIMPLEMENTED
    (503, 14), (502, 14), (429, 14),  # upstream down, reset, rate limited: UNAVAILABLE
    (504, 4),  # timeouts: DEADLINE_EXCEEDED
    (400, 13), (401, 16), (403, 7),
    (500, 2), (418, 2),  # anything else: UNKNOWN
])
def test_local_reply_maps_the_http_status(status, code):
    fields = dict(grpcstatus.local_reply(status, b"no healthy upstream", b"application/grpc+proto"))
    assert fields[b"grpc-status"] == b"%d" % code
    assert fields[b"grpc-message"] == b"no healthy upstream"
    assert fields[b"content-type"] == b"application/grpc"


def test_local_reply_to_grpc_web_keeps_its_content_type():
    fields = dict(grpcstatus.local_reply(404, b"", b"application/grpc-web-text"))
    assert fields[b"content-type"] == b"application/grpc-web-text"
    assert fields[b"grpc-status"] == b"12"


def test_grpc_message_is_percent_encoded():
    assert grpcstatus.percent_encode(b"plain text: ok") == b"plain text: ok"
    assert grpcstatus.percent_encode(b"50% \xc3\xa9\n") == b"50%25 %C3%A9%0A"


@pytest.mark.parametrize("value, seconds", [
    (b"1S", 1.0), (b"250m", 0.25), (b"2M", 120.0), (b"1H", 3600.0), (b"100u", 1e-4), (b"5000000n", 5e-3),
    (b"99999999S", 99999999.0),
    (b"", None), (b"S", None), (b"10", None), (b"10x", None), (b"123456789S", None), (b"-1S", None), (b"1.5S", None),
])
def test_grpc_timeout(value, seconds):
    got = grpcstatus.timeout_of([(b"content-type", b"application/grpc"), (b"grpc-timeout", value)])
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def test_no_grpc_timeout():
    assert grpcstatus.timeout_of([(b"content-type", b"application/grpc")]) is None


@pytest.mark.parametrize("value, expected", [
    (b"application/grpc", b"application/grpc"), (b"application/grpc+proto", b"application/grpc+proto"),
    (b"application/grpc-web-text", b"application/grpc-web-text"), (b"Application/GRPC", b"Application/GRPC"),
    (b"application/json", None), (b"text/plain", None),
])
def test_content_type_of(value, expected):
    assert grpcstatus.content_type_of([(b"x", b"y"), (b"content-type", value)]) == expected
    assert grpcstatus.content_type_of([(b"x", b"y")]) is None


def test_request_headers_from_the_http1_head():
    head = (b"POST /echo.Echo/Unary HTTP/1.1\r\nHost: api.test\r\ncontent-type: application/grpc\r\n"
            b"TE: trailers\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\nX-Custom: A b\r\n"
            b"x-forwarded-for: 127.0.0.1\r\n\r\n")
    assert request_headers(head, b"https") == [
        (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.test"), (b":path", b"/echo.Echo/Unary"),
        (b"content-type", b"application/grpc"), (b"x-custom", b"A b"), (b"x-forwarded-for", b"127.0.0.1"),
        (b"te", b"trailers"),
    ]
