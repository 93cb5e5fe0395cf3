"""The default worker count: affinity capped by the cgroup v1/v2 CPU quota (edge.cpus)."""

from __future__ import annotations

import os

import pytest

from edge import cpus

V2_MOUNT = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_CPU_MOUNT = ("32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - "
                "cgroup cgroup rw,cpu,cpuacct\n")
V1_MEMORY_MOUNT = "33 31 0:30 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory\n"
OTHER_MOUNTS = ("22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
                "31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n")


@pytest.mark.parametrize("text, expected", [
    ("max 100000\n", None),
    ("150000 100000\n", 1.5),
    ("200000 100000", 2.0),
    ("50000 100000", 0.5),
    ("", None),
    ("max", None),
    ("abc 100000", None),
    ("0 100000", None),
    ("100000 0", None),
])
def test_parse_cpu_max(text, expected):
    assert cpus.parse_cpu_max(text) == expected


@pytest.mark.parametrize("quota, period, expected", [
    ("-1\n", "100000\n", None),
    ("50000\n", "100000\n", 0.5),
    ("250000", "100000", 2.5),
    ("", "100000", None),
    ("50000", "0", None),
])
def test_parse_cfs(quota, period, expected):
    assert cpus.parse_cfs(quota, period) == expected


def test_parse_proc_cgroup_v1_v2_and_hybrid():
    text = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n1:name=systemd:/init.scope\n0::/user.slice\n"
    v2, v1 = cpus.parse_proc_cgroup(text)
    assert v2 == "/user.slice"
    assert v1["cpu"] == v1["cpuacct"] == v1["memory"] == "/docker/abc"
    assert cpus.parse_proc_cgroup("0::/\n") == ("/", {})
    assert cpus.parse_proc_cgroup("garbage\n\n") == (None, {})


def test_parse_mountinfo_keeps_cgroup_mounts_and_unescapes_paths():
    text = (OTHER_MOUNTS + V2_MOUNT
            + "40 31 0:37 /my\\040root /sys/fs/cgroup/with\\040space\\011tab rw - cgroup cgroup rw,cpu\n"
            + "41 31 0:38 / /odd\\134040name rw - cgroup cgroup rw,cpuset\n")
    mounts = cpus.parse_mountinfo(text)
    assert [(m.point, m.root, m.fstype) for m in mounts] == [
        ("/sys/fs/cgroup", "/", "cgroup2"),
        ("/sys/fs/cgroup/with space\ttab", "/my root", "cgroup"),
        ("/odd\\040name", "/", "cgroup"),  # an escaped backslash followed by "040" is not a space
    ]
    assert "cpu" in mounts[1].options and "rw" in mounts[1].options


@pytest.mark.parametrize("proc_cgroup, mountinfo, files, expected", [
    pytest.param("0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "max 100000\n"}, None, id="v2-unlimited"),
    pytest.param("0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "150000 100000\n"}, 1.5, id="v2-1.5-cpus"),
    pytest.param("0::/kubepods/pod1/ctr\n", V2_MOUNT, {
        "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/kubepods/pod1/cpu.max": "50000 100000\n",  # the pod's limit binds the container
        "/sys/fs/cgroup/kubepods/cpu.max": "400000 100000\n",
    }, 0.5, id="v2-nested-ancestor-smaller"),
    pytest.param("0::/a/b\n", V2_MOUNT, {
        "/sys/fs/cgroup/a/b/cpu.max": "300000 100000\n",
        "/sys/fs/cgroup/a/cpu.max": "max 100000\n",  # the root cgroup has no cpu.max at all
    }, 3.0, id="v2-leaf-smaller"),
    pytest.param("2:cpu,cpuacct:/\n", V1_CPU_MOUNT, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    }, None, id="v1-quota-minus-1"),
    pytest.param("2:cpu,cpuacct:/\n", V1_CPU_MOUNT, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    }, 0.5, id="v1-half-a-cpu"),
    pytest.param("2:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
                 V1_CPU_MOUNT.replace(" / /sys", " /docker/abc /sys") + V1_MEMORY_MOUNT, {
                     # the container sees its own cgroup at the mount point: mount root == its path
                     "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
                     "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                     "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",  # not read
                     "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                 }, 2.0, id="v1-mount-root-is-the-cgroup"),
    pytest.param("2:cpu,cpuacct:/docker/abc\n", V1_CPU_MOUNT, {
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us": "150000\n",
        "/sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n",
    }, 1.5, id="v1-nested-ancestor"),
    pytest.param("0::/x\n", "40 31 0:37 / /sys/fs/cgroup/with\\040space rw - cgroup2 cgroup2 rw\n", {
        "/sys/fs/cgroup/with space/x/cpu.max": "100000 100000\n",
    }, 1.0, id="v2-escaped-mount-point"),
    pytest.param("0::/elsewhere\n", V2_MOUNT.replace(" / /sys", " /mine /sys"), {
        "/sys/fs/cgroup/cpu.max": "200000 100000\n",  # not under the mounted part: the mount itself
    }, 2.0, id="v2-path-outside-mount-root"),
    pytest.param("2:cpu,cpuacct:/\n0::/\n", V1_CPU_MOUNT + V2_MOUNT, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu.max": "120000 100000\n",
    }, 1.2, id="hybrid-smallest-wins"),
    pytest.param("3:memory:/\n", V1_MEMORY_MOUNT, {}, None, id="v1-no-cpu-controller"),
    pytest.param("", "", {}, None, id="no-cgroups-at-all"),
])
def test_quota(proc_cgroup, mountinfo, files, expected):
    assert cpus.quota(proc_cgroup, OTHER_MOUNTS + mountinfo, files.get) == expected


@pytest.mark.parametrize("affinity, quota, workers", [
    (4, None, 4),
    (4, 1.5, 2),  # 1.5 CPUs: two workers (rounded up)
    (4, 0.5, 1),
    (4, 0.01, 1),
    (2, 8.0, 2),  # the affinity caps it too
    (1, None, 1),
    (0, None, 1),  # never 0
    (0, 0.0, 1),
])
def test_usable(affinity, quota, workers):
    assert cpus.usable(affinity, quota) == workers


def test_available_here_is_the_affinity_capped_by_the_quota():
    assert cpus.affinity() == len(os.sched_getaffinity(0))
    assert cpus.available() == cpus.usable(cpus.affinity(), cpus.host_quota())
    assert cpus.describe().startswith(f"{cpus.available()} here: affinity {cpus.affinity()} CPUs, cgroup quota ")
