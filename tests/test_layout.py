"""DESIGN.md §7: pure modules import no I/O libraries; supervisor and worker stay apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge.cli import check

EDGE = Path(__file__).resolve().parent.parent / "edge"
PURE = ["model.py", "resources", "supervisor/compile.py", "supervisor/compile_tls.py", "supervisor/endpoints.py",
        "worker/proxy.py", "worker/plan.py", "worker/xfcc.py", "worker/grpcstatus.py", "worker/grpcweb.py", "worker/cors.py",
        "worker/proto/messages.py", "worker/router.py", "ratelimit/algorithm.py", "ratelimit/descriptors.py",
        "ratelimit/fleet.py", "ratelimit/resp.py", "ratelimit/responses.py"]
FORBIDDEN = {"trio", "socket", "kubernetes", "msgpack", "select", "subprocess", "mmap", "httpx"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def files(entry: str) -> list[Path]:
    p = EDGE / entry
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


@pytest.mark.parametrize("entry", PURE)
def test_pure_modules(entry):
    for f in files(entry):
        bad = {n for n in imports(f) if n.split(".")[0] in FORBIDDEN}
        assert not bad, f"{f} imports {bad}"


def within(name: str, package: str) -> bool:
    """`name` is `package` or one of its modules (edge.workerspec is not within edge.worker)."""
    return name == package or name.startswith(package + ".")


def test_supervisor_and_worker_do_not_import_each_other():
    for f in files("supervisor"):
        assert not any(within(n, "edge.worker") for n in imports(f)), f
    for f in files("worker"):
        assert not any(within(n, "edge.supervisor") for n in imports(f)), f


def test_edge_check_reports_and_fails(tmp_path, capsys):
    (tmp_path / "ok.yaml").write_text("apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: ok}\n"
                                      "spec: {prefix: /a/, service: a}\n")
    assert check([str(tmp_path)], "default", "default") == 0
    (tmp_path / "bad.yaml").write_text("apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: bad}\n"
                                       "spec: {prefix: /b/, service: a, timeout_ms: later}\n")
    assert check([str(tmp_path)], "default", "default") == 1
    out = capsys.readouterr().out
    assert "bad.yaml: Mapping default/bad field spec.timeout_ms: must be an integer" in out
