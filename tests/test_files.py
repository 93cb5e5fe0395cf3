"""The files source: parsing is cached per file between reads."""

from __future__ import annotations

import os

from edge.supervisor.sources import files


def write(path, text):
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def mapping(name, prefix):
    return (f"apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {{name: {name}}}\n"
            f"spec: {{prefix: {prefix}, service: 'a:1'}}\n")


def test_only_changed_files_are_parsed_again(tmp_path, monkeypatch):
    write(tmp_path / "a.yaml", mapping("a", "/a/"))
    write(tmp_path / "b.yaml", mapping("b", "/b/"))
    parsed = []
    real = files.load_file
    monkeypatch.setattr(files, "load_file", lambda path, ns="default": parsed.append(os.path.basename(path)) or real(path, ns))
    cache: dict = {}
    first = files.load([str(tmp_path)], cache=cache)
    assert sorted(parsed) == ["a.yaml", "b.yaml"] and len(first.objects) == 2
    parsed.clear()
    write(tmp_path / "b.yaml", mapping("b", "/b2/"))
    second = files.load([str(tmp_path)], cache=cache)
    assert parsed == ["b.yaml"]
    assert sorted(o.spec["prefix"] for o in second.objects) == ["/a/", "/b2/"]
    (tmp_path / "a.yaml").unlink()
    third = files.load([str(tmp_path)], cache=cache)
    assert [o.name for o in third.objects] == ["b"] and list(cache) == [str(tmp_path / "b.yaml")]
