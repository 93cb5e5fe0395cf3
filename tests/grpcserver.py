"""A real gRPC upstream for the tests: grpcio's server, no generated code, raw-bytes messages.

The service is `echo.Echo`, registered with grpc.method_handlers_generic_handler and no
(de)serializers, so every request and response message is the bytes on the wire (a
client calls it as `channel.unary_unary("/echo.Echo/Unary")(b"...")`). Methods:

    Unary         echoes the request; the request's `x-*` metadata comes back as initial
                  metadata, and the trailing metadata is `x-trailer: yes`
    ClientStream  reads a request stream and answers summary(): b"%d messages %d bytes"
    ServerStream  the request is stream_request(count, size): `count` messages of `size`
                  bytes, message i being stream_message(i, size) (its 8-byte index, then
                  PATTERN); trailing metadata `x-trailer: yes`
    Bidi          echoes each message as it arrives (`x-*` metadata as initial metadata)
    Slow          the request is a number of milliseconds to sleep in ASCII digits (b"2000");
                  answers b"done" after it, or stops early (counted in `cancelled`) when the call is
                  no longer active (the client or a proxy cancelled it, its deadline passed)
    Fail          the request is b"CODE:message" (fail_request(code, message); CODE a
                  grpc.StatusCode name, e.g. b"NOT_FOUND:gone"): aborts with that status and message
    Gather        the request is gather_request(key, n): each call waits until `n` calls with
                  that key are in the server at once, then all answer b"gathered" (after 30 s
                  of waiting, ABORTED): proof that `n` calls were in flight together

`GrpcServer(tls=Issued | None)` starts one in this process on 127.0.0.1 (a free port), with a
thread pool big enough for hundreds of concurrent calls; `port`, `service` (what a Mapping's
`service` says: "127.0.0.1:PORT", or "https://127.0.0.1:PORT" over TLS), `peers` (the
distinct client addresses calls came from), `cancelled`, `completed` (Slow calls), `streamed` (ServerStream messages
grpc took so far: where a slow reader's backpressure stopped the server), `stop()`;
`serving(tls)` is one for the length of a `with`, which the tests' fixtures yield.

    python tests/grpcserver.py [--port N] [--threads N]   # prints "PORT <n>" once listening
"""

from __future__ import annotations

import argparse
import contextlib
import struct
import threading
import time
from concurrent import futures

import grpc

SERVICE = "echo.Echo"
PATTERN = bytes(range(256)) * 256  # 64 KiB
GATHER_WAIT = 30.0


def stream_request(count: int, size: int) -> bytes:
    return struct.pack(">QQ", count, size)


def stream_message(index: int, size: int) -> bytes:
    """ServerStream's message `index` of `size` bytes (at least 8)."""
    head = struct.pack(">Q", index)
    body = PATTERN * (size // len(PATTERN) + 1)
    return (head + body[:size - len(head)])[:size]


def summary(messages: list[bytes]) -> bytes:
    """What ClientStream answers to `messages`."""
    return b"%d messages %d bytes" % (len(messages), sum(map(len, messages)))


def slow_request(ms: int) -> bytes:
    return str(ms).encode()


def fail_request(code: grpc.StatusCode, message: str) -> bytes:
    return f"{code.name}:{message}".encode()


def gather_request(key: str, n: int) -> bytes:
    return struct.pack(">Q", n) + key.encode()


class _Echo:
    def __init__(self):
        self.lock = threading.Lock()
        self.peers: set[str] = set()
        self.cancelled = 0
        self.completed = 0
        self.streamed = 0
        self.barriers: dict[bytes, threading.Barrier] = {}

    def _seen(self, context) -> None:
        with self.lock:
            self.peers.add(context.peer())

    @staticmethod
    def _x_metadata(context) -> list[tuple[str, str]]:
        return [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-")]

    def unary(self, request: bytes, context) -> bytes:
        self._seen(context)
        context.send_initial_metadata(self._x_metadata(context))
        context.set_trailing_metadata([("x-trailer", "yes")])
        return request

    def client_stream(self, requests, context) -> bytes:
        self._seen(context)
        return summary(list(requests))

    def server_stream(self, request: bytes, context):
        self._seen(context)
        count, size = struct.unpack(">QQ", request[:16])
        context.set_trailing_metadata([("x-trailer", "yes")])
        head = struct.Struct(">Q")
        body = (PATTERN * (size // len(PATTERN) + 1))[:max(size - 8, 0)]
        for i in range(count):
            yield (head.pack(i) + body)[:size]
            self.streamed += 1  # once grpc took the message: it asks for the next one

    def bidi(self, requests, context):
        self._seen(context)
        context.send_initial_metadata(self._x_metadata(context))
        yield from requests

    def slow(self, request: bytes, context) -> bytes:
        self._seen(context)
        ms = int(request.decode("ascii"))
        until = time.monotonic() + ms / 1000
        while time.monotonic() < until:
            if not context.is_active():
                with self.lock:
                    self.cancelled += 1
                return b""
            time.sleep(0.01)
        with self.lock:
            self.completed += 1
        return b"done"

    def fail(self, request: bytes, context) -> bytes:
        self._seen(context)
        code, _, message = request.decode().partition(":")
        context.abort(grpc.StatusCode[code], message)

    def gather(self, request: bytes, context) -> bytes:
        self._seen(context)
        (n,), key = struct.unpack(">Q", request[:8]), request[8:]
        with self.lock:
            barrier = self.barriers.setdefault(key, threading.Barrier(n))
        try:
            barrier.wait(GATHER_WAIT)
        except threading.BrokenBarrierError:
            context.abort(grpc.StatusCode.ABORTED, f"fewer than {n} calls were in flight at once")
        return b"gathered"

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Gather": grpc.unary_unary_rpc_method_handler(self.gather),
        })


class GrpcServer:
    """The echo service on 127.0.0.1 (a free port, or `port`), over TLS with `tls` (a
    tests.tlscerts.Issued leaf) else cleartext (h2c)."""

    def __init__(self, tls=None, threads: int = 512, port: int = 0):
        self.echo = _Echo()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                                  handlers=[self.echo.handler()], maximum_concurrent_rpcs=None)
        address = f"127.0.0.1:{port}"
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials([(tls.key_pem.encode(), tls.cert_pem.encode())])
            self.port = self.server.add_secure_port(address, credentials)
        assert self.port, f"grpc could not listen on {address}"
        self.tls = tls is not None
        self.service = f"{'https://' if self.tls else ''}127.0.0.1:{self.port}"
        self.server.start()

    @property
    def peers(self) -> set[str]:
        with self.echo.lock:
            return set(self.echo.peers)

    @property
    def cancelled(self) -> int:
        return self.echo.cancelled

    @property
    def completed(self) -> int:
        return self.echo.completed

    @property
    def streamed(self) -> int:
        return self.echo.streamed

    def stop(self) -> None:
        self.server.stop(grace=None).wait(10)


@contextlib.contextmanager
def serving(tls=None, threads: int = 512):
    """A GrpcServer for the length of a `with` (what the tests' fixtures yield)."""
    server = GrpcServer(tls, threads)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--threads", type=int, default=64)
    a = ap.parse_args()
    server = GrpcServer(threads=a.threads, port=a.port)
    print(f"PORT {server.port}", flush=True)
    server.server.wait_for_termination()
