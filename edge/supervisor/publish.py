"""Publish route tables into the routes segment: hash skip, growth, wake-up.

One writer. A table whose encoding is byte-for-byte the current one is not published
again; a table that outgrows its slot moves to a bigger segment, announced to readers in
the old one's header.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from edge import codec
from edge.model import RouteTable
from edge.shm import NoSpace, RoutesWriter


@dataclass(frozen=True)
class Published:
    generation: int
    version: str  # hex content hash
    publish_time: float
    size: int


class TableRejected(Exception):
    """The table breaks a global invariant: rejected whole, nothing published."""


class TableTooLarge(TableRejected):
    """The encoded table is over the memory budget."""

    def __init__(self, size: int, budget: int):
        super().__init__(f"the route table encodes to {size:,} bytes, over the budget of {budget:,} bytes "
                         f"(--max-table-mb)")
        self.size = size
        self.budget = budget


class NoRoomForTable(TableRejected):
    """The table outgrew its segment and /dev/shm has no room for a bigger one."""

    def __init__(self, size: int, cause: NoSpace):
        super().__init__(f"the route table encodes to {size:,} bytes and needs a bigger routes segment: {cause}")
        self.size = size
        self.cause = cause


class Publisher:
    def __init__(self, prefix: str, slot_capacity: int = 4 << 20, max_bytes: int = 256 << 20):
        self.prefix = prefix
        self.max_bytes = max_bytes
        self._moves = 0
        self.writer = RoutesWriter(self._segment_name(), slot_capacity)
        self.current: Published | None = None
        self.skipped = 0
        # Outgrown segments stay until close(): workers attached to one (and replacements
        # started with the first name) follow its successor pointer.
        self._retired: list[RoutesWriter] = []

    def _segment_name(self) -> str:
        return f"{self.prefix}-routes-{self._moves}"

    @property
    def first_segment(self) -> str:
        return f"{self.prefix}-routes-0"

    def publish(self, table: RouteTable) -> Published | None:
        """Publish `table`; None when it is identical to the current one. Raises
        TableTooLarge (nothing published) when it is over `max_bytes`, NoRoomForTable when
        it needs a bigger segment and /dev/shm has no room for one."""
        payload = codec.encode(table)
        if len(payload) > self.max_bytes:
            raise TableTooLarge(len(payload), self.max_bytes)
        digest = codec.content_hash(payload)
        if self.current is not None and self.current.version == digest.hex():
            self.skipped += 1
            return None
        if not self.writer.fits(len(payload)):
            self._grow(len(payload))
        now = time.time()
        generation = self.writer.publish(payload, digest, now)
        self.current = Published(generation, digest.hex(), now, len(payload))
        return self.current

    def _grow(self, needed: int) -> None:
        old = self.writer
        self._moves += 1
        capacity = max(needed * 2, old.slot_capacity * 2)
        try:
            new = RoutesWriter(self._segment_name(), capacity)
        except NoSpace as exc:
            self._moves -= 1  # nothing was made: the next try takes the same name
            raise NoRoomForTable(needed, exc) from None
        new.continue_generation(old.generation)
        old.announce_successor(new.name)
        self._retired.append(old)
        self.writer = new

    def close(self) -> None:
        self.writer.close()
        for old in self._retired:
            old.close()
