"""The Consul source: passing instances of the Consul services that Mappings route to.

Only services named by a cluster with a ConsulResolver are watched, each with Consul's
blocking queries on `/v1/health/service/<name>?passing` (`index`, `wait`), backing off
on errors. Consul going away keeps the last endpoints. Results land in the EndpointBook,
then `endpoints_changed` asks the supervisor to publish them (no compile).

httpx is the client: its async API runs on trio and is cancelled like any trio task, so a
blocking query never holds a thread.
"""

from __future__ import annotations

import logging
from typing import Callable

import httpx
import trio

from edge.model import Endpoint
from edge.supervisor.endpoints import EndpointBook
from edge.backoff import Backoff

log = logging.getLogger("edge.consul")

Key = tuple[str, str, str]  # (agent address, datacenter, service)


def passing_endpoints(entries: list) -> tuple[Endpoint, ...]:
    """Endpoints from a /v1/health/service answer: the service's address, else its node's."""
    out = set()
    for entry in entries:
        service, node = entry.get("Service") or {}, entry.get("Node") or {}
        address = service.get("Address") or node.get("Address")
        port = service.get("Port")
        if address and isinstance(port, int) and port > 0:
            out.add(Endpoint(address, port))
    return tuple(sorted(out, key=lambda e: (e.address, e.port)))


class ConsulWatcher:
    """`want(keys)` sets which services are watched; run `run()` in a nursery."""

    def __init__(self, book: EndpointBook, endpoints_changed: Callable[[], None], wait_seconds: int = 30):
        self.book = book
        self.endpoints_changed = endpoints_changed
        self.wait_seconds = wait_seconds
        self.watches: dict[Key, trio.CancelScope] = {}
        self.state: dict[Key, dict] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def want(self, keys: set[Key]) -> None:
        """Watch exactly `keys`: start the new ones, stop (and forget) the others."""
        for key in sorted(self.watches.keys() - keys):
            self.watches.pop(key).cancel()
            self.state.pop(key, None)
            if self.book.consul.pop(key, None) is not None:
                self.endpoints_changed()
        for key in sorted(keys - self.watches.keys()):
            scope = trio.CancelScope()
            self.watches[key] = scope
            self.state[key] = {"connected": False, "index": 0, "errors": 0, "last_error": "", "endpoints": 0}
            self._nursery.start_soon(self._watch, key, scope)

    def statistics(self) -> dict:
        stale = any(not s["connected"] for s in self.state.values())
        return {"stale": stale, "services": {"/".join(k): dict(s) for k, s in sorted(self.state.items())}}

    async def _watch(self, key: Key, scope: trio.CancelScope) -> None:
        address, datacenter, service = key
        state = self.state[key]
        backoff = Backoff(first=0.2, cap=10.0)
        url = f"http://{address}/v1/health/service/{service}"
        with scope:
            async with httpx.AsyncClient(timeout=httpx.Timeout(self.wait_seconds + 10, connect=5)) as http:
                while True:
                    try:
                        resp = await http.get(url, params={"dc": datacenter, "passing": "true",
                                                           "index": state["index"], "wait": f"{self.wait_seconds}s"})
                        resp.raise_for_status()
                        index = int(resp.headers.get("X-Consul-Index", "0"))
                        endpoints = passing_endpoints(resp.json())
                    except (httpx.HTTPError, ValueError, AttributeError) as exc:
                        state.update(connected=False, errors=state["errors"] + 1, last_error=str(exc)[:200])
                        delay = backoff.next()
                        log.warning("consul %s/%s: %s; keeping the last endpoints, retrying in %.1fs",
                                    address, service, exc, delay)
                        await trio.sleep(delay)
                        continue
                    backoff.reset()
                    # an index that goes backwards (Consul restarted) means: start over
                    state.update(connected=True, index=index if index >= state["index"] else 0,
                                 last_error="", endpoints=len(endpoints))
                    if index <= 0:
                        await trio.sleep(1)  # no index: nothing to block on, do not spin
                    if self.book.consul.get(key) != endpoints:
                        self.book.consul[key] = endpoints
                        self.endpoints_changed()
