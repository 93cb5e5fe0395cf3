"""edge.supervisor.orphans with real processes: a Python child of the test is made a child
subreaper (as PID 1 of a container is a reaper), given orphans (children of its children,
whose parent exited) and an own Popen child with a distinctive exit code, then reaps.
In a child process: a subreaper pytest would collect every orphan of every other test."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.supervisor import orphans

ROOT = Path(__file__).resolve().parent.parent

# forks three processes and exits: they are re-parented to the subreaper; one exits 3, one
# is killed by SIGKILL, one keeps running. Each acts only once its parent has exited (had it
# exited first, its parent could have waited for it: no orphan)
MAKER = textwrap.dedent("""
    import os, time
    parent = os.getpid()
    pids = []
    for action in ("exit", "kill", "run"):
        pid = os.fork()
        if pid == 0:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            while os.getppid() == parent:
                time.sleep(0.002)
            if action == "exit":
                os._exit(3)
            if action == "kill":
                os.kill(os.getpid(), 9)
            time.sleep(10)  # killed by the scenario; gone in 10 s should it fail first
            os._exit(0)
        pids.append(pid)
    print(*pids, flush=True)
    os._exit(0)
""")

SCENARIO = textwrap.dedent(r"""
    import json, os, subprocess, sys, time
    from edge.supervisor import orphans

    order, n_orphans, limit, maker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    out = {"subreaper_before": orphans.should_reap()}
    orphans.set_subreaper()
    out["subreaper_after"] = orphans.should_reap()
    me = os.getpid()

    def stat(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return fields[0], int(fields[1])  # state, ppid
        except FileNotFoundError:
            return None, None

    def zombies():
        return sorted(pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                      if stat(pid) == ("Z", me))

    def wait_for(cond, what):
        deadline = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    def make_orphans():
        return [[int(p) for p in subprocess.run([sys.executable, "-c", maker], capture_output=True, text=True,
                                                 check=True).stdout.split()] for _ in range(n_orphans)]

    def make_own():
        own = subprocess.Popen(["sh", "-c", "exit 37"])
        wait_for(lambda: stat(own.pid)[0] == "Z", "own child exits")  # a zombie, not polled
        return own

    if order == "own-first":
        own = make_own()
        made = make_orphans()
    else:
        made = make_orphans()
        own = make_own()
    exited = sorted(p for three in made for p in three[:2])
    running = [three[2] for three in made]
    wait_for(lambda: set(exited) <= set(zombies()), "orphans exit")
    out["zombies_before"] = zombies()
    ours = {own.pid}
    calls = []
    asked = []
    while True:
        got = orphans.reap(lambda pid: asked.append(pid) or pid in ours, limit=limit)
        calls.append(got)
        if not got or len(calls) > 100:
            break
    out.update(own=own.pid, exited=exited, running=running, calls=calls, asked=sorted(set(asked)),
               own_state_after=stat(own.pid)[0], zombies_after=zombies(),
               running_alive=[stat(p) == ("S", me) for p in running])
    out["own_poll"] = own.poll()  # after reap: the real exit code, or 0 had reap taken it
    for p in running:
        os.kill(p, 9)
    wait_for(lambda: len(zombies()) == len(running), "running orphans killed")
    out["killed"] = orphans.reap(lambda pid: False)
    out["after_all"] = orphans.reap(lambda pid: False)  # no children left: ECHILD, not an error
    print(json.dumps(out))
""")


def scenario(order: str, n_orphans: int = 2, limit: int = orphans.LIMIT) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCENARIO, order, str(n_orphans), str(limit), MAKER],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("order", ["own-first", "orphans-first"])
def test_orphans_reaped_and_own_child_keeps_its_exit_code(order):
    out = scenario(order)
    assert out["subreaper_before"] is False and out["subreaper_after"] is True
    assert set(out["exited"]) | {out["own"]} == set(out["zombies_before"])
    reaped = dict(pid_code for call in out["calls"] for pid_code in call)
    assert set(reaped) == set(out["exited"])  # every exited orphan, nothing else
    codes = sorted(reaped.values())
    assert codes == sorted([3, -9] * 2)  # as Popen.returncode reports them
    # the own child was never waited for: still a zombie after reap, then Popen's 37
    assert out["own_state_after"] == "Z"
    assert out["zombies_after"] == [out["own"]]
    assert out["own_poll"] == 37
    assert out["own"] in out["asked"]  # seen exited, and left alone
    # a running orphan is left alone (reaped once it has exited)
    assert all(out["running_alive"])
    assert sorted(pid for pid, _ in out["killed"]) == sorted(out["running"])
    assert all(code == -9 for _, code in out["killed"])
    assert out["after_all"] == []
    # one call was enough; the second found nothing
    assert [len(c) for c in out["calls"]] == [4, 0]


def test_limit_bounds_one_call_and_the_next_call_goes_on():
    out = scenario("own-first", n_orphans=3, limit=2)
    assert [len(c) for c in out["calls"]] == [2, 2, 2, 0]
    assert sorted(pid for call in out["calls"] for pid, _ in call) == sorted(out["exited"])
    assert out["own_poll"] == 37


def test_without_proc_orphans_behind_an_own_zombie_wait_for_the_next_call():
    """The fallback: with no candidates, P_ALL shows the own zombie first, every time; reap
    returns (does not spin) having reaped nothing, and reaps the orphans once the own
    child has been polled."""
    script = textwrap.dedent("""
        import json, os, subprocess, sys, time
        from edge.supervisor import orphans
        orphans.set_subreaper()
        def state(pid):
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        own = subprocess.Popen(["sh", "-c", "exit 37"])
        made = [int(p) for p in subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True,
                                               check=True).stdout.split()]
        os.kill(made[2], 9)
        deadline = time.monotonic() + 10
        while not all(state(p) == "Z" for p in [own.pid, *made]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first = orphans.reap(lambda pid: pid == own.pid, candidates=lambda: [])
        code = own.poll()
        second = orphans.reap(lambda pid: pid == own.pid, candidates=lambda: [])
        print(json.dumps({"first": first, "code": code, "second": second}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, MAKER], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["first"] == [] and out["code"] == 37
    assert sorted(code for _, code in out["second"]) == [-9, -9, 3]


def test_not_a_reaper_here():
    """pytest is neither PID 1 nor a subreaper; and with nothing exited, reap returns []."""
    assert orphans.should_reap() is False
    assert orphans.is_subreaper() is False
    with subprocess.Popen(["sleep", "5"]) as sleeper:
        try:
            assert orphans.reap(lambda pid: pid == sleeper.pid) == []
        finally:
            sleeper.kill()


def test_children_lists_this_process_children():
    with subprocess.Popen(["sleep", "5"]) as sleeper:
        try:
            assert sleeper.pid in orphans.children()
        finally:
            sleeper.kill()
