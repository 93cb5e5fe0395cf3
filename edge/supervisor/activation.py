"""Socket activation: the listening sockets systemd opened for edge (sd_listen_fds(3)).

systemd (a .socket unit with ListenStream=) starts the service with the sockets as fds 3,
4, ... and $LISTEN_FDS (how many), $LISTEN_PID (the pid they are meant for: ours, else
they were inherited by mistake and are not taken) and $LISTEN_FDNAMES (colon-separated
FileDescriptorName=s). systemd keeps its own copy, so a full restart of the service keeps
each socket, and the connections waiting in its queue are served by the next edge.

The variables are taken out of the environment, so that the workers never see them.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import MutableMapping

log = logging.getLogger("edge.activation")
LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START


@dataclass(frozen=True)
class Activated:
    """One socket systemd passed: its FileDescriptorName= and bound port."""

    name: str
    port: int
    sock: socket.socket


def listen_fds(environ: MutableMapping[str, str] = os.environ) -> list[Activated]:
    """The listening TCP sockets systemd passed to this process, in fd
    order; [] outside socket activation. A passed fd that is not a listening TCP socket
    (a datagram or FIFO ListenX= line) is logged and closed: edge cannot serve it."""
    count = environ.pop("LISTEN_FDS", "")
    meant_for = environ.pop("LISTEN_PID", "")
    names = environ.pop("LISTEN_FDNAMES", "")
    if not count:
        return []
    if meant_for != str(os.getpid()):
        log.warning("LISTEN_FDS=%s is meant for pid %s, not this process: not taking them", count, meant_for or "?")
        return []
    if not count.isdigit():
        log.error("LISTEN_FDS=%r is not a number: no socket taken", count)
        return []
    labels = names.split(":") if names else []
    out = []
    for i in range(int(count)):
        fd = LISTEN_FDS_START + i
        name = labels[i] if i < len(labels) else "unknown"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.error("systemd socket %s (fd %d): %s", name, fd, exc)
            continue
        os.set_inheritable(fd, False)  # workers get the sockets they serve, not all of fd 3...
        if (sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6)
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            log.error("systemd socket %s (fd %d) is not a listening TCP socket (%s); closed", name, fd, sock)
            sock.close()
            continue
        sock.setblocking(False)
        out.append(Activated(name, sock.getsockname()[1], sock))
    return out


def by_port(activated: list[Activated]) -> dict[int, list[socket.socket]]:
    """The sockets of each port (an IPv4 and an IPv6 ListenStream= of one port are two)."""
    out: dict[int, list[socket.socket]] = {}
    for a in activated:
        out.setdefault(a.port, []).append(a.sock)
    return out
