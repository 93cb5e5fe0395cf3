"""Built-in rate limiting across workers: counters in shared memory hold one limit for the
whole node, survive reloads and worker kills, and answer 429 with the rate-limit headers."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
import trio

from bench.loadgen import LoadGenerator
from tests.conftest import mapping, resource

pytestmark = pytest.mark.integration


def limited_mapping(upstream, name: str = "limited", prefix: str = "/limited/", key: str = "backend") -> str:
    return resource("Mapping", name, {
        "prefix": prefix, "service": upstream.service,
        "labels": {"ambassador": [{"per_backend": [{"generic_key": {"value": key}}]}]}})


def rate_limit(rate: int, unit: str = "hour", key: str = "backend", **extra) -> str:
    return resource("RateLimit", "limits", {"domain": "ambassador", "limits": [
        {"pattern": [{"generic_key": key}], "rate": rate, "unit": unit, **extra}]})


async def hammer(edge, route: str, seconds: float, connections: int = 32) -> LoadGenerator:
    load = LoadGenerator(edge.port, [route], connections=connections)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, stop)
        await trio.sleep(seconds)
        stop.set()
    return load


def away_from_an_hour_boundary() -> None:
    """The limits here are per hour: a run must not straddle two windows."""
    left = 3600 - time.time() % 3600
    if left < 30:
        time.sleep(left + 0.5)


@pytest.mark.parametrize("workers", [2, 4])
async def test_a_limit_holds_for_the_node_whatever_worker_a_connection_lands_on(make_edge, upstream, workers):
    away_from_an_hour_boundary()
    rate = 300
    edge = make_edge({"m.yaml": limited_mapping(upstream) + rate_limit(rate)}, workers=workers)
    load = await hammer(edge, "/limited/", 1.5)
    statuses = load.counts["/limited/"].statuses
    assert set(statuses) == {200, 429}, statuses
    assert rate <= statuses[200] <= rate + workers, statuses
    assert statuses[429] > 2 * rate, "the limit was never really pressed"
    served = [w["requests"] for w in edge.config()["workers"]]
    assert sum(1 for n in served if n > 0) == workers, f"some worker got no connection: {served}"


async def test_counters_survive_a_reload_and_a_worker_sigkill(make_edge, upstream):
    away_from_an_hour_boundary()
    rate, workers = 200, 2
    edge = make_edge({"m.yaml": limited_mapping(upstream) + rate_limit(rate),
                      "other.yaml": mapping("other", upstream.service, "/other/")}, workers=workers)
    async with httpx.AsyncClient() as client:
        for _ in range(150):
            assert (await client.get(edge.url("/limited/"))).status_code == 200
    generation = edge.config()["generation"]
    edge.write("other.yaml", mapping("other", upstream.service, "/other-2/"))
    edge.wait_generation(generation + 1)
    victim = edge.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while victim in edge.worker_pids() or None in edge.worker_pids():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    edge.wait_ready()
    load = await hammer(edge, "/limited/", 1.0, connections=8)
    statuses = load.counts["/limited/"].statuses
    assert 50 <= statuses[200] <= 50 + workers, statuses  # 150 were counted before
    assert statuses[429] > 100


async def test_the_429_says_when_to_retry_and_log_only_never_refuses(make_edge, upstream):
    edge = make_edge({"m.yaml": limited_mapping(upstream) + limited_mapping(upstream, "logged", "/logged/", "logged")
                      + resource("RateLimit", "limits", {"domain": "ambassador", "limits": [
                          {"pattern": [{"generic_key": "backend"}], "rate": 2, "unit": "minute",
                           "injectResponseHeaders": [{"name": "x-limited", "value": "yes"}],
                           "errorResponse": {"headers": [{"name": "content-type", "value": "application/json"},
                                                         {"name": "x-why", "value": "too many"}],
                                             "bodyTemplate": '{"error": "slow down"}'}},
                          {"pattern": [{"generic_key": "logged"}], "rate": 1, "unit": "minute", "action": "LogOnly"}]})})
    async with httpx.AsyncClient() as client:
        first = await client.get(edge.url("/limited/"))
        assert first.status_code == 200 and first.headers["x-limited"] == "yes"
        assert (await client.get(edge.url("/limited/"))).status_code == 200
        refused = await client.get(edge.url("/limited/"))
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/json" and refused.headers["x-why"] == "too many"
        assert json.loads(refused.text) == {"error": "slow down"}
        reset = int(refused.headers["ratelimit-reset"])
        assert 1 <= reset <= 60 and int(refused.headers["retry-after"]) == reset
        assert refused.headers["ratelimit-limit"] == "2" and refused.headers["ratelimit-remaining"] == "0"
        for _ in range(5):
            assert (await client.get(edge.url("/logged/"))).status_code == 200
    time.sleep(0.3)  # the heartbeat publishes the counters
    metrics = edge.admin("/metrics")[1].decode()
    assert "edge_ratelimited_total 1" in metrics
    assert "edge_ratelimit_log_only_over_total 4" in metrics


def test_invalid_limits_are_diagnostics_and_the_rest_serves(make_edge, upstream):
    edge = make_edge({"m.yaml": limited_mapping(upstream) + rate_limit(5, unit="fortnight")
                      + mapping("plain", upstream.service, "/plain/")})
    assert httpx.get(edge.url("/plain/")).status_code == 200
    diags = [(d["kind"], d["field"]) for d in edge.config()["diagnostics"] if d["severity"] == "error"]
    assert ("RateLimit", "spec.limits[0].unit") in diags
