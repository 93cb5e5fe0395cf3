"""Micro-benchmarks of the worker's hot functions (µs per call, best of a few repeats).

    python -m bench.micro

HTTP/1 parse of the request wrk sends and of nginx's answer, the upstream request head and
the client response head, route match at 10 and 10,000 Mappings, the whole request
decision (plan: target split, match, rewrite) at 10 Mappings, and the decode of a
10,000-Mapping table as a worker does on every reload, and one whole request through
the connection handler in-process (client and upstream on local sockets, no scheduler):
plus one HTTP/2 stream through the codec over nghttp2 (HEADERS in, HEADERS + DATA out),
plus one local rate-limit check (descriptors, limit match, shared-memory counters);
its CPU time, the CPU time of the same socket calls alone, and how many Python and C
function calls it makes. Results also go to bench/results/micro.json.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
import timeit
from pathlib import Path

from edge import codec
from edge.resources.base import RawObject
from edge.supervisor.compile import compile
from edge.worker.conn import ClientConnection
from edge.worker.proto.h1 import RequestParser, ResponseParser
from edge.worker.heads import request_head, response_head
from edge.worker.plan import plan
from edge.worker.proto.messages import Request
from edge.worker.reactor import EPOLLIN, EPOLLOUT
from edge.worker.router import Router
from edge.worker.state import WorkerState

ROOT = Path(__file__).resolve().parent.parent
WRK_REQUEST = b"GET /bench/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
NGINX_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 15:00:00 GMT\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: 23\r\nConnection: keep-alive\r\n"
                  b"\r\nhello from the upstream")


def mappings(n: int) -> list[RawObject]:
    """n prefix Mappings /svc-<i>/ to one service each."""
    return [RawObject("Mapping", "default", f"m{i}", "bench.yaml",
                      {"prefix": f"/svc-{i}/", "service": f"127.0.0.1:{10000 + i % 1000}"}) for i in range(n)]


def per_call_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def request_cycle(n: int = 20000) -> dict[str, float]:
    """Drive ClientConnection by hand: the client sends what wrk sends, the upstream
    answers what nginx answers, and the handler's callbacks run as the reactor would run
    them. The socket calls of both peers are timed alone too, so the difference is the
    Python work edge does per request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    state = WorkerState()
    state.router = Router(compile([RawObject("Mapping", "default", "bench", "bench.yaml",
                                             {"prefix": "/bench/", "rewrite": "", "service": f"127.0.0.1:{port}"})]
                                  + mappings(9))[0])
    ours, client = socket.socketpair()
    ours.setblocking(False)
    conn = ClientConnection(state, ours, "127.0.0.1", 8080)
    client.send(WRK_REQUEST)
    conn.on_event(EPOLLIN)
    upstream, _ = listener.accept()
    pooled = conn.up
    conn.on_upstream_event(pooled, EPOLLOUT)
    upstream.recv(65536)
    upstream.send(NGINX_RESPONSE)
    time.sleep(0.05)
    conn.on_upstream_event(pooled, EPOLLIN)
    if not client.recv(65536).startswith(b"HTTP/1.1 200"):
        raise RuntimeError("the in-process request cycle failed")

    def cycle():
        client.send(WRK_REQUEST)
        conn.on_event(EPOLLIN)
        upstream.recv(65536)
        upstream.send(NGINX_RESPONSE)
        conn.on_upstream_event(conn.up, EPOLLIN)
        client.recv(65536)

    def sockets_alone():
        client.send(WRK_REQUEST)
        ours.recv(65536)
        pooled.sock.send(WRK_REQUEST)
        upstream.recv(65536)
        upstream.send(NGINX_RESPONSE)
        pooled.sock.recv(65536)
        ours.send(NGINX_RESPONSE)
        client.recv(65536)

    out = {}
    for name, fn in (("request_cycle", cycle), ("request_cycle_sockets_alone", sockets_alone)):
        for _ in range(n // 10):
            fn()
        best = []
        for _ in range(3):
            start = time.process_time()
            for _ in range(n):
                fn()
            best.append((time.process_time() - start) / n * 1e6)
        out[name] = min(best)
    calls = [0]

    def count(frame, event, arg):
        if event in ("call", "c_call"):
            calls[0] += 1
    sys.setprofile(count)
    for _ in range(100):
        cycle()
    sys.setprofile(None)
    out["request_cycle_function_calls"] = calls[0] / 100
    for s in (client, ours, upstream, listener):
        s.close()
    return out


def run() -> dict[str, float]:
    results = {}
    req_parser = RequestParser()

    def parse_request():
        req_parser.feed(WRK_REQUEST)
        req_parser.events.clear()
    results["h1_parse_request"] = per_call_us(parse_request, 20000)

    resp_parser = ResponseParser()

    def parse_response():
        resp_parser.feed(NGINX_RESPONSE)
        resp_parser.events.clear()
    results["h1_parse_response"] = per_call_us(parse_response, 20000)

    small = Router(compile(mappings(10))[0])
    route, _ = small.match(8080, "127.0.0.1", "/svc-5/x", b"GET", [], "")
    rules = route.targets[0].headers
    req_parser.feed(WRK_REQUEST)
    req = req_parser.events.popleft()
    req_parser.events.clear()
    results["h1_request_head"] = per_call_us(lambda: request_head(
        req.method, "/x", "", req.headers, connection=req.connection, client_ip="127.0.0.1", xfp=b"http", trust_xff=False,
        original_path="/svc-5/x", rules=rules, suppress_envoy=False, chunked=False, content_length=None), 20000)
    resp_parser.feed(NGINX_RESPONSE)
    resp = resp_parser.events.popleft()
    resp_parser.events.clear()
    results["h1_response_head"] = per_call_us(lambda: response_head(
        resp.status, resp.reason, resp.headers, connection=resp.connection, rules=rules, server=b"edge", service_time_ms=1,
        framing=b"content-length: 23\r\n", close=False), 20000)

    results["route_match_10"] = per_call_us(lambda: small.match(8080, "127.0.0.1", "/svc-5/x", b"GET", [], ""), 20000)
    wrk_req = Request(b"GET", b"/svc-5/x", "1.1", [(b"host", b"127.0.0.1:8080")], True, False, None,
                      b"127.0.0.1:8080", False, False, frozenset(), False)
    results["plan_10"] = per_call_us(lambda: plan(small, 8080, "127.0.0.1", wrk_req), 20000)
    big_table = compile(mappings(10000))[0]
    big = Router(big_table)
    results["route_match_10000"] = per_call_us(
        lambda: big.match(8080, "127.0.0.1", "/svc-5000/x", b"GET", [], ""), 2000)
    payload = codec.encode(big_table)
    results["table_decode_10000_us"] = per_call_us(lambda: codec.decode(payload), 3)
    results["router_build_10000_us"] = per_call_us(lambda: Router(big_table), 3)
    results["h2_stream"] = h2_stream()
    results.update(ratelimit_check())
    results.update(request_cycle())
    return {k: round(v, 3) for k, v in results.items()}


def h2_stream(n: int = 20000) -> float:
    """One HTTP/2 stream through the codec (µs per stream): feed the client's HEADERS frame
    (END_STREAM; HPACK-indexed after the first, as on a live connection), respond with
    headers and the 23-byte body, take data_to_send."""
    from hpack import Encoder
    from hyperframe.frame import HeadersFrame, SettingsFrame, WindowUpdateFrame

    from edge.worker.proto.h2codec import H2Codec

    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8080"),
               (b":path", b"/bench/"), (b"user-agent", b"h2load")]
    response = [(b":status", b"200"), (b"server", b"edge"), (b"content-type", b"application/octet-stream"),
                (b"content-length", b"23")]
    body = NGINX_RESPONSE[-23:]
    best = []
    for _ in range(5):
        codec, encoder = H2Codec(), Encoder()
        # the client's preface opens the connection window wide (as h2load and browsers do)
        codec.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
                   + WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535).serialize()
                   + SettingsFrame(0, flags=["ACK"]).serialize())
        codec.data_to_send()
        frames = [HeadersFrame(sid, encoder.encode(request), flags=["END_HEADERS", "END_STREAM"]).serialize()
                  for sid in range(1, 2 * n, 2)]
        events = codec.events
        start = time.perf_counter()
        for frame in frames:
            codec.feed(frame)
            sid = events.popleft().stream_id
            codec.respond(sid, response, False)
            codec.send_data(sid, body, True)
            codec.data_to_send()
            events.clear()
        best.append((time.perf_counter() - start) / n * 1e6)
    return min(best)


