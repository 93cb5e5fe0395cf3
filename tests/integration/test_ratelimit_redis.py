"""The fleet store: several edge instances on one Redis (a real redis-server on a free
port) enforce one limit; Redis going away fails open (or denies) within the time budget,
and the limit holds again when it returns."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import httpx
import pytest
import trio

from tests.conftest import free_port, resource
from tests.integration.test_ratelimit import away_from_an_hour_boundary, hammer, limited_mapping, rate_limit

pytestmark = pytest.mark.integration


class Redis:
    def __init__(self, port: int, password: str | None = None):
        self.port = port
        self.password = password
        self.proc = None

    def start(self) -> Redis:
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", *auth], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
    server = Redis(free_port()).start()
    yield server
    server.stop()


async def test_two_gateways_on_one_redis_enforce_one_limit(make_edge, upstream, redis):
    away_from_an_hour_boundary()
    rate = 200
    config = {"m.yaml": limited_mapping(upstream, key="fleet") + rate_limit(rate, key="fleet")}
    args = ("--ratelimit-redis", redis.url)
    first = make_edge(dict(config), workers=2, extra_args=args)
    second = make_edge(dict(config), workers=2, extra_args=args)
    loads = []

    async def run(edge):
        loads.append(await hammer(edge, "/limited/", 1.5, connections=16))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, first)
        nursery.start_soon(run, second)
    allowed = [load.counts["/limited/"].statuses[200] for load in loads]
    refused = [load.counts["/limited/"].statuses[429] for load in loads]
    assert all(a > 0 for a in allowed), allowed  # both gateways served some: one shared count
    assert rate <= sum(allowed) <= rate + 4, (allowed, refused)
    assert sum(refused) > rate


async def test_redis_down_fails_open_within_the_budget_and_the_limit_returns_with_it(make_edge, upstream, redis):
    away_from_an_hour_boundary()
    edge = make_edge({"m.yaml": limited_mapping(upstream) + rate_limit(20)}, workers=2,
                     extra_args=("--ratelimit-redis", redis.url, "--ratelimit-budget-ms", "50"))
    async with httpx.AsyncClient() as client:
        statuses = [(await client.get(edge.url("/limited/"))).status_code for _ in range(10)]
        assert statuses == [200] * 10  # under the limit of 20: Redis counted 10
        redis.stop()
        started = time.monotonic()
        for _ in range(30):  # open: served, and no request waits longer than the budget allows
            before = time.monotonic()
            assert (await client.get(edge.url("/limited/"))).status_code == 200
            assert time.monotonic() - before < 1.0
        assert time.monotonic() - started < 10
        redis.start()  # a new, empty Redis on the same port
        deadline = time.monotonic() + 15
        while True:  # reconnects in the background; the limit holds again
            statuses = [(await client.get(edge.url("/limited/"))).status_code for _ in range(25)]
            if 429 in statuses:
                break
            assert time.monotonic() < deadline, "the limit did not come back with Redis"
            await trio.sleep(0.2)
        assert [(await client.get(edge.url("/limited/"))).status_code for _ in range(5)] == [429] * 5
    await trio.sleep(0.3)  # the heartbeat publishes the counters
    metrics = dict(line.split(" ", 1) for line in edge.admin("/metrics")[1].decode().splitlines() if " " in line)
    assert float(metrics["edge_ratelimit_store_failures_total"]) >= 30


async def test_redis_down_with_deny_refuses(make_edge, upstream):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    edge = make_edge({"m.yaml": limited_mapping(upstream) + rate_limit(1000)
                      + resource("Mapping", "free", {"prefix": "/free/", "service": upstream.service})},
                     workers=2, extra_args=("--ratelimit-redis", dead, "--ratelimit-failure-mode", "deny"))
    async with httpx.AsyncClient() as client:
        refused = await client.get(edge.url("/limited/"))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert (await client.get(edge.url("/free/"))).status_code == 200  # unlimited routes never ask


async def test_a_hung_redis_costs_a_request_no_more_than_the_budget(make_edge, upstream, redis):
    """SIGSTOP: connections stay open and nothing answers; each request waits the 50 ms
    budget, fails open, and Redis decides again after SIGCONT."""
    import os
    import signal

    edge = make_edge({"m.yaml": limited_mapping(upstream) + rate_limit(1000)}, workers=2,
                     extra_args=("--ratelimit-redis", redis.url, "--ratelimit-budget-ms", "50"))
    async with httpx.AsyncClient() as client:
        assert (await client.get(edge.url("/limited/"))).status_code == 200
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            waits = []
            for _ in range(10):
                before = time.monotonic()
                assert (await client.get(edge.url("/limited/"))).status_code == 200
                waits.append(time.monotonic() - before)
            assert min(waits) >= 0.045, waits  # it did ask, and waited for the budget
            assert max(waits) < 0.5, waits
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        # answered by Redis again: the request is decided by the store, not failed open
        failures = await _settled_store_failures(edge)
        assert (await client.get(edge.url("/limited/"))).status_code == 200
        assert await _settled_store_failures(edge) == failures


async def _settled_store_failures(edge) -> float:
    """edge_ratelimit_store_failures_total once two readings a heartbeat apart agree
    (workers publish their counters every 0.2 s)."""
    def read() -> float:
        lines = edge.admin("/metrics")[1].decode().splitlines()
        return float(next(line.split()[1] for line in lines if line.startswith("edge_ratelimit_store_failures_total ")))

    last = read()
    for _ in range(50):
        await trio.sleep(0.5)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError("the store-failure count never settled")


async def test_a_password_protected_redis(make_edge, upstream):
    server = Redis(free_port(), password="s3cret").start()
    try:
        config = {"m.yaml": limited_mapping(upstream) + rate_limit(3)}
        good = make_edge(dict(config), workers=1, extra_args=(
            "--ratelimit-redis", f"redis://:s3cret@127.0.0.1:{server.port}/1"))
        wrong = make_edge(dict(config), workers=1, extra_args=(
            "--ratelimit-redis", f"redis://:nope@127.0.0.1:{server.port}/1"))
        async with httpx.AsyncClient() as client:
            assert [(await client.get(good.url("/limited/"))).status_code for _ in range(5)] == [200] * 3 + [429] * 2
            # a wrong password: setup fails, every limited request fails open, counted
            assert [(await client.get(wrong.url("/limited/"))).status_code for _ in range(5)] == [200] * 5
        args = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert not [line for line in args.splitlines() if "edge.worker" in line and "s3cret" in line], \
            "the password must not show in the workers' command lines"
    finally:
        server.stop()
