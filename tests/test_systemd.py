"""sd_notify messages, addresses and the environment they come from (edge/supervisor/systemd.py)."""

from __future__ import annotations

import os
import socket

import pytest

from edge.supervisor import systemd


def test_a_message_is_lines_of_key_value_in_order():
    assert systemd.message(READY="1") == b"READY=1"
    assert systemd.message(READY="1", STATUS="generation 3") == b"READY=1\nSTATUS=generation 3"
    with pytest.raises(ValueError):
        systemd.message(STATUS="two\nlines")


def test_an_at_sign_is_the_abstract_namespace():
    assert systemd.address("@edge/notify") == b"\0edge/notify"
    assert systemd.address("/run/systemd/notify") == "/run/systemd/notify"


def test_the_variables_leave_the_environment_and_the_watchdog_runs_at_half_its_period():
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "1"}
    n = systemd.Notifier(env)
    assert env == {"OTHER": "1"}  # workers inherit the environment: they must not notify
    assert n.enabled and n.watchdog_interval == 1.5
    n.close()


def test_a_watchdog_meant_for_another_process_is_not_ours():
    n = systemd.Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert n.enabled and n.watchdog_interval is None
    n.close()


def test_outside_systemd_nothing_is_sent():
    n = systemd.Notifier({})
    assert not n.enabled and not n.send(READY="1") and n.sent == 0


def test_datagrams_reach_a_path_and_an_abstract_socket_and_a_missing_one_is_only_a_false(tmp_path):
    for name in (str(tmp_path / "notify"), f"@edge-test-{os.getpid()}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(systemd.address(name))
            n = systemd.Notifier({"NOTIFY_SOCKET": name})
            assert n.send(READY="1", STATUS="ok")
            assert listener.recv(4096) == b"READY=1\nSTATUS=ok"
            n.close()
    n = systemd.Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not n.send(READY="1") and not n.send(READY="1") and n.sent == 0
    n.close()
