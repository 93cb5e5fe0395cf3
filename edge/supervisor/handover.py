"""Binary upgrade without downtime: a new edge takes over the running one's sockets.

As HAProxy's seamless reload (`-x`) and Envoy's hot restart do, the listening sockets are
passed (SCM_RIGHTS) over a Unix socket, `--upgrade-socket PATH`, so no socket is ever
closed and no connection is refused: until the old edge's workers stop accepting, old and
new workers accept from the very same sockets.

    new edge                                   old edge (listening on PATH)
    connect(PATH), {"hello"} ------------->
                             <------------- {"port": P, "kept": bool} + its sockets, per port
                             <------------- {"admin": ADDRESS} + the admin socket
                             <------------- {"done", "pid", "counters", "cells", "ncells", "buckets"}
    compile, start workers on those sockets and on the spare rate-limit cells, wait until
    every worker has loaded the first table; serve admin; take PATH (rename over it)
    {"ready"} ---------------------------->
                             <------------- {"bye"}: stops its admin server, drains, exits

The rate-limit counter segment changes owner: the new edge attaches it and writes into the
cells the old workers do not use, and readers sum every cell, so counts carry on across the
upgrade (only when both have the same cells and buckets; otherwise counting starts over,
with a warning). If the new edge dies before "ready", the old one never noticed anything
but a closed connection and serves on.
"""

from __future__ import annotations

import array
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Protocol

import trio

log = logging.getLogger("edge.handover")
MAX_MESSAGE = 65536
FDS_PER_MESSAGE = 64  # under the kernel's SCM_MAX_FD (253)
HELLO_TIMEOUT = 10.0  # seconds each side waits for the other's next message, but "ready"


class HandoverFailed(RuntimeError):
    """The running edge at the upgrade socket answered, but the takeover could not happen."""


@dataclass
class Inheritance:
    """What a new edge received from the one it takes over from."""

    conn: socket.socket  # kept open: "ready" goes back on it
    pid: int = 0
    sockets: dict[int, list[socket.socket]] = field(default_factory=dict)
    kept: set[int] = field(default_factory=set)  # ports whose sockets are systemd's
    admin: socket.socket | None = None
    admin_address: str = ""
    counters: str = ""
    cells: list[int] = field(default_factory=list)  # the stats/counter cell of each old slot
    ncells: int = 0
    buckets: int = 0

    def spare_cells(self, workers: int, ncells: int, buckets: int) -> list[int] | None:
        """Each new slot's first cell, one the old workers do not write (the rolling
        restart's rule: a slot's cells are i and i + workers); None when the counter
        segment's shape is not this edge's, so it cannot be shared."""
        if (ncells, buckets) != (self.ncells, self.buckets) or len(self.cells) != workers:
            return None
        return [i + workers if cell == i else i for i, cell in enumerate(self.cells)]


class Server(Protocol):
    """What the old side reads of the supervisor."""

    def handover_state(self) -> dict: ...

    def handover_sockets(self) -> tuple[dict[int, list[socket.socket]], set[int], socket.socket, str]: ...

    def retire(self) -> None: ...


def _pack(**fields) -> bytes:
    return json.dumps(fields, sort_keys=True).encode()


def _unpack(data: bytes) -> dict:
    if not data:
        raise HandoverFailed("the other edge closed the upgrade socket")
    try:
        msg = json.loads(data)
    except ValueError as exc:
        raise HandoverFailed(f"not an upgrade message: {data[:80]!r}") from exc
    if not isinstance(msg, dict):
        raise HandoverFailed(f"not an upgrade message: {data[:80]!r}")
    return msg


