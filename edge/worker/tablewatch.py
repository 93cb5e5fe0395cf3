"""Load route tables from the routes segment: on a wake-up from the supervisor, or by
polling the generation as a fallback. The new Router (indexes, compiled regexes) is built
in a thread while the old one keeps serving (a 10,000-Mapping table takes ~270 ms to
decode and index; the reactor keeps its turns meanwhile), then swapped in with one
assignment."""

from __future__ import annotations

import logging

import trio

from edge import codec
from edge.shm import RoutesReader, TornRead
from edge.worker.router import Router
from edge.worker.state import WorkerState

log = logging.getLogger("edge.worker")


class TableWatch:
    def __init__(self, segment: str, state: WorkerState):
        self.reader = RoutesReader(segment)
        self.state = state
        self.loaded = -1
        self.failures = 0

    async def poll(self) -> bool:
        """Load a newer table if there is one; True if the Router changed.

        A torn read or an undecodable table keeps the current Router and counts a failure.
        """
        successor = self.reader.successor()
        if successor:
            old, self.reader = self.reader, RoutesReader(successor)
            old.close()
        if self.reader.generation() == self.loaded:
            return False
        try:
            snap = self.reader.read()
            if snap is None:
                return False
            router = await trio.to_thread.run_sync(_build_router, snap.payload, snap.generation, self.state.router)
        except (TornRead, codec.CodecError) as exc:
            self.failures += 1
            log.warning("keeping table generation %s: %s", self.loaded, exc)
            return False
        self.state.router = router
        self.loaded = snap.generation
        return True


def _build_router(payload: bytes, generation: int, current: Router | None) -> Router:
    table = codec.decode(payload)
    return Router(table, generation) if current is None else current.with_table(table, generation)