def ratelimit_check(workers: int = 4) -> dict[str, float]:
    """One local rate-limit check as the worker does it: descriptors of a label group
    (a generic key and the client address), the matching limit, the shared-memory
    counters of every cell of `workers` (2 per worker) read, our cell written."""
    import secrets

    from edge.ratelimit.descriptors import RuleIndex, descriptors
    from edge.ratelimit.limiter import Limiter
    from edge.ratelimit.store import CounterStore
    from edge.resources.ratelimit import parse_labels, parse_ratelimit

    groups = parse_labels({"ambassador": [{"per_client": ["remote_address", {"generic_key": {"value": "api"}}]}]})
    rules = parse_ratelimit(RawObject("RateLimit", "default", "rl", "bench", {"domain": "ambassador", "limits": [
        {"pattern": [{"remote_address": None}, {"generic_key": "api"}], "rate": 10**9, "unit": "second"}]}))
    index = RuleIndex(rules)
    store = CounterStore(f"edge-bench-{secrets.token_hex(4)}-rl", 2 * workers, 16384, create=True)
    try:
        limiter = Limiter(store, 0)

        def check():
            matched = []
            for domain, keys, values in descriptors(groups, [], "10.1.2.3", "listener", "cluster"):
                matched += index.matches(domain, keys, values)
            limiter.check(matched)
        return {f"ratelimit_check_{workers}_workers": per_call_us(check, 50000)}
    finally:
        store.close()


def main() -> None:
    random.seed(1)
    results = run()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "micro.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(map(len, results))
    for name, value in results.items():
        unit = "" if name.endswith("_calls") else " µs"
        print(f"{name:<{width}}  {value:>12,.2f}{unit}")


if __name__ == "__main__":
    main()
