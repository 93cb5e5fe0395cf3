"""The hybrid data centre: one route to a Kubernetes Service through its EndpointSlices,
one to a VM service registered in Consul; instances are added, fail and are removed
under load, and no request fails."""

from __future__ import annotations

import collections
import json

import consul
import httpx
import pytest
import trio

from bench.loadgen import LoadGenerator
from tests.fakeconsul import FakeConsul
from tests.kubeapply import Kube, ambassador, endpoint_slice, service
from tests.upstream import Upstream

pytestmark = pytest.mark.integration


@pytest.fixture
def upstreams():
    ups = {name: Upstream(name) for name in ("pod1", "pod2", "vm1", "vm2")}
    yield ups
    for up in ups.values():
        if up.proc.poll() is None:
            up.stop()


def register(client: consul.Consul, node: str, port: int, status: str = "passing") -> None:
    client.catalog.register(node, "127.0.0.1", service={"Service": "billing", "ID": f"billing-{node}",
                                                        "Port": port, "Address": "127.0.0.1"},
                            check={"Node": node, "CheckID": f"alive-{node}", "Name": "alive", "Status": status,
                                   "ServiceID": f"billing-{node}"})


async def served_by(edge, path: str, names: set[str], timeout: float = 5.0) -> None:
    """Wait until 40 requests in a row on `path` are answered by exactly `names`."""
    async with httpx.AsyncClient() as client:
        with trio.fail_after(timeout):
            while True:
                seen = collections.Counter()
                for _ in range(40):
                    r = await client.get(edge.url(path))
                    seen[r.headers.get("x-upstream") if r.status_code == 200 else r.status_code] += 1
                if set(seen) == names:
                    return
                await trio.sleep(0.02)


async def test_kubernetes_and_consul_instances_change_live_with_no_failed_request(
        make_edge, fake_kube, tmp_path, upstreams):
    fake_consul = FakeConsul().start()
    try:
        kube = Kube(fake_kube.api_client())
        agent = consul.Consul(host="127.0.0.1", port=fake_consul.port)
        pod1, pod2, vm1, vm2 = (upstreams[n] for n in ("pod1", "pod2", "vm1", "vm2"))
        kube.apply(service("orders", [{"name": "http", "port": 80}]))
        kube.apply(endpoint_slice("orders-a", "orders", ["127.0.0.1"], pod1.port, "http"))
        kube.apply(ambassador("Mapping", "orders", {"prefix": "/orders/", "service": "orders",
                                                    "resolver": "kubernetes-endpoint"}))
        kube.apply(ambassador("ConsulResolver", "consul-dc1", {"address": fake_consul.address, "datacenter": "dc1"}))
        kube.apply(ambassador("Mapping", "billing", {"prefix": "/billing/", "service": "billing",
                                                     "resolver": "consul-dc1"}))
        register(agent, "vm1", vm1.port)
        edge = make_edge({}, workers=2, extra_args=(
            "--kubernetes", "--kubeconfig", fake_kube.kubeconfig(tmp_path / "kubeconfig")))
        await served_by(edge, "/orders/", {"pod1"})
        await served_by(edge, "/billing/", {"vm1"})

        load = LoadGenerator(edge.port, ["/orders/", "/billing/"], connections=6)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.run, stop)
            await trio.sleep(0.3)
            # instances added
            await trio.to_thread.run_sync(kube.apply, endpoint_slice("orders-b", "orders", ["127.0.0.1"],
                                                                     pod2.port, "http"))
            await trio.to_thread.run_sync(register, agent, "vm2", vm2.port)
            await served_by(edge, "/orders/", {"pod1", "pod2"})
            await served_by(edge, "/billing/", {"vm1", "vm2"})
            # the first ones fail their checks (they still run: in-flight requests finish)
            await trio.to_thread.run_sync(kube.apply, endpoint_slice("orders-a", "orders", ["127.0.0.1"],
                                                                     pod1.port, "http", ready=False))
            await trio.to_thread.run_sync(register, agent, "vm1", vm1.port, "critical")
            await served_by(edge, "/orders/", {"pod2"})
            await served_by(edge, "/billing/", {"vm2"})
            # ... then are removed, and their processes stop
            await trio.to_thread.run_sync(kube.delete, "EndpointSlice", "orders-a")
            await trio.to_thread.run_sync(lambda: agent.catalog.deregister("vm1", service_id="billing-vm1"))
            await trio.sleep(0.3)
            pod1.stop()
            vm1.stop()
            await trio.sleep(0.5)
            await served_by(edge, "/orders/", {"pod2"})
            await served_by(edge, "/billing/", {"vm2"})
            stop.set()
        for route in ("/orders/", "/billing/"):
            counts = load.counts[route]
            assert counts.ok > 200, f"{route}: the load generator barely ran"
            assert counts.failures == 0 and set(counts.statuses) == {200}, (route, dict(load.errors), counts.statuses)
        clusters = {c["service"]: c for c in json.loads(edge.admin("/edge/v1/clusters")[1])}
        assert clusters["billing"]["discovery"] == "consul"
        assert clusters["billing"]["endpoints"] == [f"127.0.0.1:{vm2.port}"]
        assert clusters["orders"]["endpoints"] == [f"127.0.0.1:{pod2.port}"]
    finally:
        fake_consul.stop()
