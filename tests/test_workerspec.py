"""The worker's contract (edge.workerspec): options through argv, control messages, and one
home for every default (Options, `edge serve` and the worker take theirs from DEFAULTS)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from edge import cli, cpus, workerspec
from edge.supervisor.main import Options, worker_options
from edge.workerspec import DEFAULTS, WorkerOptions

EDGE = Path(__file__).resolve().parent.parent / "edge"


def other_value(f: dataclasses.Field):
    """A value of field `f` that is not its default (floats that need all 17 digits)."""
    default, kind = f.default, f.type
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != default)
    if kind == "int":
        return default + 7
    if kind == "int | None":
        return 3
    if kind == "float":
        return default / 3 + 0.1  # e.g. 3.4333333333333336: repr, not %g, round-trips it
    if kind in ("str", "str | None"):
        return f"{f.name}-given"
    if kind == "tuple[tuple[int, int], ...]":
        return ((8080, 5), (8443, 17))
    raise AssertionError(f"WorkerOptions.{f.name}: teach other_value() a value of type {kind}")


FIELDS = dataclasses.fields(WorkerOptions)


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_round_trips_through_argv(f):
    value = other_value(f)
    assert value != f.default
    options = dataclasses.replace(DEFAULTS, **{f.name: value})
    back = WorkerOptions.from_argv(options.to_argv())
    assert back == options
    assert getattr(back, f.name) == value and type(getattr(back, f.name)) is type(value)


def test_all_fields_at_once_round_trip():
    options = WorkerOptions(**{f.name: other_value(f) for f in FIELDS})
    assert WorkerOptions.from_argv(options.to_argv()) == options
    assert WorkerOptions.from_argv([]) == DEFAULTS == WorkerOptions.from_argv(DEFAULTS.to_argv())


@pytest.mark.parametrize("value", [0.1 + 0.2, 1 / 3, 1e-7, 123456.78901234567, 2.5e-300, 7.0])
def test_floats_round_trip_exactly(value):
    options = dataclasses.replace(DEFAULTS, header_timeout=value, ratelimit_budget_ms=value)
    back = WorkerOptions.from_argv(options.to_argv())
    assert back.header_timeout == value and back.ratelimit_budget_ms == value  # ==, not approx


def test_none_fields_are_left_out_and_repeatable_ones_repeat():
    argv = DEFAULTS.to_argv()
    nones = [f.name for f in FIELDS if getattr(DEFAULTS, f.name) is None]
    assert nones  # cell and ratelimit: "not given" is not the string "None"
    for name in nones:
        assert workerspec.flag(name) not in argv
    assert "None" not in argv
    argv = dataclasses.replace(DEFAULTS, listen=((80, 3), (443, 4))).to_argv()
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--listen"] == ["80:3", "443:4"]


def test_from_argv_refuses_what_the_worker_cannot_serve(capsys):
    for argv in (["--ratelimit-failure-mode", "maybe"], ["--listen", "8080"], ["--slot", "one"], ["--nope", "1"]):
        with pytest.raises(SystemExit):
            WorkerOptions.from_argv(argv)
    capsys.readouterr()


@pytest.mark.parametrize("msg, parsed", [
    (workerspec.table_message(), (workerspec.TABLE, None)),
    (workerspec.listen_message(8080), (workerspec.LISTEN, 8080)),
    (workerspec.unlisten_message(65535), (workerspec.UNLISTEN, 65535)),
    (b"L1", (workerspec.LISTEN, 1)),
])
def test_control_messages(msg, parsed):
    assert workerspec.parse_message(msg) == parsed
    assert len(msg) <= workerspec.MAX_MESSAGE


@pytest.mark.parametrize("junk", [b"", b"X", b"T1", b"TT", b"L", b"U", b"Labc", b"L-1", b"L 80", b"U80\n",
                                  b"L8080x", b"l8080", "L\u0663".encode(), b"\x00" * 100])
def test_control_junk_is_refused(junk):
    with pytest.raises(ValueError, match="unknown control message"):
        workerspec.parse_message(junk)


# ---- one home for each default ----------------------------------------------------------

SHARED = {f.name for f in dataclasses.fields(Options)} & {f.name for f in FIELDS}


def test_the_supervisor_takes_worker_defaults_from_the_contract():
    assert SHARED >= {"header_timeout", "idle_timeout", "drain_timeout", "log_level", "ratelimit_budget_ms",
                      "ratelimit_failure_mode"}
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    for name in SHARED:
        assert defaults[name] == getattr(DEFAULTS, name), name


def test_every_shared_setting_reaches_the_workers():
    given = {name: other_value(next(f for f in FIELDS if f.name == name)) for name in SHARED}
    worker = worker_options(Options(config_paths=[], workers=1, **given), ratelimit="seg")
    assert worker == dataclasses.replace(DEFAULTS, ratelimit="seg", **given)


def _serve(monkeypatch, argv, env=None):
    for name in [n for n in os.environ if n.startswith(("EDGE_", "AMBASSADOR_"))]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return cli.serve_options(cli.build_parser().parse_args(["serve", *argv]))


def test_edge_serve_without_options_keeps_the_declared_defaults(monkeypatch):
    opts = _serve(monkeypatch, ["-c", "conf"])
    assert opts == Options(config_paths=["conf"], workers=cpus.available())
    assert worker_options(opts, None) == DEFAULTS


def test_edge_serve_options_and_environment_twins(monkeypatch):
    opts = _serve(monkeypatch, ["-c", "conf", "--idle-timeout", "0.1", "--workers", "3"],
                  env={"EDGE_HEADER_TIMEOUT": "2.5", "EDGE_ADMIN_ALLOW_REMOTE_RESTART": "yes",
                       "EDGE_RATELIMIT_FAILURE_MODE": "deny", "EDGE_MAX_TABLE_MB": "0.5"})
    assert (opts.header_timeout, opts.idle_timeout, opts.workers) == (2.5, 0.1, 3)
    assert opts.admin_allow_remote_restart is True and opts.ratelimit_failure_mode == "deny"
    assert opts.max_table_bytes == 1 << 19
    assert _serve(monkeypatch, ["-c", "c", "--no-admin-allow-remote-restart"],
                  env={"EDGE_ADMIN_ALLOW_REMOTE_RESTART": "1"}).admin_allow_remote_restart is False
    assert _serve(monkeypatch, ["-c", "c"], env={"EDGE_WORKERS": "5"}).workers == 5
    assert _serve(monkeypatch, ["-c", "c", "--workers", "0"]).workers == 1


def test_no_other_copy_of_a_worker_default():
    """A literal default for a worker setting anywhere but edge/workerspec.py would drift."""
    names = "|".join(sorted(SHARED))
    literal = re.compile(rf"\b({names})\b\s*(?::[^=\n]*)?=\s*(?:[-+]?[\d.]+|[\"'])")
    flag = re.compile(r"[\"']--(" + names.replace("_", "-") + r")[\"'][^\n]*default=[-+\d.\"']")
    found = []
    for path in EDGE.rglob("*.py"):
        if path.name == "workerspec.py" and path.parent == EDGE:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if literal.search(line) or flag.search(line):
                found.append(f"{path.relative_to(EDGE.parent)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_edge_serve_help_says_the_default_worker_count_here(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: CPUs available to this process: affinity and cgroup quota" in text
    assert f"e.g. {cpus.describe()}" in text
    assert "--admin-allow-remote-restart" in text and "others get 403" in text
