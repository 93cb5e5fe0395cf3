"""The files source: directories (or files) of multi-document YAML, watched with inotify
(polling as the fallback).

`load(paths)` is the one-shot read used by `edge check` and by the watcher; `watch` emits a
new Snapshot whenever a file is added, removed or changed, or when `reload` is set (SIGHUP).

Besides getambassador.io objects, core `v1` Secrets are read (what `kubectl create secret
tls NAME --cert=... --key=... --dry-run=client -o yaml` writes): Hosts and TLSContexts name
them for their certificates. Only their type and TLS keys are kept. Other Kubernetes
objects beside ours (Services, Deployments) are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio
import yaml

from edge.model import Diagnostic
from edge.resources.base import AMBASSADOR_GROUP, Invalid, RawObject, str_labels
from edge.resources.tls import secret_spec
from edge.supervisor.sources.inotify import Inotify

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
    api = doc.get("apiVersion", "")
    if not isinstance(api, str):
        raise Invalid("apiVersion", "must be a string")
    if is_secret(doc):
        spec = secret_spec(doc)
    else:
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            raise Invalid("spec", "must be a mapping")
    return RawObject(kind=kind, namespace=str(namespace), name=name, source=source, spec=spec,
                     labels=str_labels(meta.get("labels"), "metadata.labels"), api_version=api)


def is_secret(doc: dict) -> bool:
    return doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1"


# libyaml's parser when PyYAML was built with it: ten times faster on 10,000 Mappings
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_file(path: str, default_namespace: str = "default") -> tuple[list[RawObject], list[Diagnostic]]:
    """One file's objects (ours only) and diagnostics."""
    objects: list[RawObject] = []
    diags: list[Diagnostic] = []
    try:
        with open(path, encoding="utf-8") as fh:
            docs = list(yaml.load_all(fh, Loader=_YAML_LOADER))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return [], [_file_diag(path, f"cannot read YAML: {exc}".replace("\n", " "))]
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        try:
            obj = parse_document(doc, path, default_namespace)
        except Invalid as exc:
            diags.append(Diagnostic("error", path, str(doc.get("kind", "?")) if isinstance(doc, dict) else "?",
                                    default_namespace, f"document {i + 1}", exc.field, exc.message))
            continue
        if obj.api_version and not obj.api_version.startswith(AMBASSADOR_GROUP + "/") and not is_secret(doc):
            continue  # Kubernetes objects beside ours (Services, Deployments) are not ours to read
        objects.append(obj)
    return objects, diags


def load(paths: list[str], default_namespace: str = "default", cache: dict | None = None) -> Snapshot:
    """Read every config file. With `cache` (a dict kept by the caller), a file whose
    stat signature is unchanged is not parsed again: an edit to one file of many costs
    one file's parse."""
    objects: list[RawObject] = []
    diags: list[Diagnostic] = []
    for path in paths:
        if not os.path.exists(path):
            diags.append(_file_diag(path, "no such file or directory"))
    seen = set()
    for f in config_files(paths):
        seen.add(f)
        try:
            st = os.stat(f)
            key = (st.st_mtime_ns, st.st_size, st.st_ino, default_namespace)
        except OSError:
            key = None
        hit = cache.get(f) if cache is not None and key is not None else None
        if hit is not None and hit[0] == key:
            file_objects, file_diags = hit[1], hit[2]
        else:
            file_objects, file_diags = load_file(f, default_namespace)
            if cache is not None and key is not None:
                cache[f] = (key, file_objects, file_diags)
        objects += file_objects
        diags += file_diags
    if cache is not None:
        for gone in set(cache) - seen:
            del cache[gone]
    return Snapshot(tuple(objects), tuple(diags))


def watched_directories(paths: list[str]) -> list[str]:
    """Every directory whose entries can change the configuration."""
    dirs = set()
    for path in paths:
        if os.path.isdir(path):
            for root, subdirs, _ in os.walk(path):
                subdirs[:] = [d for d in subdirs if not d.startswith(".")]
                dirs.add(root)
        else:
            dirs.add(os.path.dirname(os.path.abspath(path)))
    return sorted(dirs)


async def watch(paths: list[str], send: trio.MemorySendChannel, *, interval: float = 0.1,
                default_namespace: str = "default", reload_events: trio.MemoryReceiveChannel | None = None) -> None:
    """Send a Snapshot now and after every change; `reload_events` is a receive channel of
    forced re-reads (SIGHUP). Changes are noticed through inotify at once, or by polling
    the files' signature every `interval` seconds. Runs until cancelled."""
    wake_send, wake_receive = trio.open_memory_channel(1)
    notifier = Inotify.available()
    try:
        async with trio.open_nursery() as nursery:
            if notifier is not None:
                nursery.start_soon(_forward_inotify, notifier, wake_send)
            if reload_events is not None:
                nursery.start_soon(_forward_reloads, reload_events, wake_send)
            last = None
            cache: dict = {}
            while True:
                if notifier is not None:
                    notifier.watch(watched_directories(paths))
                sig = signature(paths)
                if sig != last:
                    last = sig
                    await send.send(load(paths, default_namespace, cache))
                with trio.move_on_after(interval):
                    if await wake_receive.receive():
                        last = None  # forced: re-read everything even if nothing seems changed
                        cache.clear()
    finally:
        if notifier is not None:
            notifier.close()  # the nursery has ended: nobody waits on its fd any more


async def _forward_inotify(notifier: Inotify, wake: trio.MemorySendChannel) -> None:
    while True:
        await trio.lowlevel.wait_readable(notifier.fileno())
        notifier.drain()
        try:
            wake.send_nowait(False)
        except trio.WouldBlock:
            pass  # a wake-up is already pending


async def _forward_reloads(reload_events: trio.MemoryReceiveChannel, wake: trio.MemorySendChannel) -> None:
    async for _ in reload_events:
        await wake.send(True)
