"""The routes segment: seqlock double buffer, hash check, layout version, growth."""

from __future__ import annotations

import errno
import multiprocessing
import os
import secrets
import struct

import pytest

from edge import shm
from edge.model import Diagnostic, RouteTable, Settings
from edge.ratelimit.store import CounterStore
from edge.shm import LayoutMismatch, NoSpace, RoutesReader, RoutesWriter, StatCells, TornRead, unlink
from edge.supervisor.publish import NoRoomForTable, Publisher


def _payload(n: int) -> bytes:
    # self-describing: a torn payload cannot look whole (length and every byte tie to n)
    size = 1000 + (n * 7919) % 60000
    return struct.pack("<QQ", n, size) + bytes([n % 251]) * size


def _check(payload: bytes) -> int:
    n, size = struct.unpack_from("<QQ", payload)
    assert len(payload) == 16 + size and payload[16:] == bytes([n % 251]) * size
    return n


def _hammer(name: str, count: int, created, go) -> None:
    writer = RoutesWriter(name, slot_capacity=1 << 16)
    created.set()
    go.wait()
    for n in range(1, count + 1):
        writer.publish(_payload(n))
    writer.close()  # unlinks; the reader's mapping stays valid


def test_readers_never_accept_a_torn_table():
    name = f"edge-test-{secrets.token_hex(4)}-routes"
    ctx = multiprocessing.get_context("fork")
    created, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hammer, args=(name, 20000, created, go))
    proc.start()
    try:
        assert created.wait(10)
        reader = RoutesReader(name)
        go.set()
        seen = set()
        while proc.is_alive() or not seen:
            try:
                snap = reader.read(attempts=20)
            except TornRead:
                continue  # the writer was busy: try again, never accept the bytes
            if snap is not None:
                seen.add(_check(snap.payload))
        proc.join()
        assert proc.exitcode == 0
        final = reader.read()
        assert _check(final.payload) == 20000 and final.generation == 20000
        assert len(seen) > 10  # reads really overlapped the writes
        reader.close()
    finally:
        proc.join(10)
        unlink(name)


def test_generation_hash_and_successor():
    name = f"edge-test-{secrets.token_hex(4)}-routes"
    writer = RoutesWriter(name, slot_capacity=1024)
    reader = RoutesReader(name)
    try:
        assert reader.read() is None
        assert writer.publish(b"one") == 1 and writer.publish(b"two") == 2
        snap = reader.read()
        assert (snap.generation, snap.payload) == (2, b"two")
        with pytest.raises(ValueError):
            writer.publish(b"x" * 2000)
        writer.announce_successor("bigger")
        assert reader.successor() == "bigger"
    finally:
        reader.close()
        writer.close()


def test_layout_mismatch_is_refused():
    name = f"edge-test-{secrets.token_hex(4)}-routes"
    writer = RoutesWriter(name, slot_capacity=1024)
    try:
        struct.pack_into("<I", writer._mem, 8, 99)
        with pytest.raises(LayoutMismatch):
            RoutesReader(name)
    finally:
        writer.close()
        unlink(name)


def test_stat_cells_one_writer_per_slot():
    name = f"edge-test-{secrets.token_hex(4)}-stats"
    owner = StatCells(name, 3, create=True)
    try:
        worker = StatCells(name)
        worker.set(2, "requests", 41)
        assert owner.get(2, "requests") == 41 and owner.get(1, "requests") == 0
        with pytest.raises(IndexError):
            worker.set(3, "requests", 1)
        worker.close()
    finally:
        owner.close()


# ---- a /dev/shm without room (a real small tmpfs) ---------------------------------------

@pytest.fixture
def small_shm(make_tmpfs, monkeypatch):
    """An 8 MiB tmpfs as SHM_DIR (what every segment function reads, in every module)."""
    where = make_tmpfs("8m")
    monkeypatch.setattr(shm, "SHM_DIR", str(where))
    return where


def _fill(where, leave: int) -> str:
    """A ballast file that leaves `leave` bytes free: /dev/shm nearly full."""
    path = os.path.join(where, "ballast")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, shm.shm_free() - leave)
    finally:
        os.close(fd)
    return path


