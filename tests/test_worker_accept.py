"""Failed accepts (EMFILE and the like): every one counted, a warning at most every 10 s."""

from __future__ import annotations

import errno
import logging

from edge.worker.main import ACCEPT_WARN_EVERY, AcceptErrors


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_failed_accepts_is_one_warning_per_10_s_and_every_one_counted(caplog):
    assert ACCEPT_WARN_EVERY == 10.0
    clock = Clock(0.0)  # a fresh boot's monotonic clock: the first failure still warns
    errors = AcceptErrors(clock=clock)
    emfile = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.WARNING, logger="edge.worker"):
        for i in range(1000):  # 1,000 failures in 9.99 s
            clock.now = i * 0.00999
            errors.failed(8080, emfile)
        assert errors.count == 1000
        assert [r.getMessage() for r in caplog.records] == ["accept on port 8080: [Errno 24] Too many open files"]
        clock.now = 10.0  # 10 s after the first warning: the next one, with how many were not logged
        errors.failed(8443, emfile)
        clock.now = 15.0
        errors.failed(8443, emfile)
    assert errors.count == 1002
    assert [r.getMessage() for r in caplog.records] == [
        "accept on port 8080: [Errno 24] Too many open files",
        "accept on port 8443: [Errno 24] Too many open files (999 more since the last warning)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
