"""Shared-memory segments: the routes double buffer (seqlock) and per-worker stat cells.

Segments live in /dev/shm (or $EDGE_SHM_DIR, read at import, so workers started by the
supervisor inherit it) under a per-instance prefix. The supervisor creates and unlinks
them; workers only attach (plain mmap of the file, so no `resource_tracker` registers the
attach and unlinks the segment when a worker exits). This module knows bytes, not msgpack.

routes layout (little-endian):
    0   magic 8s, layout u32, active slot u32, seqlock generation u64
    24  moved u32, pad u32, successor name 64s        (set when the segment is replaced)
    96  slot meta x2, 64 bytes each: offset u64, capacity u64, length u64,
        publish time f64, content hash 32s
    256 slot 0 payload, then slot 1 payload
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time
from dataclasses import dataclass

# Where segments live: a memory-backed directory. Read when the module is imported (the
# workers inherit the supervisor's environment); the functions below read it when called.
SHM_DIR = os.environ.get("EDGE_SHM_DIR") or "/dev/shm"
ROUTES_MAGIC = b"EDGERTBL"
STATS_MAGIC = b"EDGESTAT"
LAYOUT_VERSION = 2

_HEAD = struct.Struct("<8sIIQ")  # magic, layout, active, generation
_GEN_OFF = 16
_ACTIVE_OFF = 12
_MOVED = struct.Struct("<II64s")
_MOVED_OFF = 24
_META = struct.Struct("<QQQd32s")
_META_OFF = 96
_META_SIZE = 64
_DATA_OFF = 256
_U64 = struct.Struct("<Q")


class LayoutMismatch(RuntimeError):
    """The segment was written by another layout version: an impossible environment."""


class TornRead(RuntimeError):
    """No consistent snapshot could be read within the retry budget."""


class NoSpace(OSError):
    """/dev/shm has no room for a segment. On tmpfs, ftruncate alone succeeds without room
    and the first write to a missing page is a SIGBUS, so segments reserve their pages."""

    def __init__(self, name: str, size: int, free: int | None, cause: OSError):
        where = f"{free:,} bytes free" if free is not None else "free space unknown"
        super().__init__(cause.errno, f"cannot reserve {size:,} bytes of shared memory for segment {name} "
                                      f"in {SHM_DIR} ({where}: {cause.strerror}); mount a larger "
                                      f"memory-backed emptyDir at {SHM_DIR} (emptyDir.medium: Memory)")
        self.name, self.size, self.free = name, size, free

    def __str__(self) -> str:
        return self.strerror


def shm_free() -> int | None:
    """Bytes an unprivileged writer may still allocate in SHM_DIR."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def create_segment(name: str, size: int) -> mmap.mmap:
    """Create segment `name` of `size` bytes with every page reserved (posix_fallocate), so
    that a full /dev/shm is a NoSpace here and not a SIGBUS at some later write."""
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            os.unlink(path)
            raise NoSpace(name, size, shm_free(), exc) from None
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def attach_segment(name: str) -> mmap.mmap:
    """Map an existing segment, whole (workers: no resource_tracker, see above)."""
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def _digest(payload: bytes | memoryview) -> bytes:
    return hashlib.blake2b(payload, digest_size=32).digest()


@dataclass(frozen=True)
class Snapshot:
    generation: int  # number of publishes so far (seqlock generation // 2)
    payload: bytes
    content_hash: bytes
    publish_time: float


class RoutesWriter:
    """The one writer of a routes segment (the supervisor)."""

    def __init__(self, name: str, slot_capacity: int = 4 << 20):
        self.name = name
        self.slot_capacity = slot_capacity
        self._mem = create_segment(name, _DATA_OFF + 2 * slot_capacity)
        _HEAD.pack_into(self._mem, 0, ROUTES_MAGIC, LAYOUT_VERSION, 0, 0)
        for slot in (0, 1):
            offset = _DATA_OFF + slot * slot_capacity
            _META.pack_into(self._mem, _META_OFF + slot * _META_SIZE, offset, slot_capacity, 0, 0.0, b"")
        self._seq = 0
        self._active = 0

    @property
    def generation(self) -> int:
        return self._seq // 2

    def fits(self, length: int) -> bool:
        return length <= self.slot_capacity

    def publish(self, payload: bytes, content_hash: bytes | None = None, now: float | None = None) -> int:
        """Write `payload` into the inactive slot and flip to it; returns the new generation.

        Raises ValueError when the payload does not fit a slot (make a bigger segment).
        """
        if not self.fits(len(payload)):
            raise ValueError(f"table of {len(payload)} bytes exceeds slot of {self.slot_capacity}")
        slot = 1 - self._active
        offset = _DATA_OFF + slot * self.slot_capacity
        self._mem[offset:offset + len(payload)] = payload
        digest = content_hash if content_hash is not None else _digest(payload)
        when = time.time() if now is None else now
        # Odd generation while the active slot and its metadata change.
        self._seq += 1
        _U64.pack_into(self._mem, _GEN_OFF, self._seq)
        _META.pack_into(self._mem, _META_OFF + slot * _META_SIZE, offset, self.slot_capacity,
                        len(payload), when, digest)
        struct.pack_into("<I", self._mem, _ACTIVE_OFF, slot)
        self._seq += 1
        _U64.pack_into(self._mem, _GEN_OFF, self._seq)
        self._active = slot
        return self._seq // 2

    def announce_successor(self, successor: str) -> None:
        """Tell readers the table now lives in segment `successor`."""
        _MOVED.pack_into(self._mem, _MOVED_OFF, 1, 0, successor.encode())

    def continue_generation(self, generation: int) -> None:
        """Start numbering after `generation` (used by a successor segment)."""
        self._seq = generation * 2
        _U64.pack_into(self._mem, _GEN_OFF, self._seq)

    def close(self) -> None:
        self._mem.close()
        unlink(self.name)


