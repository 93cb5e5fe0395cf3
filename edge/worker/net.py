"""Non-blocking socket primitives on trio.lowlevel (DESIGN.md §4: try first, wait on EAGAIN).

Each call yields to the scheduler once (for fairness, and to notice cancellation), then
tries the syscall, and only waits for readiness when the kernel says EAGAIN.
"""

from __future__ import annotations

import errno
import socket

from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled, wait_readable, wait_writable


async def recv_into(sock: socket.socket, buf) -> int:
    """Read into `buf`; 0 means EOF. Raises OSError (reset, ...) and trio.Cancelled."""
    await checkpoint_if_cancelled()
    await cancel_shielded_checkpoint()
    while True:
        try:
            return sock.recv_into(buf)
        except BlockingIOError:
            await wait_readable(sock)


async def send_all(sock: socket.socket, data) -> None:
    """Write all of `data`, waiting for the socket to drain when the kernel buffer is full."""
    await checkpoint_if_cancelled()
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await wait_writable(sock)
            continue
        view = view[sent:]


async def connect(address: str, port: int) -> socket.socket:
    """Open a TCP connection (TCP_NODELAY, non-blocking). Raises OSError on failure;
    the caller bounds the time with a cancel scope."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((address, port))
        if err == errno.EINPROGRESS:
            await wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {address}:{port}: {errno.errorcode.get(err, err)}")
    except BaseException:
        sock.close()
        raise
    return sock


def is_reusable(sock: socket.socket) -> bool:
    """An idle pooled connection is reusable if the peer has sent nothing (not even EOF)."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # data or EOF: stale
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
