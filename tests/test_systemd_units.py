"""config/systemd/: edge.service and edge.socket pass `systemd-analyze verify` without a
warning, and say what edge needs: Type=notify, SIGHUP reloads, the watchdog, a stop
timeout above the drain, the sandbox, and an ExecStart edge's own CLI accepts."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import build_parser
from edge.supervisor import compile as compiler
from edge.supervisor.sources import files
from edge.workerspec import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "config" / "systemd"
SERVICE = UNITS / "edge.service"
SOCKET = UNITS / "edge.socket"
EXAMPLE = ROOT / "config" / "quickstart"  # the shipped example configuration
INSTALLED_EDGE = "/opt/edge/bin/edge"


# --- reading units ---------------------------------------------------------------------

def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}, as systemd reads a unit file: # and ; start
    comments, a trailing backslash continues a line, a key may be given more than once
    and an empty assignment ("Key=") resets its list."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = None
    lines = iter(text.splitlines())
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"an assignment before any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        key, value = key.strip(), value.strip()
        if value:
            section.setdefault(key, []).append(value)
        else:
            section[key] = []
    return sections


def one(unit: dict, section: str, key: str) -> str:
    """The value of a key that is given once."""
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= is given {len(values)} times: {values}"
    return values[0]


_SPAN_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0,
               "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
               "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}


def seconds(span: str) -> float:
    """A systemd time span ("45s", "1min 30s", "90") in seconds (systemd.time(7))."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and re.fullmatch(r"(\s*\d+(\.\d+)?\s*[a-z]*)+\s*", span), f"not a time span: {span!r}"
    return sum(float(n) * _SPAN_UNITS[u] for n, u in parts)


# --- systemd-analyze verify ------------------------------------------------------------

def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing: `make test` installs Debian's systemd package for it"
    return path


