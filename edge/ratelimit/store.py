"""The node-local counter store: a shared-memory segment of buckets, one region per worker
cell, so every cell has one writer and no lock is taken (DESIGN.md §3).

Layout (little-endian u64 words): a 4-word header (magic, layout, cells, buckets), then
`buckets` rows, each holding every cell's bucket side by side (so one slice reads a row):
4 words per cell: key, window index, count in that window, count in the window before. A key is a 64-bit hash of the limit id and the descriptor values (never
0: 0 marks an empty bucket), so counters are keyed by limit and descriptor, not by table
generation, and survive reloads and worker restarts (the supervisor owns the segment).

A key lives in its cell at one of PROBES buckets from its hash; when all are taken by other
keys the one with the oldest window is evicted: a full table forgets old windows first and
never blocks. Readers sum the key's counts over every cell. Word stores are atomic on the
platforms we run on (aligned 8 bytes); a bucket changing keys is cleared (key 0) first.
"""

from __future__ import annotations

import struct

from edge.shm import LayoutMismatch, attach_segment, create_segment, unlink

MAGIC = 0x4C52454744454745  # "EGDEGERL"-ish tag, checked on attach
LAYOUT = 1
PROBES = 2
_HEAD = struct.Struct("<4Q")


def segment_size(cells: int, buckets: int) -> int:
    return _HEAD.size + cells * buckets * 32


class CounterStore:
    def __init__(self, name: str, cells: int = 0, buckets: int = 0, create: bool = False, adopt: bool = False):
        """Create (supervisor: `cells`, `buckets` a power of two) or attach (worker).
        `adopt`: attach and own it (unlinked at close), as the edge that takes over a
        running one's counters does."""
        self.name = name
        if create:
            if buckets <= 0 or buckets & (buckets - 1):
                raise ValueError(f"buckets must be a power of two, got {buckets}")
            self._mem = create_segment(name, segment_size(cells, buckets))  # NoSpace when /dev/shm is full
        else:
            self._mem = attach_segment(name)
        if create:
            _HEAD.pack_into(self._mem, 0, MAGIC, LAYOUT, cells, buckets)
        magic, layout, self.cells, self.buckets = _HEAD.unpack_from(self._mem, 0)
        if magic != MAGIC or layout != LAYOUT:
            raise LayoutMismatch(f"segment {name}: not a rate-limit segment of layout {LAYOUT}")
        self._owner = create or adopt
        self._mask = self.buckets - 1
        self._row_words = self.cells * 4
        self._row_bytes = self._row_words * 8
        self._row = struct.Struct(f"<{self._row_words}Q")
        self._cell_starts = range(0, self._row_words, 4)  # each cell's bucket in a row
        self.words = memoryview(self._mem)[_HEAD.size:].cast("Q")
        self.evictions = 0

    def counts(self, key: int, window: int) -> tuple[int, int]:
        """(count in `window`, count in the window before), summed over every cell."""
        return self._sum(self._row.unpack_from(self._mem, _HEAD.size + self._row_bytes * (key & self._mask)),
                         key, window)

    def _sum(self, row: tuple, key: int, window: int) -> tuple[int, int]:
        """`counts` from the key's first row (every cell's bucket), probing further only
        when another key sits where ours would."""
        current = previous = 0
        for i in self._cell_starts:
            k = row[i]
            if k == key:
                w = row[i + 1]
                if w == window:
                    current += row[i + 2]
                    previous += row[i + 3]
                elif w == window - 1:
                    previous += row[i + 2]
            elif k:
                return self._counts_probing(key, window)
        return current, previous

    def _counts_probing(self, key: int, window: int) -> tuple[int, int]:
        current = previous = 0
        row_words = self._row_words
        pending = range(self.cells)  # cells where our key may still be found further on
        for p in range(PROBES):
            start = ((key + p) & self._mask) * row_words
            row = self.words[start:start + row_words].tolist()
            others = []
            for cell in pending:
                k, w, count, before = row[cell * 4:cell * 4 + 4]
                if k == key:
                    if w == window:
                        current += count
                        previous += before
                    elif w == window - 1:
                        previous += count
                elif k:
                    others.append(cell)
            if not others:
                break
            pending = others
        return current, previous

    def take(self, cell: int, key: int, now: float, unit: int, limit: int, enforce: bool) -> bool:
        """One request against one limit, in a single read of the key's row: True, and
        counted in `cell`, when the sliding-window estimate (algorithm.estimate) is below
        `limit`; False when it is not, counted only if not `enforce` (LogOnly)."""
        window = int(now) // unit  # the same as int(now // unit) for whole seconds, cheaper
        start = (key & self._mask) * self._row_words
        row = self._row.unpack_from(self._mem, _HEAD.size + start * 8)
        current, previous = self._sum(row, key, window)
        within = current + previous * (1.0 - (now - window * unit) / unit) < limit
        if within or not enforce:
            mine = cell * 4
            if row[mine] == key and row[mine + 1] == window:  # the usual case: no second read
                self.words[start + mine + 2] = row[mine + 2] + 1
            else:
                self.add(cell, key, window)
        return within

    def add(self, cell: int, key: int, window: int) -> None:
        """Count one request for `key` in `window`, in `cell` (the caller's own)."""
        words, mask, row_words = self.words, self._mask, self._row_words
        i = (key & mask) * row_words + cell * 4
        if words[i] == key and words[i + 1] == window:  # the usual case, first
            words[i + 2] += 1
            return
        victim, oldest = -1, None
        for p in range(PROBES):
            i = ((key + p) & mask) * row_words + cell * 4
            k = words[i]
            if k == key:
                w = words[i + 1]
                if w == window:
                    words[i + 2] += 1
                elif w == window - 1:
                    # readers may see the new window with the old count for a moment:
                    # an overestimate, never an underestimate
                    words[i + 3] = words[i + 2]
                    words[i + 1] = window
                    words[i + 2] = 1
                else:
                    words[i + 3] = 0
                    words[i + 1] = window
                    words[i + 2] = 1
                return
            w = words[i + 1] if k else -1
            if oldest is None or w < oldest:
                victim, oldest = i, w
        if oldest is not None and oldest >= window - 1:
            self.evictions += 1  # a live key loses this cell's counts: the table is too small
        i = victim
        words[i] = 0
        words[i + 1] = window
        words[i + 2] = 1
        words[i + 3] = 0
        words[i] = key

    def disown(self) -> None:
        """Leave the segment in place at close: another edge owns it now."""
        self._owner = False

    def close(self) -> None:
        self.words.release()
        self._mem.close()
        if self._owner:
            unlink(self.name)
