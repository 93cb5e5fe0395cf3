"""sd_notify: tell systemd (Type=notify) when edge is ready, reloading, stopping and alive.

The protocol (sd_notify(3)): one datagram of newline-separated KEY=VALUE lines to the
AF_UNIX socket named by $NOTIFY_SOCKET, a path, or with a leading "@" a name in the
abstract namespace. $WATCHDOG_USEC (meant for $WATCHDOG_PID when that is set) asks for
WATCHDOG=1 at least that often; it is sent at half that, as sd_watchdog_enabled(3)
advises. The variables are taken out of the environment, so that workers (which inherit
it) never notify in the service's name.

What is sent, by the supervisor:
    READY=1        once every worker has loaded the first table (check_ready is 200)
    RELOADING=1    on SIGHUP; READY=1 again once the re-read configuration is live
    STATUS=...     with READY: generation, workers loaded, errors
    STOPPING=1     when the drain starts (SIGTERM)
    WATCHDOG=1     while the arbiter's loop turns (it runs at least every 0.1 s)
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, MutableMapping, Protocol

import trio

log = logging.getLogger("edge.systemd")
READY_POLL = 0.05  # seconds between two looks at whether the workers have loaded a table


def message(**fields: str) -> bytes:
    """The datagram for `fields`, in their order: message(READY="1") == b"READY=1"."""
    for key, value in fields.items():
        if "\n" in value:
            raise ValueError(f"{key}: a value is one line")
    return "\n".join(f"{k}={v}" for k, v in fields.items()).encode()


def address(name: str) -> str | bytes:
    """$NOTIFY_SOCKET as a socket address: "@x" is the abstract name "\\0x"."""
    return b"\0" + name[1:].encode() if name.startswith("@") else name


class Notifier:
    """Sends sd_notify messages; does nothing outside systemd (no $NOTIFY_SOCKET)."""

    def __init__(self, environ: MutableMapping[str, str] = os.environ):
        name = environ.pop("NOTIFY_SOCKET", "")
        usec = environ.pop("WATCHDOG_USEC", "")
        pid = environ.pop("WATCHDOG_PID", "")
        self.address = address(name) if name else None
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self.sent = 0
        self._failed = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None
        if self._sock is not None:
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str) -> bool:
        """Send one message now; False (logged once) when it cannot be sent."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message(**fields), self.address)
        except OSError as exc:  # systemd gone, or its queue full: never stop serving for it
            if not self._failed:
                log.warning("sd_notify to %s: %s", os.environ.get("NOTIFY_SOCKET") or self.address, exc)
                self._failed = True
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


class Service(Protocol):
    """What the notifier reads of the supervisor."""

    compile_count: int

    def ready(self) -> tuple[bool, str]: ...

    def status_line(self) -> str: ...

    def arbiter_turned(self) -> float: ...


async def wait_ready(service: Service, compiled_at_least: int = 0) -> None:
    """Until `compile_count` reaches `compiled_at_least` and every worker has loaded the
    table published last."""
    while service.compile_count < compiled_at_least or not service.ready()[0]:
        await trio.sleep(READY_POLL)


async def run(service: Service, notifier: Notifier, reloads: trio.MemoryReceiveChannel,
              clock: Callable[[], float] = time.monotonic) -> None:
    """READY, then RELOADING/READY around every reload announced on `reloads` (each item:
    how many compiles the reload's configuration is live after), and WATCHDOG. Until
    cancelled."""
    if not notifier.enabled:
        return
    await wait_ready(service)
    notifier.send(READY="1", STATUS=service.status_line())
    async with trio.open_nursery() as nursery:
        if notifier.watchdog_interval is not None:
            nursery.start_soon(_watchdog, service, notifier, clock)
        async for compiled_at_least in reloads:
            notifier.send(RELOADING="1", STATUS="reloading configuration")
            await wait_ready(service, compiled_at_least)
            notifier.send(READY="1", STATUS=service.status_line())


async def _watchdog(service: Service, notifier: Notifier, clock: Callable[[], float]) -> None:
    interval = notifier.watchdog_interval
    while True:
        # a stuck arbiter (no reaping, no restarts) must let systemd's watchdog fire
        if clock() - service.arbiter_turned() < interval:
            notifier.send(WATCHDOG="1")
        await trio.sleep(interval)
