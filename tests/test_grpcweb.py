"""gRPC-Web <-> gRPC translation (edge.worker.grpcweb), byte by byte, without sockets."""

from __future__ import annotations

import base64
import re

import pytest

from edge.worker.grpcweb import (GRPC_WEB_PROTO, GRPC_WEB_TEXT_PROTO, NON_GRPC_BODY_LIMIT, GrpcWebCall, GrpcWebError,
                                 is_grpc_web, split_trailers_only, wants_text)
from edge.worker.proto.messages import ClientError


def frame(payload: bytes, flag: int = 0) -> bytes:
    return bytes((flag,)) + len(payload).to_bytes(4, "big") + payload


FRAMES = [frame(b"\x0a\x05hello"), frame(b""), frame(bytes(range(256)) + bytes(44)), frame(b"x" * 7, flag=1)]
BODY = b"".join(FRAMES)
TEXT = (b"application/grpc-web-text", b"application/grpc-web-text")  # a text call: content-type, accept


def b64_stream(text: bytes) -> bytes:
    """Decode a base64 stream in which a padded quantum may end one run and another start
    (an independent decoder: each run up to and including a padded quantum on its own)."""
    assert len(text) % 4 == 0
    return b"".join(base64.b64decode(run, validate=True) for run in re.findall(rb"[^=]*={0,2}", text) if run)


def splits(data: bytes):
    """data cut in two at every byte boundary, and into single bytes."""
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


# ---- content types --------------------------------------------------------------------

@pytest.mark.parametrize("content_type, expected", [
    (b"application/grpc-web", True), (b"application/grpc-web+proto", True),
    (b"application/grpc-web-text", True), (b"application/grpc-web-text+proto", True),
    (b"Application/gRPC-Web-Text; charset=utf-8", True),  # case and parameters are ignored
    (b"application/grpc", False), (b"application/grpc+proto", False), (b"application/grpc-web+json", False),
    (b"application/json", False), (b"", False), (b"application/grpc-webx", False),
])
def test_is_grpc_web(content_type, expected):
    assert is_grpc_web(content_type) is expected


@pytest.mark.parametrize("content_type, accept, text_request, text_response, response_type", [
    (b"application/grpc-web+proto", b"application/grpc-web", False, False, GRPC_WEB_PROTO),
    (b"application/grpc-web", None, False, False, GRPC_WEB_PROTO),
    (b"application/grpc-web-text", b"application/grpc-web-text", True, True, GRPC_WEB_TEXT_PROTO),
    (b"application/grpc-web-text+proto", b"application/grpc-web-text+proto", True, True, GRPC_WEB_TEXT_PROTO),
    # Envoy decides the response's encoding by Accept alone
    (b"application/grpc-web-text", None, True, False, GRPC_WEB_PROTO),
    (b"application/grpc-web-text", b"*/*", True, False, GRPC_WEB_PROTO),
    (b"application/grpc-web", b"application/grpc-web-text", False, True, GRPC_WEB_TEXT_PROTO),
    (b"application/grpc-web", b"text/html, application/grpc-web-text;q=0.9", False, True, GRPC_WEB_TEXT_PROTO),
])
def test_modes_come_from_content_type_and_accept(content_type, accept, text_request, text_response, response_type):
    call = GrpcWebCall(content_type, accept)
    assert (call.text_request, call.text_response, call.content_type) == (text_request, text_response, response_type)
    assert wants_text(accept) is text_response


def test_without_accept_given_the_accept_header_decides():
    call = GrpcWebCall(b"application/grpc-web-text")
    assert call.text_response is False
    call.request_headers([(b"content-type", b"application/grpc-web-text"), (b"accept", b"application/grpc-web-text")])
    assert (call.text_response, call.content_type) == (True, GRPC_WEB_TEXT_PROTO)
    given = GrpcWebCall(b"application/grpc-web-text", b"application/grpc-web")  # what the caller said stands
    given.request_headers([(b"accept", b"application/grpc-web-text")])
    assert given.text_response is False


