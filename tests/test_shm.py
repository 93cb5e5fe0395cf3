"""The routes segment: seqlock double buffer, hash check, layout version, growth."""

from __future__ import annotations

import multiprocessing
import secrets
import struct

import pytest

from edge.shm import LayoutMismatch, RoutesReader, RoutesWriter, StatCells, TornRead, unlink


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
