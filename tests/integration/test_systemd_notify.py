"""`edge serve` under Type=notify: READY, RELOADING/READY, STATUS, WATCHDOG and STOPPING
sent to a NOTIFY_SOCKET this test owns, as systemd would see them."""

from __future__ import annotations

import os
import signal
import socket
import time

import httpx
import pytest

from tests.conftest import mapping

pytestmark = pytest.mark.integration
WATCHDOG_USEC = 2_000_000  # systemd wants WATCHDOG=1 at least every 2 s; edge sends every 1 s


class NotifySocket:
    def __init__(self, name: str):
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + name[1:].encode() if name.startswith("@") else name)
        self.received: list[tuple[float, dict]] = []

    def next(self, timeout: float = 20.0, skip_watchdog: bool = True) -> dict:
        """The next message (WATCHDOG ones recorded but skipped), as a dict."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(4096)
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.received.append((time.monotonic(), fields))
            if not (skip_watchdog and set(fields) == {"WATCHDOG"}):
                return fields

    def watchdog_times(self) -> list[float]:
        return [t for t, f in self.received if "WATCHDOG" in f]


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_reloading_watchdog_and_stopping(make_edge, upstream, tmp_path, kind):
    notify = NotifySocket(str(tmp_path / "notify") if kind == "path" else f"@edge-notify-{os.getpid()}-{kind}")
    try:
        _sequence(make_edge, upstream, notify)
    finally:
        notify.sock.close()


def _sequence(make_edge, upstream, notify: NotifySocket) -> None:
    edge = make_edge({"m.yaml": mapping("m", upstream.service, "/old/")},
                     env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    first = notify.next()
    # READY only once every worker serves the first table (check_ready answered 200 first:
    # make_edge waited for it, and READY is sent after it)
    assert first["READY"] == "1" and first["STATUS"].startswith("generation 1, 2/2 workers on it"), first
    assert edge.admin("/ambassador/v0/check_ready")[0] == 200
    for pid in edge.worker_pids():  # workers inherit no NOTIFY_SOCKET: only the service notifies
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]

    edge.write("m.yaml", mapping("m", upstream.service, "/new/"))
    edge.proc.send_signal(signal.SIGHUP)
    reloading = notify.next()
    assert reloading["RELOADING"] == "1", reloading
    ready = notify.next()
    assert ready["READY"] == "1", ready
    assert httpx.get(edge.url("/new/")).status_code == 200  # READY again: the re-read table is live

    # the watchdog: at least every WATCHDOG_USEC (systemd's contract), never faster than half
    while len(notify.watchdog_times()) < 4:
        notify.next(timeout=WATCHDOG_USEC / 1e6 * 3, skip_watchdog=False)
    times = notify.watchdog_times()
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(WATCHDOG_USEC / 1e6 / 2 * 0.9 <= g < WATCHDOG_USEC / 1e6 for g in gaps), gaps

    edge.proc.send_signal(signal.SIGTERM)
    stopping = notify.next()
    assert stopping["STOPPING"] == "1", stopping
    assert edge.proc.wait(timeout=30) == 0