# ---- the request ------------------------------------------------------------------------

def test_request_headers_for_the_grpc_upstream():
    call = GrpcWebCall(*TEXT)
    headers = [(b":method", b"POST"), (b":path", b"/pkg.Svc/Call"), (b"content-type", b"application/grpc-web-text"),
               (b"content-length", b"12"), (b"x-grpc-web", b"1"), (b"accept", b"application/grpc-web-text"),
               (b"x-user-agent", b"grpc-web-javascript/0.1"), (b"te", b"gzip"), (b"grpc-timeout", b"5S"),
               (b"authorization", b"Bearer t")]
    assert call.request_headers(headers) == [
        (b":method", b"POST"), (b":path", b"/pkg.Svc/Call"), (b"content-type", b"application/grpc"),
        (b"accept", b"application/grpc-web-text"), (b"x-user-agent", b"grpc-web-javascript/0.1"),
        (b"grpc-timeout", b"5S"), (b"authorization", b"Bearer t"), (b"te", b"trailers"),
        (b"grpc-accept-encoding", b"identity")]


def test_the_clients_own_grpc_accept_encoding_is_kept():
    call = GrpcWebCall(b"application/grpc-web+proto")
    out = call.request_headers([(b"content-type", b"application/grpc-web+proto"), (b"grpc-accept-encoding", b"gzip")])
    assert out == [(b"content-type", b"application/grpc"), (b"grpc-accept-encoding", b"gzip"), (b"te", b"trailers")]


@pytest.mark.parametrize("chunks", list(splits(BODY[:64])))
def test_a_binary_request_body_passes_as_it_is(chunks):
    call = GrpcWebCall(b"application/grpc-web")
    assert b"".join(call.request_data(c) for c in chunks) + call.request_end() == BODY[:64]


TEXT_WHOLE = base64.b64encode(BODY)
TEXT_PER_FRAME = b"".join(base64.b64encode(f) for f in FRAMES)  # padding between frames, as the spec allows
TEXT_ODD = base64.b64encode(BODY[:1]) + base64.b64encode(BODY[1:3]) + base64.b64encode(BODY[3:])  # mid-frame


@pytest.mark.parametrize("text", [TEXT_WHOLE, TEXT_PER_FRAME, TEXT_ODD], ids=["whole", "per-frame", "mid-frame"])
def test_a_text_request_is_decoded_across_every_chunk_boundary(text):
    assert b"=" in TEXT_PER_FRAME[:-4] and b"=" in TEXT_ODD[:8]
    for chunks in splits(text):
        call = GrpcWebCall(b"application/grpc-web-text")
        out = b"".join(call.request_data(c) for c in chunks)
        assert out + call.request_end() == BODY


def test_a_text_request_holds_back_only_an_incomplete_quantum():
    call = GrpcWebCall(b"application/grpc-web-text")
    assert call.request_data(b"AAE") == b""
    assert call.request_data(b"C") == b"\x00\x01\x02"
    assert call.request_data(b"") == b""
    assert call.request_data(b"AA==AAA") == b"\x00"
    assert call.request_data(b"A") == b"\x00\x00\x00"
    assert call.request_end() == b""


@pytest.mark.parametrize("chunks", [
    [b"AAA*"], [b"AA A"], [b"AA\nA"], [b"AB=C"], [b"A===", b""], [b"===="], [b"AAAA", b"AA", b"=A"],
    [b"AA=", b"=AAA", b"A=AA"], [b"AA==", b"="],
])
def test_bad_base64_is_the_clients_fault(chunks):
    call = GrpcWebCall(b"application/grpc-web-text+proto")
    with pytest.raises(GrpcWebError) as caught:
        for c in chunks:
            call.request_data(c)
        call.request_end()
    assert isinstance(caught.value, ClientError) and caught.value.status == 400


@pytest.mark.parametrize("tail", [b"A", b"AA", b"AAA"])
def test_a_torn_quantum_at_the_end_is_the_clients_fault(tail):
    call = GrpcWebCall(b"application/grpc-web-text")
    assert call.request_data(b"AAEC" + tail) == b"\x00\x01\x02"
    with pytest.raises(GrpcWebError):
        call.request_end()


