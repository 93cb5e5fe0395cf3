"""Reaping orphans: what init does, for when the supervisor is PID 1 or a child subreaper.

In a container started without an init (no tini, no `docker run --init`), edge's supervisor
is PID 1 of the container's PID namespace, and every process whose parent exits is
re-parented to it: a worker's helper, a shell a library started, anything `docker exec`
or `kubectl exec` left behind. Nobody else will wait for them; unreaped they stay zombies
and hold their PID. The same holds for a child subreaper (prctl PR_SET_CHILD_SUBREAPER).

The supervisor's own workers are subprocess.Popen objects, polled elsewhere: a waitpid()
here would take their exit status, and Popen.poll() would then say 0 (ECHILD) instead of
the real code. So exited children are only peeked at (waitid with WNOWAIT) and only those
that are not ours are waited for.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Callable, Iterable

log = logging.getLogger("edge.orphans")

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
LIMIT = 1024  # orphans reaped by one call at most: the caller's loop comes round again

_PEEK = os.WEXITED | os.WNOHANG | os.WNOWAIT


def _prctl():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc.prctl


def is_subreaper() -> bool:
    """Whether this process is a child subreaper (False where prctl does not exist)."""
    try:
        prctl = _prctl()
    except (OSError, AttributeError):
        return False
    flag = ctypes.c_int(0)
    if prctl(PR_GET_CHILD_SUBREAPER, ctypes.cast(ctypes.byref(flag), ctypes.c_void_p).value, 0, 0, 0) != 0:
        return False
    return flag.value != 0


def set_subreaper(on: bool = True) -> None:
    """Make this process a child subreaper (or stop being one); OSError if refused."""
    if _prctl()(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def should_reap() -> bool:
    """True when orphans are re-parented to this process: it is PID 1 (of its PID
    namespace: a container without an init) or a child subreaper."""
    return os.getpid() == 1 or is_subreaper()


def children() -> list[int]:
    """PIDs of this process's children, every thread's, from /proc/self/task/*/children;
    empty when that cannot be read or /proc belongs to another PID namespace (its PIDs
    would not be ours)."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return []
        out: list[int] = []
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
        return out
    except (OSError, ValueError):
        return []


def _wait(pid: int) -> tuple[int, int] | None:
    """Wait for child `pid`, which is not ours, if it has exited: (pid, exit code)."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (any more)
        return None
    if got == 0:
        return None
    return got, os.waitstatus_to_exitcode(status)


def reap(is_ours: Callable[[int], bool], limit: int = LIMIT,
         candidates: Callable[[], Iterable[int]] = children) -> list[tuple[int, int]]:
    """Wait for every exited child of this process for which `is_ours(pid)` is False;
    return them as (pid, exit code) pairs, the code as Popen.returncode gives it (a
    negative signal number for a child killed by a signal). Never blocks.

    Contract:
    - A child for which `is_ours` is True is never waited for, so its owner's
      Popen.poll()/wait() still gets its real status. `is_ours` must therefore be True
      for every child this process waits for itself (every Popen not yet seen to exit);
      it is asked about PIDs of exited children (zombies), whose PIDs cannot be reused
      until they are waited for, so the answer cannot go stale during the call.
    - Bounded: at most `limit` orphans are reaped per call, and every loop step either
      reaps one or ends the loop. An orphan left (over the limit, or exiting during the
      call) is reaped by the next call: call it on every SIGCHLD and periodically.
    - How: os.waitid(P_ALL, WNOWAIT) peeks at the first exited child without reaping it.
      If it is not ours it is reaped, and the next one peeked at. If it is ours, P_ALL
      would show that same child again and again until its owner polls it, so the
      children listed in /proc (`candidates`) are then tried one by one (waitpid of that
      PID, WNOHANG), skipping ours. Without /proc the orphans behind an exited worker
      wait for the next call, after the worker has been polled.
    Meant for a process that should_reap(); harmless elsewhere (it reaps nothing that
    is not its own child).
    """
    reaped = _reap(is_ours, limit, candidates)
    for pid, code in reaped:
        log.debug("reaped orphan pid %d, exit code %d", pid, code)
    return reaped


def _reap(is_ours: Callable[[int], bool], limit: int, candidates: Callable[[], Iterable[int]]) -> list[tuple[int, int]]:
    reaped: list[tuple[int, int]] = []
    while len(reaped) < limit:
        try:
            info = os.waitid(os.P_ALL, 0, _PEEK)
        except ChildProcessError:  # no children at all
            return reaped
        if info is None:  # children, none exited
            return reaped
        if is_ours(info.si_pid):
            break
        got = _wait(info.si_pid)
        if got is None:  # cannot happen for a zombie peeked at; do not spin on it
            break
        reaped.append(got)
    else:
        return reaped
    # the first exited child is ours: look past it
    for pid in candidates():
        if len(reaped) >= limit:
            break
        if is_ours(pid):
            continue
        got = _wait(pid)
        if got is not None:
            reaped.append(got)
    return reaped
