"""Micro-benchmarks of the worker's hot functions (µs per call, best of a few repeats).

    python -m bench.micro

HTTP/1 parse of the request wrk sends and of nginx's answer, the upstream request head and
the client response head, route match at 10 and 10,000 Mappings, and the decode of a
10,000-Mapping table as a worker does on every reload. Results also go to
bench/results/micro.json.
"""

from __future__ import annotations

import json
import random
import timeit
from pathlib import Path

from edge import codec
from edge.resources.base import RawObject
from edge.supervisor.compile import compile
from edge.worker.proto.h1 import RequestParser, ResponseParser
from edge.worker.proxy import request_head, response_head
from edge.worker.router import Router

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
    big_table = compile(mappings(10000))[0]
    big = Router(big_table)
    results["route_match_10000"] = per_call_us(
        lambda: big.match(8080, "127.0.0.1", "/svc-5000/x", b"GET", [], ""), 2000)
    payload = codec.encode(big_table)
    results["table_decode_10000_us"] = per_call_us(lambda: codec.decode(payload), 3)
    results["router_build_10000_us"] = per_call_us(lambda: Router(big_table), 3)
    return {k: round(v, 3) for k, v in results.items()}


def main() -> None:
    random.seed(1)
    results = run()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "micro.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(map(len, results))
    for name, us in results.items():
        print(f"{name:<{width}}  {us:>12,.2f} µs")


if __name__ == "__main__":
    main()
