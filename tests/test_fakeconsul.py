"""The fake Consul against a real Consul client library (py-consul), and edge's Consul
source against the fake."""

from __future__ import annotations

import threading
import time

import consul
import pytest
import trio

from edge.model import Endpoint
from edge.supervisor.endpoints import EndpointBook
from edge.supervisor.sources.consul import ConsulWatcher
from tests.fakeconsul import FakeConsul


@pytest.fixture
def fake_consul():
    fake = FakeConsul().start()
    yield fake
    fake.stop()


def register(client: consul.Consul, node: str, port: int, status: str = "passing", service: str = "billing") -> None:
    assert client.catalog.register(node, "127.0.0.1", service={"Service": service, "ID": f"{service}-{node}",
                                                               "Port": port, "Address": "127.0.0.1"},
                                   check={"Node": node, "CheckID": f"check-{node}", "Name": "http",
                                          "Status": status, "ServiceID": f"{service}-{node}"})


def test_the_fake_answers_a_real_client_with_blocking_queries(fake_consul):
    client = consul.Consul(host="127.0.0.1", port=fake_consul.port)
    register(client, "vm1", 9001)
    register(client, "vm2", 9002, status="critical")
    index, entries = client.health.service("billing")
    assert sorted(e["Service"]["Port"] for e in entries) == [9001, 9002]
    index, entries = client.health.service("billing", passing=True)
    assert [e["Service"]["Port"] for e in entries] == [9001]
    # a blocking query returns when the catalog changes, with a larger index
    timer = threading.Timer(0.3, register, (client, "vm2", 9002))
    started = time.monotonic()
    timer.start()
    new_index, entries = client.health.service("billing", passing=True, index=index, wait="5s")
    assert 0.25 < time.monotonic() - started < 3
    assert new_index > index and sorted(e["Service"]["Port"] for e in entries) == [9001, 9002]
    # ... and after `wait` when nothing changes
    started = time.monotonic()
    same, _ = client.health.service("billing", passing=True, index=new_index, wait="200ms")
    assert same == new_index and 0.15 < time.monotonic() - started < 2
    assert client.catalog.deregister("vm1", service_id="billing-vm1")
    assert [e["Service"]["Port"] for e in client.health.service("billing", passing=True)[1]] == [9002]


async def test_the_consul_source_follows_passing_instances_and_keeps_them_through_an_outage(fake_consul):
    client = consul.Consul(host="127.0.0.1", port=fake_consul.port)
    register(client, "vm1", 9001)
    book = EndpointBook()
    changes = []
    watcher = ConsulWatcher(book, lambda: changes.append(time.monotonic()), wait_seconds=2)
    key = (fake_consul.address, "dc1", "billing")

    async def until(expected) -> None:
        with trio.fail_after(5):
            while book.consul.get(key) != expected:
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        watcher.want({key})
        await until((Endpoint("127.0.0.1", 9001),))
        await trio.to_thread.run_sync(register, client, "vm2", 9002)
        await until((Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002)))
        await trio.to_thread.run_sync(register, client, "vm1", 9001, "critical")
        await until((Endpoint("127.0.0.1", 9002),))
        fake_consul.outage()
        await trio.sleep(1.0)
        assert book.consul[key] == (Endpoint("127.0.0.1", 9002),), "an outage must keep the last endpoints"
        assert watcher.statistics()["stale"]
        fake_consul.recover()
        await trio.to_thread.run_sync(register, client, "vm1", 9001)
        await until((Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002)))
        assert not watcher.statistics()["stale"]
        watcher.want(set())  # no longer referenced: not watched, forgotten
        assert key not in book.consul and watcher.watches == {}
        nursery.cancel_scope.cancel()
    assert len(changes) >= 4