# ---- the response -----------------------------------------------------------------------

TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"OK")]
TRAILER_FRAME = b"\x80\x00\x00\x00\x20grpc-status:0\r\ngrpc-message:OK\r\n"


def test_the_trailers_frame_bytes_exactly():
    call = GrpcWebCall(b"application/grpc-web")
    assert call.response_trailers(TRAILERS) == TRAILER_FRAME
    assert call.response_trailers([(b"Grpc-Status", b"3"), (b"X-Detail", b"a b")]) == \
        b"\x80\x00\x00\x00\x1dgrpc-status:3\r\nx-detail:a b\r\n"
    assert call.response_trailers([]) == b"\x80\x00\x00\x00\x00"
    assert GrpcWebCall(*TEXT).response_trailers(TRAILERS) == base64.b64encode(TRAILER_FRAME)


def test_response_headers_for_the_client():
    upstream = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"content-length", b"99"),
                (b"grpc-encoding", b"identity"), (b"x-app", b"1")]
    assert GrpcWebCall(b"application/grpc-web").response_headers(upstream) == [
        (b":status", b"200"), (b"content-type", b"application/grpc-web+proto"), (b"grpc-encoding", b"identity"),
        (b"x-app", b"1")]
    # without a content-type of its own, the response gets one
    assert GrpcWebCall(*TEXT).response_headers([(b"x-app", b"1")]) == [
        (b"x-app", b"1"), (b"content-type", b"application/grpc-web-text+proto")]


@pytest.mark.parametrize("chunks", list(splits(BODY)))
def test_a_binary_response_passes_as_it_is(chunks):
    call = GrpcWebCall(b"application/grpc-web", b"application/grpc-web")
    out = b"".join(call.response_data(c) for c in chunks) + call.response_trailers(TRAILERS)
    assert out == BODY + TRAILER_FRAME


@pytest.mark.parametrize("chunks", list(splits(BODY)))
def test_a_text_response_is_valid_base64_at_every_chunk_boundary(chunks):
    call = GrpcWebCall(*TEXT)
    outs = [call.response_data(c) for c in chunks]
    assert all(len(o) % 4 == 0 for o in outs)
    end = call.response_trailers(TRAILERS)
    assert b64_stream(b"".join(outs) + end) == BODY + TRAILER_FRAME
    # and edge's own decoder (what a gRPC-Web client does) reads it back
    client = GrpcWebCall(b"application/grpc-web-text")
    assert client.request_data(b"".join(outs) + end) + client.request_end() == BODY + TRAILER_FRAME


def test_a_text_response_never_holds_back_the_end_of_a_frame():
    """A server-streaming message must reach the client whole as soon as it is complete."""
    call = GrpcWebCall(*TEXT)
    sent = b""
    end = 0
    for f in FRAMES:
        sent += call.response_data(f[:3]) + call.response_data(f[3:])
        end += len(f)
        assert b64_stream(sent) == BODY[:end]
    first = GrpcWebCall(*TEXT)
    message = frame(b"hello")
    assert first.response_data(message[:8]) == base64.b64encode(message[:6])  # 2 bytes held inside the frame
    assert first.response_data(message[8:]) == base64.b64encode(message[6:])  # the frame ends: all out, padded
    assert first.response_end() == b""


def test_a_text_response_of_whole_frames_has_padding_only_where_frames_end():
    call = GrpcWebCall(*TEXT)
    out = call.response_data(BODY)
    assert out == base64.b64encode(BODY)


def test_a_text_response_ending_without_trailers_flushes_what_it_held():
    call = GrpcWebCall(*TEXT)
    part = frame(b"abcdef")[:7]
    out = call.response_data(part)
    assert b64_stream(out + call.response_end()) == part
    assert call.response_end() == b""


