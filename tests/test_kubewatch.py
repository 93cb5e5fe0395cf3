"""The Reflector and the Kubernetes source against the fake API server: list, watch, both
shapes of 410, lists in pages (and a continue token that expires), and kinds that cannot
be listed (404: no CRD, 403: RBAC)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from edge.supervisor.endpoints import EndpointBook
from edge.supervisor.sources.kubernetes import KubernetesSource, Scope
from edge.supervisor.sources.kubewatch import Reflector, Resource
from tests.kubeapply import Kube, ambassador

MAPPINGS = Resource("getambassador.io", "v3alpha1", "mappings", "Mapping")


async def until(check, timeout: float = 20.0) -> None:
    """Until `check()` holds; the bound is generous, as the machine may be busy."""
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


@pytest.mark.parametrize("gone_as_status", [False, True], ids=["410-event", "410-status"])
async def test_a_compacted_history_means_a_new_list_and_deletions_are_not_missed(fake_kube, gone_as_status):
    fake_kube.gone_as_status = gone_as_status
    kube = Kube(fake_kube.api_client())
    for name in ("a", "b"):
        kube.apply(ambassador("Mapping", name, {"prefix": f"/{name}/", "service": "x"}))
    events = []
    reflector = Reflector(fake_kube.api_client(), MAPPINGS, lambda r, key, obj: events.append((key, obj is None)))

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


# ---- lists in pages ---------------------------------------------------------------------

def mappings(fake, names, namespace: str = "default") -> None:
    for name in names:
        fake.create(fake.kind("Mapping"), namespace, ambassador("Mapping", name, {"prefix": f"/{name}/",
                                                                                  "service": "x"}, namespace))


def list_requests(fake, plural: str = "mappings") -> list[dict[str, str]]:
    """The query of every list (not watch) request for a kind, in order."""
    out = []
    for method, path in list(fake.requests):
        q = {k: v[-1] for k, v in parse_qs(urlsplit(path).query).items()}
        if method == "GET" and urlsplit(path).path.endswith(f"/{plural}") and q.get("watch") != "true":
            out.append(q)
    return out


@pytest.mark.parametrize("count,page_size,pages", [(23, 5, 5), (25, 5, 5), (3, 5, 1), (0, 5, 1), (23, 0, 1)])
async def test_a_list_comes_in_pages_and_holds_every_object(fake_kube, count, page_size, pages):
    names = [f"m{i:03}" for i in range(count)]
    mappings(fake_kube, names)
    events = []
    reflector = Reflector(fake_kube.api_client(), MAPPINGS, lambda r, key, obj: events.append(key),
                          page_size=page_size)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await until(reflector.synced.is_set)
        assert sorted(name for _, name in reflector.items) == names
        assert sorted(name for _, name in events) == names  # each once, after the whole list
        stats = reflector.statistics()
        assert (stats["last_list_pages"], stats["pages"], stats["lists"], stats["list_restarts"]) == \
            (pages, pages, 1, 0)
        queries = list_requests(fake_kube)
        assert len(queries) == pages
        if page_size:
            assert all(q.get("limit") == str(page_size) for q in queries)
        else:
            assert all("limit" not in q for q in queries)
        assert "continue" not in queries[0] and all(q.get("continue") for q in queries[1:])
        nursery.cancel_scope.cancel()


async def test_an_expired_continue_token_lists_again_from_the_first_page(fake_kube):
    mappings(fake_kube, [f"m{i:03}" for i in range(23)])
    expired = []

    def before_page(kind, page) -> None:
        if kind.kind == "Mapping" and page == 3 and not expired:  # the 4th request of the first list
            expired.append(page)
            mappings(fake_kube, ["late"])  # written while the list was under way
            fake_kube.delete(kind, ("default", "m000"))  # on a page already served
            fake_kube.expire_continue()
    fake_kube.before_page = before_page
    events = []
    reflector = Reflector(fake_kube.api_client(), MAPPINGS, lambda r, key, obj: events.append((key, obj is None)),
                          page_size=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await until(reflector.synced.is_set)
        expected = sorted([f"m{i:03}" for i in range(1, 23)] + ["late"])
        assert sorted(name for _, name in reflector.items) == expected  # complete, and current
        assert sorted(name for (_, name), _deleted in events) == expected  # nothing from the half list
        stats = reflector.statistics()
        assert stats["list_restarts"] == 1 and stats["last_list_pages"] == 5 and stats["pages"] == 3 + 5
        assert [("continue" in q) for q in list_requests(fake_kube)] == \
            [False, True, True, True] + [False, True, True, True, True]
        assert stats["errors"] == 0 and stats["unavailable"] is None
        nursery.cancel_scope.cancel()


# ---- kinds that cannot be listed (404, 403), through the whole source -------------------

@asynccontextmanager
async def running(fake, **options):
    """A KubernetesSource on the fake; yields (source, latest): `await latest()` is the
    newest Snapshot sent so far (waiting for the first)."""
    source = KubernetesSource(fake.api_client(), Scope(), EndpointBook(), **options)
    send, recv = trio.open_memory_channel(10000)
    sent = []

    async def latest():
        if not sent:
            with trio.fail_after(20):
                sent.append(await recv.receive())
        while True:
            try:
                sent.append(recv.receive_nowait())
            except trio.WouldBlock:
                return sent[-1]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, send, lambda: None)
        yield source, latest
        nursery.cancel_scope.cancel()


async def until_sent(latest, check, timeout: float = 20.0):
    """Until the newest snapshot satisfies `check`; that snapshot."""
    with trio.fail_after(timeout):
        while not check(snapshot := await latest()):
            await trio.sleep(0.01)
    return snapshot


def names(snapshot, kind: str) -> list[str]:
    return sorted(o.name for o in snapshot.objects if o.kind == kind)


def logged(caplog, level: int, start: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == level and r.getMessage().startswith(start))


def kind_stats(source, kind: str) -> dict:
    return source.statistics()["kinds"][kind]


def requests_for(fake, plural: str, since: int = 0) -> int:
    return sum(f"/{plural}" in path for _, path in fake.requests[since:])


NOT_SERVED = "not served by the API server (404): CRD ratelimits.getambassador.io not installed"
FORBIDDEN = ('forbidden (403): ratelimits.getambassador.io is forbidden: User "edge" cannot list resource '
             '"ratelimits" in API group "getambassador.io" at the cluster scope')
RATELIMIT = {"domain": "ambassador", "limits": [{"pattern": [{"generic_key": "x"}], "rate": 1, "unit": "second"}]}


@pytest.mark.parametrize("status", [404, 403])
async def test_a_kind_that_cannot_be_listed_holds_nothing_up_is_reported_and_logged_once(fake_kube, caplog, status):
    caplog.set_level(logging.DEBUG, logger="edge.kubernetes")
    ratelimit = fake_kube.kind("RateLimit")
    mappings(fake_kube, ["m"])
    fake_kube.unserve(ratelimit) if status == 404 else fake_kube.forbid(ratelimit)
    async with running(fake_kube, unavailable_retry=0.02) as (source, latest):
        assert names(await latest(), "Mapping") == ["m"]  # the first snapshot is not held up
        stats = source.statistics()
        assert stats["synced"] and not stats["stale"]
        assert set(stats["unavailable"]) == {"RateLimit"}
        reason = stats["unavailable"]["RateLimit"]
        assert reason.startswith(NOT_SERVED if status == 404 else FORBIDDEN), reason
        await until(lambda: kind_stats(source, "RateLimit")["unavailable_retries"] >= 20)
        assert requests_for(fake_kube, "ratelimits") >= 20  # it did ask again, each time
        assert logged(caplog, logging.WARNING, "ratelimits:") == 1, caplog.text
        assert kind_stats(source, "RateLimit")["errors"] == 0  # a state, not a failure

        # it becomes available: listed and watched, and that is said once too
        fake_kube.create(ratelimit, "default", ambassador("RateLimit", "rl", RATELIMIT))
        fake_kube.serve(ratelimit) if status == 404 else fake_kube.allow(ratelimit)
        await until_sent(latest, lambda s: names(s, "RateLimit") == ["rl"])
        await until(lambda: not source.unavailable())
        assert logged(caplog, logging.INFO, "ratelimits: available again") == 1
        retries = kind_stats(source, "RateLimit")["unavailable_retries"]
        await trio.sleep(0.3)  # 15 retry periods: no retry now that it is watched
        assert kind_stats(source, "RateLimit")["unavailable_retries"] == retries
        assert logged(caplog, logging.WARNING, "ratelimits:") == 1


@pytest.mark.parametrize("served", ["with-its-crd", "a-moment-after-its-crd"])
async def test_a_kind_is_listed_when_its_crd_appears_not_at_the_next_periodic_retry(fake_kube, served):
    """The periodic retry is an hour away here: only the CRD event can get the kind listed.
    A real API server may answer 404 for a moment after it reports the CRD, so the retries
    after a CRD event are quick."""
    ratelimit = fake_kube.kind("RateLimit")
    fake_kube.unserve(ratelimit)
    async with running(fake_kube, unavailable_retry=3600, unavailable_first=3600) as (source, latest):
        await latest()
        await until(lambda: kind_stats(source, "RateLimit")["unavailable_retries"] >= 1)
        before = len(fake_kube.requests)
        if served == "with-its-crd":
            fake_kube.install_crd(ratelimit)
        else:
            with fake_kube.cond:
                fake_kube.install_crd(ratelimit)
                fake_kube.unserve(ratelimit)  # nobody sees it served in between
            # after the CRD event: a retry at once, a 404, and another retry soon after
            await until(lambda: requests_for(fake_kube, "ratelimits", before) >= 2)
            assert "RateLimit" in source.unavailable()
            fake_kube.serve(ratelimit)
        fake_kube.create(ratelimit, "default", ambassador("RateLimit", "rl", RATELIMIT))
        await until_sent(latest, lambda s: names(s, "RateLimit") == ["rl"])
        await until(lambda: not source.unavailable())


async def test_a_kind_that_may_be_listed_but_not_watched_is_polled_and_does_not_flap(fake_kube, caplog):
    caplog.set_level(logging.DEBUG, logger="edge.kubernetes")
    mapping = fake_kube.kind("Mapping")
    mappings(fake_kube, ["m"])
    fake_kube.forbid(mapping, verbs=("watch",))
    async with running(fake_kube, unavailable_retry=0.02) as (source, latest):
        assert names(await latest(), "Mapping") == ["m"]  # listed
        await until(lambda: kind_stats(source, "Mapping")["unavailable_retries"] >= 10)
        reason = source.unavailable()["Mapping"]
        assert 'cannot watch resource "mappings"' in reason, reason
        assert kind_stats(source, "Mapping")["stale"] and source.statistics()["stale"]
        assert logged(caplog, logging.WARNING, "mappings:") == 1, caplog.text
        assert logged(caplog, logging.INFO, "mappings: available again") == 0
        mappings(fake_kube, ["n"])  # without a watch, a later list brings it
        await until_sent(latest, lambda s: names(s, "Mapping") == ["m", "n"])
        fake_kube.allow(mapping)
        await until(lambda: not source.unavailable())
        assert logged(caplog, logging.INFO, "mappings: available again") == 1
        assert logged(caplog, logging.WARNING, "mappings:") == 1
        assert not source.statistics()["stale"]


@pytest.mark.parametrize("status", [404, 403])
async def test_a_kind_that_becomes_unavailable_after_it_was_listed_keeps_its_objects_and_is_stale(fake_kube, status):
    mapping = fake_kube.kind("Mapping")
    mappings(fake_kube, ["m"])
    async with running(fake_kube, unavailable_retry=0.05) as (source, latest):
        assert names(await latest(), "Mapping") == ["m"]
        await until(lambda: kind_stats(source, "Mapping")["connected"] and not source.unavailable())
        if status == 404:
            fake_kube.unserve(mapping)  # ends its watches too
        else:
            fake_kube.forbid(mapping)
            fake_kube.cut()  # RBAC does not end open watches; their timeout would
        await until(lambda: "Mapping" in source.unavailable())
        assert source.unavailable()["Mapping"].startswith(f"{'not served' if status == 404 else 'forbidden'} ")
        stats = kind_stats(source, "Mapping")
        assert stats["objects"] == 1 and stats["stale"] and source.statistics()["stale"]
        assert names(await latest(), "Mapping") == ["m"]  # still served
        fake_kube.serve(mapping) if status == 404 else fake_kube.allow(mapping)
        await until(lambda: not source.unavailable() and not source.statistics()["stale"])
        assert names(await latest(), "Mapping") == ["m"]


async def test_a_deleted_crd_deletes_its_objects_first_so_nothing_stale_is_kept(fake_kube):
    mapping = fake_kube.kind("Mapping")
    fake_kube.install_crd(mapping)
    mappings(fake_kube, ["m"])
    kube = Kube(fake_kube.api_client())
    async with running(fake_kube, unavailable_retry=0.05) as (source, latest):
        assert names(await latest(), "Mapping") == ["m"]
        await until(lambda: kind_stats(source, "Mapping")["connected"] and not source.unavailable())
        kube.ext.delete_custom_resource_definition("mappings.getambassador.io")
        await until(lambda: "Mapping" in source.unavailable())
        assert source.unavailable()["Mapping"].startswith("not served by the API server (404)")
        await until_sent(latest, lambda s: names(s, "Mapping") == [])
        assert kind_stats(source, "Mapping")["objects"] == 0 and not source.statistics()["stale"]


@pytest.mark.parametrize("content", [None, "x: [\n", "apiVersion: v1\nkind: Config\n"])
def test_credentials_that_cannot_be_loaded_are_one_clear_line_from_edge_serve(tmp_path, content):
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")}
    env["EDGE_SHM_DIR"] = str(tmp_path)  # nothing may be left behind: look here after
    proc = subprocess.run([sys.executable, "-m", "edge", "serve", "--kubernetes", "--kubeconfig", str(path),
                           "--workers", "1", "--admin-addr", "127.0.0.1:0"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edge serve: cannot load Kubernetes credentials from kubeconfig {path}: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("edge-")]


async def test_a_crd_deletion_deletes_its_kinds_objects_even_when_their_own_events_were_missed(fake_kube):
    """The objects' DELETED events go to the kind's watch; if it was between two requests
    then, only the CRD's own DELETED event (on the CRD watch) says they are gone."""
    from edge.supervisor.sources.kubernetes import CRDS

    mapping = fake_kube.kind("Mapping")
    fake_kube.install_crd(mapping)
    mappings(fake_kube, ["m", "n"])
    async with running(fake_kube) as (source, latest):
        assert names(await latest(), "Mapping") == ["m", "n"]
        source._on_event(CRDS, ("", "mappings.getambassador.io"), None)  # as the CRD watch delivers it
        await until_sent(latest, lambda s: names(s, "Mapping") == [])
        assert kind_stats(source, "Mapping")["objects"] == 0
