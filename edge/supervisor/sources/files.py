"""The files source: directories (or files) of multi-document YAML, watched by polling.

`load(paths)` is the one-shot read used by `edge check` and by the watcher; `watch` emits a
new Snapshot whenever a file is added, removed or changed, or when `reload` is set (SIGHUP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio
import yaml

from edge.model import Diagnostic
from edge.resources.base import AMBASSADOR_GROUP, Invalid, RawObject, str_labels

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Snapshot:
    objects: tuple[RawObject, ...]
    diagnostics: tuple[Diagnostic, ...]


def config_files(paths: list[str]) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(os.path.join(root, n) for n in sorted(names)
                             if n.endswith(SUFFIXES) and not n.startswith("."))
        elif os.path.exists(path):
            files.append(path)
    return files


def signature(paths: list[str]) -> tuple:
    sig = []
    for f in config_files(paths):
        try:
            st = os.stat(f)
        except FileNotFoundError:
            continue
        sig.append((f, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(sig)


def _file_diag(source: str, message: str, field: str = "") -> Diagnostic:
    return Diagnostic("error", source, "File", "", os.path.basename(source), field, message)


def parse_document(doc, source: str, default_namespace: str) -> RawObject:
    """One YAML document -> RawObject. Raises Invalid for shapes no kind can use."""
    if not isinstance(doc, dict):
        raise Invalid("", f"document must be a mapping, not {type(doc).__name__}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise Invalid("kind", "is required")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise Invalid("metadata", "must be a mapping")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid("metadata.name", f"is required for {kind}")
    namespace = meta.get("namespace") or default_namespace
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise Invalid("spec", "must be a mapping")
    api = doc.get("apiVersion", "")
    if not isinstance(api, str):
        raise Invalid("apiVersion", "must be a string")
    return RawObject(kind=kind, namespace=str(namespace), name=name, source=source, spec=spec,
                     labels=str_labels(meta.get("labels"), "metadata.labels"), api_version=api)


def load(paths: list[str], default_namespace: str = "default") -> Snapshot:
    objects: list[RawObject] = []
    diags: list[Diagnostic] = []
    files = config_files(paths)
    for path in paths:
        if not os.path.exists(path):
            diags.append(_file_diag(path, "no such file or directory"))
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                docs = list(yaml.safe_load_all(fh))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            diags.append(_file_diag(f, f"cannot read YAML: {exc}".replace("\n", " ")))
            continue
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            try:
                obj = parse_document(doc, f, default_namespace)
            except Invalid as exc:
                diags.append(Diagnostic("error", f, str(doc.get("kind", "?")) if isinstance(doc, dict) else "?",
                                        default_namespace, f"document {i + 1}", exc.field, exc.message))
                continue
            if obj.api_version and not obj.api_version.startswith(AMBASSADOR_GROUP + "/"):
                continue  # Kubernetes objects beside ours (Services, Deployments) are not ours to read
            objects.append(obj)
    return Snapshot(tuple(objects), tuple(diags))


async def watch(paths: list[str], send: trio.MemorySendChannel, *, interval: float = 0.1,
                default_namespace: str = "default", reload_events: trio.MemoryReceiveChannel | None = None) -> None:
    """Send a Snapshot now and after every change; `reload_events` is a receive channel of
    forced re-reads (SIGHUP). Runs until cancelled."""
    last = None
    while True:
        sig = signature(paths)
        if sig != last:
            last = sig
            await send.send(load(paths, default_namespace))
        if reload_events is None:
            await trio.sleep(interval)
            continue
        with trio.move_on_after(interval):
            await reload_events.receive()
            last = None
