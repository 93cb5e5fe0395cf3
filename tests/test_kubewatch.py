"""The Reflector against the fake API server: list, watch, and both shapes of 410."""

from __future__ import annotations

import pytest
import trio

from edge.supervisor.sources.kubewatch import Reflector, Resource
from tests.kubeapply import Kube, ambassador

MAPPINGS = Resource("getambassador.io", "v3alpha1", "mappings", "Mapping")


@pytest.mark.parametrize("gone_as_status", [False, True], ids=["410-event", "410-status"])
async def test_a_compacted_history_means_a_new_list_and_deletions_are_not_missed(fake_kube, gone_as_status):
    fake_kube.gone_as_status = gone_as_status
    kube = Kube(fake_kube.api_client())
    for name in ("a", "b"):
        kube.apply(ambassador("Mapping", name, {"prefix": f"/{name}/", "service": "x"}))
    events = []
    reflector = Reflector(fake_kube.api_client(), MAPPINGS, lambda r, key, obj: events.append((key, obj is None)))

    async def until(check) -> None:
        with trio.fail_after(10):
            while not check():
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await until(lambda: reflector.synced.is_set() and reflector.connected)
        assert sorted(reflector.items) == [("default", "a"), ("default", "b")]
        fake_kube.outage()  # edge cannot see what happens now
        fake_kube.delete(fake_kube.kind("Mapping"), ("default", "a"))
        fake_kube.create(fake_kube.kind("Mapping"), "default", ambassador("Mapping", "c", {"prefix": "/c/",
                                                                                         "service": "x"}))
        fake_kube.expire()
        fake_kube.recover()
        await until(lambda: sorted(reflector.items) == [("default", "b"), ("default", "c")])
        assert reflector.gone >= 1 and reflector.lists >= 2
        assert (("default", "a"), True) in events  # the deletion during the gap was delivered
        nursery.cancel_scope.cancel()