def verify(directory: Path, service: str, socket: str, extra: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify` on the two units written to `directory` under their
    shipped names (plus `extra` files beside them); its exit status and the output lines
    that concern our units.

    ExecStart= names the installed binary, /opt/edge/bin/edge, and verify refuses a unit
    whose ExecStart is not an executable file. The copy verified here has that one path
    replaced by this venv's `edge` (asserted to happen exactly once, in ExecStart= only);
    every other line is verified as shipped. `--root=` a temporary tree holding
    /opt/edge/bin/edge was tried and is worse: systemd 252 then looks for everything in
    that tree, the units themselves, sysinit.target and the other default dependencies,
    /bin/kill of ExecReload=, so the tree would need a copy of the host's units and
    binaries, and the check would be against that copy instead of the host's systemd.

    The directory of a unit file given by path comes first in verify's search path (before
    /etc/systemd/system), so a locally installed edge.service cannot stand in for ours.

    The exit status, as systemd 252 sets it: an ExecStart=/ExecReload= binary missing, a
    Requires= unit missing, a socket's Service= not loaded: 1, always. A syntax warning
    ("Unknown key", "Failed to parse ..., ignoring"): 0 unless --recursive-errors= is
    given; with =yes (or =no), 1 for a warning in any loaded unit, the host's included;
    with =one, 1 for a warning in one of the files named. Hence =one (=no would also skip
    the dependencies, and a Requires= of a missing unit would pass). Warnings that are not
    syntax ones leave the status alone: the output is checked too, by ours()."""
    edge = Path(sys.executable).with_name("edge")
    assert os.access(edge, os.X_OK), f"{edge}: the venv's edge console script is missing"
    service, n = re.subn(rf"^ExecStart={re.escape(INSTALLED_EDGE)}(?=\s)", f"ExecStart={edge}", service,
                         flags=re.MULTILINE)
    assert n == 1, f"ExecStart={INSTALLED_EDGE} ... appears {n} times in edge.service, not once"
    (directory / "edge.service").write_text(service)
    (directory / "edge.socket").write_text(socket)
    for name, text in (extra or {}).items():
        (directory / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}  # e.g. SYSTEMD_LOG_LEVEL=debug
    env.update(SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C")
    proc = subprocess.run([systemd_analyze(), "verify", "--recursive-errors=one", "--man=no",
                           str(directory / "edge.service"), str(directory / "edge.socket")],
                          capture_output=True, text=True, env=env, timeout=60)
    return proc.returncode, ours(proc.stdout + proc.stderr, directory)


def ours(output: str, directory: Path) -> list[str]:
    """Every line but those plainly about another unit: "<another unit file>:<line>: ..."
    or "<another unit>: ...", which a host (a container without systemd as PID 1, say)
    may print about its own units. A line that names neither is kept: better a failure to
    look at than a warning about ours let through."""
    mine = {str(directory / "edge.service"), str(directory / "edge.socket")}
    kept = []
    for line in output.splitlines():
        if not line.strip():
            continue
        path = re.match(r"(/[^:\s]+):\d+: ", line)
        if path and path.group(1) not in mine:
            continue
        unit = re.match(r"([\w@\\.-]+\.(?:service|socket|target|mount|automount|swap|path|timer|slice|scope|device)): ",
                        line)
        if unit and unit.group(1) not in ("edge.service", "edge.socket"):
            continue
        kept.append(line)
    return kept


def test_both_units_pass_systemd_analyze_verify_without_a_warning(tmp_path):
    status, lines = verify(tmp_path, SERVICE.read_text(), SOCKET.read_text())
    assert status == 0 and lines == [], "\n".join(lines)


# Each mutation must find its text exactly once in the shipped unit, so that the check
# is shown to fail on *that* unit, not on one whose mistake was never made.
BROKEN = {
    "misspelled directive": ("edge.service", "\nType=notify\n", "\nTpye=notify\n"),
    "bad value": ("edge.service", "\nKillMode=mixed\n", "\nKillMode=mixd\n"),
    "bad time span": ("edge.service", "\nWatchdogSec=10s\n", "\nWatchdogSec=ten\n"),
    "bad address family": ("edge.service", " AF_INET6\n", " AF_INET7\n"),
    "ExecReload of a missing binary": ("edge.service", "ExecReload=/bin/kill ", "ExecReload=/bin/no-such-kill "),
    "misspelled section": ("edge.service", "\n[Service]\n", "\n[Servce]\n"),
    "requires a missing socket": ("edge.service", "\nRequires=edge.socket\n", "\nRequires=no-such.socket\n"),
    "socket misspelled directive": ("edge.socket", "\nReusePort=yes\n", "\nReusePorts=yes\n"),
    "socket bad value": ("edge.socket", "\nBacklog=4096\n", "\nBacklog=lots\n"),
    "socket for a missing service": ("edge.socket", "\nService=edge.service\n", "\nService=no-such.service\n"),
}


@pytest.mark.parametrize("mistake", BROKEN, ids=list(BROKEN))
def test_a_broken_unit_fails_the_check(tmp_path, mistake):
    name, old, new = BROKEN[mistake]
    texts = {"edge.service": SERVICE.read_text(), "edge.socket": SOCKET.read_text()}
    assert texts[name].count(old) == 1, f"{name} no longer has {old!r} once: update this mutation"
    texts[name] = texts[name].replace(old, new)
    status, lines = verify(tmp_path, texts["edge.service"], texts["edge.socket"])
    assert status != 0 or lines, f"{mistake}: systemd-analyze verify found nothing wrong"


def test_a_warning_about_another_unit_is_not_ours(tmp_path):
    """The filter in ours(): a dependency (here a network-online.target beside ours, which
    verify prefers to the host's) warns, and the check still passes."""
    extra = {"network-online.target": "[Unit]\nDescription=Network is Online\nNoSuchKey=1\n"}
    status, lines = verify(tmp_path, SERVICE.read_text(), SOCKET.read_text(), extra)
    assert status == 0 and lines == [], "\n".join(lines)


# --- what the units promise ------------------------------------------------------------

@pytest.fixture(scope="module")
def service():
    return parse_unit(SERVICE.read_text())


@pytest.fixture(scope="module")
def socket_unit():
    return parse_unit(SOCKET.read_text())


def test_the_reader_keeps_repeated_keys_and_resets_on_an_empty_one():
    unit = parse_unit("[A]\n# c\nK=1\nK=2\\\n  3\n; c\nL=x\nL=\nL=y\n")  # the backslash becomes a space
    assert unit == {"A": {"K": ["1", "2 3"], "L": ["y"]}}


def test_exec_start_is_the_installed_edge_serving_etc_edge_as_the_cli_parses_it(service):
    argv = shlex.split(one(service, "Service", "ExecStart"))
    assert argv[0] == INSTALLED_EDGE
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on an option edge does not have
    assert args.command == "serve" and args.config == ["/etc/edge"]
    assert one(service, "Service", "ConfigurationDirectory") == "edge"


def test_edge_notifies_and_reloads_on_sighup(service):
    assert one(service, "Service", "Type") == "notify"
    assert one(service, "Service", "NotifyAccess") == "main"
    argv = shlex.split(one(service, "Service", "ExecReload"))
    assert Path(argv[0]).name == "kill" and argv[-1] == "$MAINPID"
    assert argv[1:-1] in (["-HUP"], ["-SIGHUP"], ["-s", "HUP"], ["-s", "SIGHUP"], ["-1"])
    assert seconds(one(service, "Service", "WatchdogSec")) >= 1  # edge pings at half of it
    assert one(service, "Service", "Restart") == "on-failure"


def test_stopping_lets_the_supervisor_drain_before_anything_is_killed(service):
    assert one(service, "Service", "KillMode") == "mixed"
    assert service["Service"].get("KillSignal", ["SIGTERM"]) in (["SIGTERM"], ["TERM"], ["15"])
    assert seconds(one(service, "Service", "TimeoutStopSec")) > DEFAULTS.drain_timeout
    assert seconds("1min 30s") == 90 and seconds("45s") == 45 and seconds("500ms") == 0.5


def test_the_sandbox(service):
    s = service["Service"]
    expected = {
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "RuntimeDirectory": "edge",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes", "LockPersonality": "yes", "SystemCallArchitectures": "native",
    }
    assert {k: s.get(k) for k in expected} == {k: [v] for k, v in expected.items()}
    assert set(one(service, "Service", "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # ctypes in every worker (prctl): no W^X enforcement
    assert s.get("MemoryDenyWriteExecute", ["no"]) in (["no"], ["false"])
    assert int(one(service, "Service", "LimitNOFILE")) >= 65536


def test_logs_go_to_the_journal_and_options_come_from_etc_default_edge(service):
    s = service["Service"]
    assert one(service, "Service", "StandardOutput") == "journal"
    assert one(service, "Service", "SyslogIdentifier") == "edge"
    assert "PYTHONUNBUFFERED=1" in " ".join(s["Environment"]).split()
    assert s["EnvironmentFile"] == ["-/etc/default/edge"]  # "-": the file may be missing


def test_the_service_comes_with_its_socket(service):
    assert "edge.socket" in " ".join(service["Unit"]["After"]).split()
    assert one(service, "Install", "WantedBy") == "multi-user.target"
    assert one(service, "Install", "Also") == "edge.socket"


def test_the_socket_listens_on_the_example_listener_port(socket_unit):
    snapshot = files.load([str(EXAMPLE)], "default")
    table, _ = compiler.compile(snapshot.objects, compiler.CompileOptions(
        ambassador_id="default", admin_address=compiler.DEFAULT_ADMIN_ADDRESS))
    ports = {listener.port for listener in table.listeners}
    streams = socket_unit["Socket"]["ListenStream"]
    assert streams and {int(s.rpartition(":")[2]) for s in streams} <= ports, (streams, ports)


def test_the_socket_options(socket_unit):
    assert one(socket_unit, "Socket", "ReusePort") == "yes"
    assert one(socket_unit, "Socket", "FileDescriptorName") == "http"
    assert one(socket_unit, "Socket", "NoDelay") == "true"
    assert int(one(socket_unit, "Socket", "Backlog")) >= 1024
    assert one(socket_unit, "Socket", "Service") == "edge.service"
    assert one(socket_unit, "Install", "WantedBy") == "sockets.target"