# ---- the new edge ----
def take_over(path: str, timeout: float = HELLO_TIMEOUT) -> Inheritance | None:
    """Connect to the edge serving `path` and receive its sockets; None when no edge
    listens there (no file, or a stale one). Raises HandoverFailed when one answers but
    refuses (a rolling restart is running) or stops answering."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(timeout)
    try:
        conn.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    got = Inheritance(conn)
    try:
        conn.send(_pack(hello=1, pid=os.getpid()))
        while True:
            data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, FDS_PER_MESSAGE)
            socks = [socket.socket(fileno=fd) for fd in fds]
            msg = _unpack(data)
            if "error" in msg:
                raise HandoverFailed(f"the edge at {path} refused: {msg['error']}")
            if "port" in msg:
                got.sockets.setdefault(int(msg["port"]), []).extend(socks)
                if msg.get("kept"):
                    got.kept.add(int(msg["port"]))
            elif "admin" in msg and socks:
                got.admin, got.admin_address = socks[0], msg["admin"]
            elif msg.get("done"):
                got.pid, got.counters = int(msg["pid"]), msg["counters"]
                got.cells, got.ncells, got.buckets = list(msg["cells"]), int(msg["ncells"]), int(msg["buckets"])
                break
    except (OSError, KeyError, TypeError, ValueError) as exc:
        conn.close()
        raise HandoverFailed(f"taking over from the edge at {path}: {exc}") from exc
    except HandoverFailed:
        conn.close()
        raise
    for socks in got.sockets.values():
        for sock in socks:
            sock.setblocking(False)
    log.info("taking over from pid %d: %d ports, %d sockets", got.pid, len(got.sockets),
             sum(len(s) for s in got.sockets.values()))
    return got


async def finish(got: Inheritance, timeout: float = HELLO_TIMEOUT) -> None:
    """Tell the old edge that this one serves (call once every worker has loaded the
    first table and the admin server runs); returns once it said bye, or after `timeout`."""
    conn = trio.socket.from_stdlib_socket(got.conn)
    try:
        await conn.send(_pack(ready=1))
        with trio.move_on_after(timeout):
            await conn.recv(MAX_MESSAGE)  # "bye", or EOF: either way it retires
    except OSError as exc:
        log.warning("telling pid %d that this edge serves: %s", got.pid, exc)
    finally:
        conn.close()
    log.info("took over from pid %d", got.pid)


# ---- both: the upgrade socket ----
@dataclass(frozen=True)
class UpgradeSocket:
    """The listening upgrade socket, and the inode of its file (not the socket's own)."""

    sock: socket.socket
    path: str
    inode: int

    def close(self) -> None:
        """Close it, and remove the file unless an edge that took over has replaced it."""
        self.sock.close()
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("removing %s: %s", self.path, exc)


def bind(path: str) -> UpgradeSocket:
    """Listen on `path`, replacing whatever is there in one step (rename): a stale file
    of a crashed edge, or the socket of the edge being taken over, which then accepts no
    second taker."""
    tmp = f"{path}.{os.getpid()}.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    sock.bind(tmp)
    os.chmod(tmp, 0o600)  # whoever connects gets the listening sockets
    sock.listen(4)
    inode = os.stat(tmp).st_ino
    os.replace(tmp, path)
    return UpgradeSocket(sock, path, inode)


# ---- the old edge ----
async def serve(listener: UpgradeSocket, server: Server) -> None:
    """Answer takers on `listener` one at a time; returns after a successful handover
    (the server has retired). A taker that fails or vanishes leaves everything as it was."""
    listener.sock.setblocking(False)
    sock = trio.socket.from_stdlib_socket(listener.sock)
    while True:
        conn, _ = await sock.accept()
        with conn:
            try:
                if await _hand_over(conn, server):
                    return
            except (OSError, HandoverFailed) as exc:
                log.warning("upgrade: a new edge did not take over (%s); serving on", exc)


async def _hand_over(conn, server: Server) -> bool:
    with trio.fail_after(HELLO_TIMEOUT):
        hello = _unpack(await conn.recv(MAX_MESSAGE))
    taker = hello.get("pid", "?")
    state = server.handover_state()
    if state.get("error"):
        await conn.send(_pack(error=state["error"]))
        return False
    sockets, kept, admin, admin_address = server.handover_sockets()
    log.info("upgrade: pid %s takes over; passing %d ports", taker, len(sockets))
    for port, socks in sorted(sockets.items()):
        for i in range(0, len(socks), FDS_PER_MESSAGE):
            chunk = [s.fileno() for s in socks[i:i + FDS_PER_MESSAGE]]
            await _send_fds(conn, _pack(port=port, kept=port in kept), chunk)
    await _send_fds(conn, _pack(admin=admin_address), [admin.fileno()])
    await conn.send(_pack(done=1, pid=os.getpid(), **state))
    msg = _unpack(await conn.recv(MAX_MESSAGE))  # no timeout: the taker compiles and starts its workers
    if not msg.get("ready"):
        raise HandoverFailed(f"pid {taker} sent {msg}")
    log.info("upgrade: pid %s serves; this edge (pid %d) drains and exits", taker, os.getpid())
    server.retire()
    await conn.send(_pack(bye=1))
    return True


async def _send_fds(conn, data: bytes, fds: list[int]) -> None:
    await conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