def test_a_full_text_call_round_trips():
    call = GrpcWebCall(b"application/grpc-web-text+proto", b"application/grpc-web-text+proto")
    client = base64.b64encode(BODY)
    upstream = b"".join(call.request_data(client[i:i + 6]) for i in range(0, len(client), 6)) + call.request_end()
    assert upstream == BODY
    body = call.response_data(upstream[:1]) + call.response_data(upstream[1:]) + call.response_trailers([])
    assert b64_stream(body) == BODY + b"\x80\x00\x00\x00\x00"


def test_a_trailers_only_response_keeps_grpc_status_in_the_head():
    call = GrpcWebCall(*TEXT)
    head = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12"),
            (b"grpc-message", b"unknown%20method"), (b"content-length", b"0")]
    assert call.response_is_grpc(200, head, end_stream=True)
    assert call.response_trailers_only(head) == (
        [(b":status", b"200"), (b"content-type", b"application/grpc-web-text+proto"), (b"grpc-status", b"12"),
         (b"grpc-message", b"unknown%20method")], b"")


def test_split_trailers_only_for_a_caller_that_sends_them_as_a_frame():
    head = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"5"),
            (b"grpc-message", b"not%20found"), (b"grpc-status-details-bin", b"CAU"), (b"x-app", b"1")]
    kept, trailers = split_trailers_only(head)
    assert kept == [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-app", b"1")]
    assert trailers == [(b"grpc-status", b"5"), (b"grpc-message", b"not%20found"), (b"grpc-status-details-bin", b"CAU")]
    block = b"grpc-status:5\r\ngrpc-message:not%20found\r\ngrpc-status-details-bin:CAU\r\n"
    assert GrpcWebCall(b"application/grpc-web").response_trailers(trailers) == \
        b"\x80" + len(block).to_bytes(4, "big") + block


@pytest.mark.parametrize("status, headers, end_stream, expected", [
    (200, [(b"content-type", b"application/grpc")], False, True),
    (200, [(b"content-type", b"application/grpc+proto")], False, True),
    (200, [(b"content-type", b"application/grpc; charset=x")], False, True),
    (200, [(b"content-type", b"application/grpc-web+proto")], False, True),  # a gRPC-Web server behind us
    (200, [(b"grpc-status", b"5")], True, True),  # trailers-only needs grpc-status alone
    (200, [(b"content-type", b"application/grpc")], True, False),  # ended without a status
    (503, [(b"content-type", b"application/grpc")], False, False),
    (200, [(b"content-type", b"text/html")], False, False),
    (200, [], False, False),
    (200, [(b"content-type", b"application/grpcx")], False, False),
])
def test_response_is_grpc(status, headers, end_stream, expected):
    assert GrpcWebCall(b"application/grpc-web").response_is_grpc(status, headers, end_stream) is expected


@pytest.mark.parametrize("status, grpc_status", [(503, b"14"), (404, b"12"), (400, b"13"), (401, b"16"),
                                                  (403, b"7"), (429, b"14"), (504, b"14"), (500, b"2"), (200, b"2")])
def test_a_non_grpc_answer_becomes_grpc_status_and_message_as_envoy_makes_it(status, grpc_status):
    call = GrpcWebCall(b"application/grpc-web")
    head = [(b":status", b"%d" % status), (b"content-type", b"text/html"), (b"content-length", b"17"),
            (b"x-proxy", b"p"), (b"grpc-status", b"0")]
    assert call.response_non_grpc(status, head, b"<h1>down 100%</h1>") == [
        (b":status", b"%d" % status), (b"x-proxy", b"p"), (b"content-type", b"application/grpc-web+proto"),
        (b"grpc-status", grpc_status), (b"grpc-message", b"<h1>down 100%25</h1>"), (b"content-length", b"0")]


def test_a_non_grpc_body_is_cut_to_the_limit():
    head = GrpcWebCall(b"application/grpc-web").response_non_grpc(502, [], b"x" * (NON_GRPC_BODY_LIMIT + 10))
    assert dict(head)[b"grpc-message"] == b"x" * NON_GRPC_BODY_LIMIT
