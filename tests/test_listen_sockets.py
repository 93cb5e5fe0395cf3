"""Where listening sockets come from: systemd's (sd_listen_fds), the old edge's (handover
cells), and how a port's sockets are shared among worker slots."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from edge.supervisor.arbiter import share
from edge.supervisor.handover import Inheritance

# Runs in a child: the sockets given on the command line become fds 3, 4, ... with the
# variables systemd sets, then edge.supervisor.activation reads them.
CHILD = """
import json, logging, os, socket, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
fds = [int(a) for a in sys.argv[1].split(",")]
for i, fd in enumerate(fds):
    os.dup2(fd, 3 + i)
env = json.loads(sys.argv[2])
env = {k: v.replace("$PID", str(os.getpid())) for k, v in env.items()}
os.environ.update(env)
from edge.supervisor import activation
got = activation.listen_fds()
def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
print(json.dumps({
    "got": [[a.name, a.port, a.sock.fileno(), os.get_inheritable(a.sock.fileno())] for a in got],
    "by_port": {str(p): len(s) for p, s in activation.by_port(got).items()},
    "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "open": [is_open(3 + i) for i in range(len(fds))],
}))
"""


def tcp_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def run_child(socks: list[socket.socket], env: dict) -> tuple[dict, str]:
    fds = [s.fileno() for s in socks]
    done = subprocess.run([sys.executable, "-c", CHILD, ",".join(map(str, fds)), json.dumps(env)],
                          pass_fds=fds, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_systemd_sockets_are_taken_by_port_with_their_names_and_hidden_from_workers():
    a, b = tcp_listener(), tcp_listener()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unlistened = socket.socket()  # bound, not listening: not a ListenStream socket
    unlistened.bind(("127.0.0.1", 0))
    ports = [a.getsockname()[1], b.getsockname()[1]]
    try:
        out, log = run_child([a, b, udp, unlistened],
                             {"LISTEN_FDS": "4", "LISTEN_PID": "$PID", "LISTEN_FDNAMES": "http:admin:dgram:raw"})
    finally:
        for s in (a, b, udp, unlistened):
            s.close()
    assert out["got"] == [["http", ports[0], 3, False], ["admin", ports[1], 4, False]]
    assert out["by_port"] == {str(ports[0]): 1, str(ports[1]): 1}
    assert out["left"] == []  # the workers never see them
    assert out["open"] == [True, True, False, False]  # what edge cannot serve is closed
    assert "systemd socket dgram (fd 5) is not a listening TCP socket" in log
    assert "systemd socket raw (fd 6) is not a listening TCP socket" in log


def test_missing_names_are_unknown():
    a = tcp_listener()
    try:
        out, _ = run_child([a], {"LISTEN_FDS": "1", "LISTEN_PID": "$PID"})
    finally:
        a.close()
    assert [g[0] for g in out["got"]] == ["unknown"]


@pytest.mark.parametrize("env, warning", [
    ({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, "meant for pid 1, not this process"),
    ({"LISTEN_FDS": "1"}, "meant for pid ?, not this process"),
    ({"LISTEN_FDS": "x", "LISTEN_PID": "$PID"}, "is not a number"),
    ({}, None),
])
def test_sockets_meant_for_another_process_are_not_taken(env, warning):
    a = tcp_listener()
    try:
        out, log = run_child([a], env)
    finally:
        a.close()
    assert out["got"] == [] and out["left"] == [] and out["open"] == [True]
    if warning:
        assert warning in log
    else:
        assert log == ""


@pytest.mark.parametrize("sockets, slots, expected", [
    (4, 4, [[0], [1], [2], [3]]),  # one each: the arbiter's own
    (1, 3, [[0], [0], [0]]),  # systemd's one socket: shared by every slot
    (4, 2, [[0, 2], [1, 3]]),  # an old edge had more workers: every socket still has one
    (2, 3, [[0], [1], [0]]),  # fewer: shared round the slots
    (3, 2, [[0, 2], [1]]),
])
def test_every_socket_of_a_port_has_a_slot(sockets, slots, expected):
    socks = list(range(sockets))  # share only orders them
    got = [share(socks, i, slots) for i in range(slots)]
    assert got == expected
    assert sorted(s for part in got for s in part) == socks or sockets < slots


def test_a_taker_writes_the_cells_the_old_workers_do_not():
    taken = Inheritance(conn=None, cells=[0, 4, 2], ncells=6, buckets=1024)  # slot 1 after a rolling restart
    assert taken.spare_cells(3, 6, 1024) == [3, 1, 5]
    assert taken.spare_cells(3, 6, 2048) is None  # another shape: counting starts over
    assert taken.spare_cells(2, 4, 1024) is None