class RoutesReader:
    """Attach to a routes segment and take consistent snapshots of the active slot."""

    def __init__(self, name: str):
        self.name = name
        self._mem = attach_segment(name)
        magic, layout, _, _ = _HEAD.unpack_from(self._mem, 0)
        if magic != ROUTES_MAGIC or layout != LAYOUT_VERSION:
            raise LayoutMismatch(f"segment {name}: magic {magic!r} layout {layout}, expected {LAYOUT_VERSION}")

    def generation(self) -> int:
        """The published generation, cheap enough to poll."""
        return _U64.unpack_from(self._mem, _GEN_OFF)[0] // 2

    def successor(self) -> str | None:
        moved, _, name = _MOVED.unpack_from(self._mem, _MOVED_OFF)
        return name.rstrip(b"\0").decode() if moved else None

    def read(self, attempts: int = 100) -> Snapshot | None:
        """The active table, or None before the first publish.

        Raises TornRead if the writer kept changing it for `attempts` tries, or if the
        copied bytes do not match their content hash.
        """
        mem = self._mem
        for _ in range(attempts):
            seq = _U64.unpack_from(mem, _GEN_OFF)[0]
            if seq & 1:
                time.sleep(0)
                continue
            if seq == 0:
                return None
            slot = struct.unpack_from("<I", mem, _ACTIVE_OFF)[0]
            offset, capacity, length, when, digest = _META.unpack_from(mem, _META_OFF + slot * _META_SIZE)
            if length > capacity or offset + length > len(mem):
                continue
            payload = mem[offset:offset + length]
            if _U64.unpack_from(mem, _GEN_OFF)[0] != seq:
                continue
            if _digest(payload) != digest:
                raise TornRead(f"segment {self.name}: content hash mismatch at generation {seq // 2}")
            return Snapshot(seq // 2, payload, digest, when)
        raise TornRead(f"segment {self.name}: writer busy for {attempts} attempts")

    def close(self) -> None:
        self._mem.close()


# ---- per-worker stat cells -------------------------------------------------------------

STAT_FIELDS = (
    "pid",
    "heartbeat",
    "generation",  # table generation the worker serves
    "requests",
    "active_connections",
    "table_load_failures",
    "internal_errors",
    "draining",
    "client_errors",  # 4xx we answered ourselves
    "upstream_errors",  # 502/503/504
    "reactor_batches",  # turns of the reactor loop that handled events (one scheduler trip each)
    "reactor_events",  # socket events those turns handled
    "ratelimited",  # requests refused with 429
    "ratelimit_log_only_over",  # requests over a LogOnly limit (served)
    "ratelimit_store_failures",  # requests decided by the failure mode: Redis down or too slow
    "accept_errors",  # accepts that failed: EMFILE (out of file descriptors) and the like
    "tls_handshake_errors",  # TLS handshakes that failed or timed out
    "h2_connections",  # HTTP/2 connections opened
    "h2_connection_errors",  # HTTP/2 connections closed for the peer's fault (floods, rapid reset, bad frames)
)
_CELL_SIZE = 8 * 24
assert len(STAT_FIELDS) <= _CELL_SIZE // 8, "a stats cell is full: grow _CELL_SIZE and bump LAYOUT_VERSION"
_STATS_HEAD = struct.Struct("<8sII")


class StatCells:
    """Fixed array of per-slot counters; each slot's worker is the only writer of its cell.

    The supervisor creates the segment (`create=True`) and reads every cell.
    """

    def __init__(self, name: str, slots: int = 0, create: bool = False):
        self.name = name
        if create:
            self._mem = create_segment(name, 16 + slots * _CELL_SIZE)
            _STATS_HEAD.pack_into(self._mem, 0, STATS_MAGIC, LAYOUT_VERSION, slots)
        else:
            self._mem = attach_segment(name)
        magic, layout, self.slots = _STATS_HEAD.unpack_from(self._mem, 0)
        if magic != STATS_MAGIC or layout != LAYOUT_VERSION:
            raise LayoutMismatch(f"segment {name}: magic {magic!r} layout {layout}")
        self._owner = create

    def offset(self, slot: int, field: str) -> int:
        if not 0 <= slot < self.slots:
            raise IndexError(f"slot {slot} outside 0..{self.slots - 1}")
        return 16 + slot * _CELL_SIZE + 8 * STAT_FIELDS.index(field)

    def set(self, slot: int, field: str, value: int) -> None:
        _U64.pack_into(self._mem, self.offset(slot, field), value)

    def get(self, slot: int, field: str) -> int:
        return _U64.unpack_from(self._mem, self.offset(slot, field))[0]

    def cell(self, slot: int) -> dict[str, int]:
        return {f: self.get(slot, f) for f in STAT_FIELDS}

    def close(self) -> None:
        self._mem.close()
        if self._owner:
            unlink(self.name)
