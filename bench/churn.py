"""Configuration churn for zero-downtime measurements.

`Churn(directory, service)` writes an initial configuration with `stable` routes
(/stable-<i>/) that must keep serving throughout, then `change(i)` applies the i-th of an
endless, deterministic sequence of edits, each of which changes the route table:
Mappings added, removed and edited (including the stable ones' response headers), the
Module changed, and whole files replaced (the file holding the stable routes included,
with the same routes in another order). Files are replaced atomically (write + rename),
as editors and config-management tools do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

KINDS = ("add", "edit", "remove", "module", "replace_stable", "replace_extra")


def _doc(kind: str, name: str, spec: dict) -> str:
    return "---\n" + json.dumps({"apiVersion": "getambassador.io/v3alpha1", "kind": kind,
                                 "metadata": {"name": name}, "spec": spec}) + "\n"


class Churn:
    def __init__(self, directory: Path, service: str, stable: int = 4):
        self.dir = Path(directory)
        self.service = service
        self.stable = stable
        self.extra: dict[int, str] = {}  # churning Mappings: index -> header value
        self.next_extra = 0
        self.version = 0

    @property
    def stable_routes(self) -> list[str]:
        return [f"/stable-{i}/" for i in range(self.stable)]

    def write(self, name: str, text: str) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / name)

    def start(self) -> None:
        self._write_stable(reverse=False)
        self._write_extra()
        self.write("module.yaml", _doc("Module", "ambassador", {"config": {"server_name": "edge-0"}}))

    def _write_stable(self, reverse: bool) -> None:
        docs = [_doc("Mapping", f"stable-{i}", {
            "prefix": f"/stable-{i}/", "service": self.service,
            "add_response_headers": {"x-churn": {"value": str(self.version)}}}) for i in range(self.stable)]
        self.write("stable.yaml", "".join(reversed(docs) if reverse else docs))

    def _write_extra(self) -> None:
        docs = [_doc("Mapping", f"extra-{i}", {"prefix": f"/extra-{i}/", "service": self.service,
                                               "add_request_headers": {"x-v": {"value": v}}})
                for i, v in sorted(self.extra.items())]
        self.write("extra.yaml", "".join(docs) or "---\n")

    def change(self, i: int) -> str:
        """Apply change number i; returns its kind."""
        self.version += 1
        kind = KINDS[i % len(KINDS)]
        if kind == "add" or (kind in ("edit", "remove") and not self.extra):
            self.extra[self.next_extra] = "0"
            self.next_extra += 1
            self._write_extra()
            return "add"
        if kind == "edit":
            key = min(self.extra)
            self.extra[key] = str(self.version)
            self._write_extra()
        elif kind == "remove":
            del self.extra[min(self.extra)]
            self._write_extra()
        elif kind == "module":
            self.write("module.yaml", _doc("Module", "ambassador", {"config": {
                "server_name": f"edge-{self.version}", "merge_slashes": self.version % 2 == 0}}))
        elif kind == "replace_stable":
            self._write_stable(reverse=self.version % 2 == 1)
        else:  # replace_extra: a whole new file of churning Mappings
            self.extra = {self.next_extra + j: str(self.version) for j in range(3)}
            self.next_extra += 3
            self._write_extra()
        return kind