def test_a_segment_is_reserved_whole_when_made(small_shm):
    # tmpfs lets ftruncate make a file of any size and SIGBUSes the first write to a page
    # it has no room for: the pages must be taken when the segment is made
    before = shm.shm_free()
    mem = shm.create_segment("edge-test-reserved", 4 << 20)
    try:
        assert before - shm.shm_free() >= 4 << 20
    finally:
        mem.close()
        unlink("edge-test-reserved")


def test_a_segment_without_room_is_no_space_naming_it_the_size_and_the_fix(small_shm):
    with pytest.raises(NoSpace) as caught:
        shm.create_segment("edge-test-toobig-routes-0", 16 << 20)
    exc = caught.value
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    message = str(exc)
    assert "segment edge-test-toobig-routes-0" in message
    assert "16,777,216 bytes" in message
    assert f"in {small_shm} (" in message and f"emptyDir at {small_shm}" in message
    assert "emptyDir.medium: Memory" in message
    assert f"{exc.free:,} bytes free" in message and 7 << 20 < exc.free <= 8 << 20
    assert os.listdir(small_shm) == []  # nothing half-made is left behind


@pytest.mark.parametrize("make", [
    lambda: RoutesWriter("edge-test-big-routes", slot_capacity=8 << 20),
    lambda: StatCells("edge-test-big-stats", 70_000, create=True),
    lambda: CounterStore("edge-test-big-ratelimit", 4, 1 << 16, create=True),
], ids=["routes", "stats", "ratelimit"])
def test_every_segment_kind_reserves_its_memory(small_shm, make):
    with pytest.raises(NoSpace, match="edge-test-big-"):
        make()
    assert os.listdir(small_shm) == []


def test_workers_attach_where_the_supervisor_made_the_segments(small_shm):
    counters = CounterStore("edge-test-attach-ratelimit", 2, 16, create=True)
    stats = StatCells("edge-test-attach-stats", 2, create=True)
    try:
        assert sorted(os.listdir(small_shm)) == ["edge-test-attach-ratelimit", "edge-test-attach-stats"]
        assert CounterStore("edge-test-attach-ratelimit").cells == 2  # not looked for in /dev/shm
        assert StatCells("edge-test-attach-stats").slots == 2
    finally:
        counters.close()
        stats.close()
    assert os.listdir(small_shm) == []


def _table(pad: int) -> RouteTable:
    """A table that encodes to about `pad` bytes."""
    return RouteTable(Settings(), (), (), (), (), diagnostics=(
        Diagnostic("warning", "test", "Pad", "", "pad", "", "x" * pad),))


def test_a_table_that_outgrows_its_segment_without_room_is_rejected_whole(small_shm):
    publisher = Publisher("edge-test-grow", slot_capacity=64 << 10)
    reader = RoutesReader(publisher.first_segment)
    try:
        first = publisher.publish(_table(1000))
        ballast = _fill(small_shm, leave=1 << 20)
        # 600 kB needs a segment of 2 x 1.2 MB: there is 1 MiB
        with pytest.raises(NoRoomForTable) as caught:
            publisher.publish(_table(600_000))
        assert isinstance(caught.value.cause, NoSpace)
        assert "needs a bigger routes segment" in str(caught.value)
        assert "segment edge-test-grow-routes-1" in str(caught.value)
        assert publisher.current == first  # the last good table is still the one served
        assert reader.read().generation == first.generation and reader.successor() is None
        assert sorted(os.listdir(small_shm)) == ["ballast", "edge-test-grow-routes-0"]
        # a table that still fits its slot is published meanwhile
        second = publisher.publish(_table(2000))
        assert second.generation == first.generation + 1
        # with room again, the big one moves to the next segment and readers follow
        os.unlink(ballast)
        third = publisher.publish(_table(600_000))
        assert third.generation == second.generation + 1
        assert reader.successor() == "edge-test-grow-routes-1"
        follower = RoutesReader(reader.successor())
        assert follower.read().generation == third.generation
        follower.close()
    finally:
        reader.close()
        publisher.close()
    assert os.listdir(small_shm) == []
