"""How many CPUs this process may use: its affinity, capped by its cgroup's CPU quota.

`os.cpu_count()` counts the node's cores: a pod limited to 1 CPU on a 64-core node would
start 64 workers. The parsing functions are pure (they take file contents), so they are
tested table-driven; `available()` reads the real files.

cgroup v2: `/proc/self/cgroup` has `0::/PATH`; the cgroup2 mount (from mountinfo) holds
`PATH/cpu.max`: "max 100000" (no limit) or "200000 100000" (quota period, in us).
cgroup v1: a line `N:cpu,cpuacct:/PATH`; the cpu controller's mount holds
`PATH/cpu.cfs_quota_us` (-1: no limit) and `cpu.cfs_period_us`. A quota set on an ancestor
cgroup limits its descendants too, so every level up to the mount's root is read and the
smallest quota wins.
"""

from __future__ import annotations

import math
import os
import posixpath
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Mount:
    point: str  # where it is mounted
    root: str  # which directory of the hierarchy is mounted there
    fstype: str
    options: frozenset[str]  # super options: for cgroup v1, the controllers


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max -> CPUs (quota / period), None when unlimited or unreadable."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 cpu.cfs_quota_us and cpu.cfs_period_us -> CPUs, None when -1 (unlimited)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_proc_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """/proc/self/cgroup -> (the v2 path or None, {v1 controller: path})."""
    v2, v1 = None, {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        else:
            for c in controllers.split(","):
                v1[c] = path
    return v2, v1


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/self/mountinfo -> the cgroup mounts (v1 and v2)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(Mount(_unescape(fields[4]), _unescape(fields[3]), tail[0], frozenset(tail[2].split(","))))
    return mounts


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def cgroup_dirs(mount: Mount, path: str) -> list[str]:
    """The directories of cgroup `path` and its ancestors under `mount`, the leaf first.

    `path` is relative to the hierarchy's root; the mount shows the hierarchy from
    `mount.root` down (in a container with its own cgroup namespace, both are usually "/")."""
    root = mount.root.rstrip("/")
    if path == root or path.startswith(root + "/"):
        rel = path[len(root):]
    else:
        rel = ""  # not under the mounted part: only the mount's own directory is visible
    parts = [p for p in rel.split("/") if p]
    return [posixpath.join(mount.point, *parts[:n]) for n in range(len(parts), -1, -1)]


def quota(proc_cgroup: str, mountinfo: str, read: Callable[[str], str | None]) -> float | None:
    """The smallest CPU quota over this process's cgroups and their ancestors (v1 and v2),
    in CPUs; None when there is none. `read(path)` returns a file's text or None."""
    v2, v1 = parse_proc_cgroup(proc_cgroup)
    found = []
    for mount in parse_mountinfo(mountinfo):
        if mount.fstype == "cgroup2" and v2 is not None:
            for d in cgroup_dirs(mount, v2):
                text = read(posixpath.join(d, "cpu.max"))
                found.append(parse_cpu_max(text) if text is not None else None)
        elif mount.fstype == "cgroup" and "cpu" in mount.options and "cpu" in v1:
            for d in cgroup_dirs(mount, v1["cpu"]):
                q, p = read(posixpath.join(d, "cpu.cfs_quota_us")), read(posixpath.join(d, "cpu.cfs_period_us"))
                found.append(parse_cfs(q, p) if q is not None and p is not None else None)
    limits = [f for f in found if f is not None]
    return min(limits) if limits else None


def usable(affinity: int, cpu_quota: float | None) -> int:
    """Workers to start: the CPUs we may run on, capped by the quota rounded up, at least 1."""
    n = affinity if cpu_quota is None else min(affinity, math.ceil(cpu_quota))
    return max(1, n)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def host_quota() -> float | None:
    return quota(_read("/proc/self/cgroup") or "", _read("/proc/self/mountinfo") or "", _read)


def available() -> int:
    """The default worker count: CPUs this process may use (affinity and cgroup quota)."""
    return usable(affinity(), host_quota())


def describe() -> str:
    """e.g. "2 here: affinity 2 CPUs, cgroup quota none" (for --help and the startup log)."""
    cpus, q = affinity(), host_quota()
    return (f"{usable(cpus, q)} here: affinity {cpus} CPUs, cgroup quota "
            + ("none" if q is None else f"{q:g} CPUs"))
