"""Configuration changes under sustained load: no request on a stable route may fail."""

from __future__ import annotations

import os
import urllib.request

import httpx
import pytest
import trio

from bench.churn import KINDS, Churn
from bench.loadgen import LoadGenerator
from bench.zero_downtime import apply_and_wait
from tests.conftest import free_port, mapping

pytestmark = pytest.mark.integration


async def test_changes_of_every_kind_under_load_fail_no_request(make_edge, upstream):
    edge = make_edge({"placeholder.yaml": "---\n"}, workers=2)
    churn = Churn(edge.dir, upstream.service)
    churn.start()

    def stable_served() -> bool:
        return all(httpx.get(edge.url(r)).status_code == 200 for r in churn.stable_routes)
    with trio.fail_after(10):
        while not await trio.to_thread.run_sync(stable_served):
            await trio.sleep(0.05)

    load = LoadGenerator(edge.port, churn.stable_routes, connections=8)
    stop = trio.Event()
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, stop)
        await trio.sleep(0.3)
        for i in range(6 * len(KINDS)):
            kind, seconds = await apply_and_wait(churn, i, edge.admin_port)
            seen.append(kind)
            assert seconds < 1.0, f"change {i} ({kind}) took {seconds:.3f}s to reach every worker"
            await trio.sleep(0.05)
        await trio.sleep(0.3)
        stop.set()
    total = load.total()
    assert set(seen) == set(KINDS)
    assert total.ok > 300, "the load generator barely ran"
    assert total.failures == 0, (dict(load.errors), {r: c.statuses for r, c in load.counts.items()})
    assert all(c.ok > 0 for c in load.counts.values())


async def test_the_load_generator_counts_failures(make_edge, upstream):
    dead = f"127.0.0.1:{free_port()}"
    edge = make_edge({"m.yaml": mapping("ok", upstream.service, "/ok/") + mapping("dead", dead, "/dead/")})
    load = LoadGenerator(edge.port, ["/ok/", "/dead/"], connections=2)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, stop)
        await trio.sleep(0.5)
        stop.set()
    assert load.counts["/ok/"].ok > 0 and load.counts["/ok/"].failures == 0
    assert load.counts["/dead/"].server_errors > 0 and load.counts["/dead/"].statuses.keys() == {502}


async def test_rolling_restart_under_load_fails_no_request(make_edge, upstream):
    edge = make_edge({"m.yaml": mapping("a", upstream.service, "/a/") + mapping("b", upstream.service, "/b/")})
    before = edge.worker_pids()
    load = LoadGenerator(edge.port, ["/a/", "/b/"], connections=8)
    stop = trio.Event()

    def restart() -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{edge.admin_port}/edge/v1/restart", method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, stop)
        await trio.sleep(0.5)
        assert await trio.to_thread.run_sync(restart) == 202
        with trio.fail_after(20):
            while True:
                pids = await trio.to_thread.run_sync(edge.worker_pids)
                metrics = (await trio.to_thread.run_sync(edge.admin, "/metrics"))[1]
                if set(pids).isdisjoint(before) and None not in pids and b"edge_workers_retiring 0" in metrics:
                    break
                await trio.sleep(0.05)
        await trio.sleep(0.5)  # the new workers serve on their own
        stop.set()
    total = load.total()
    assert total.ok > 300
    assert total.failures == 0, (dict(load.errors), {r: c.statuses for r, c in load.counts.items()})
    for pid in before:  # the old workers drained and exited
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
