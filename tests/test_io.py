"""ambient.io: the atomic writes, the JSON reader and the one hub-or-folder resolver with its offline rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ambient import io


def _fake_cache(root: Path, repo: str, files: dict[str, str], monkeypatch) -> Path:
    """A huggingface_hub cache holding one snapshot of ``repo``, as snapshot_download leaves it, made the cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))  # read once, at import
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    for name, text in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_text(text)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return snap


@pytest.mark.parametrize("value", ["1", "true", "YES", "on", " On "])
def test_offline_values_use_the_cache(tmp_path, monkeypatch, value):
    snap = _fake_cache(tmp_path / "cache", "someone/model", {"config.json": "{}"}, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert io.hub_offline()
    for form in ("someone/model", "hub:someone/model"):
        got = io.resolve_folder(form, ("*.json",))
        assert got.resolve() == snap.resolve()
        assert (got / "config.json").is_file()


def test_offline_without_cache_names_the_rule(tmp_path, monkeypatch):
    _fake_cache(tmp_path / "cache", "someone/other", {}, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        io.resolve_folder("someone/absent")


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_not_offline(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert not io.hub_offline()


def test_local_folder_file_and_missing(tmp_path):
    assert io.resolve_folder(tmp_path) == tmp_path
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        io.resolve_folder(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.resolve_folder(tmp_path / "a" / "b" / "c")
    assert io.hub_id("hub:a/b") == "a/b" and io.hub_id("a/b") == "a/b"
    assert io.hub_id("./a/b") is None and io.hub_id("a/") is None and io.hub_id("/a") is None


def test_atomic_write_dir_keeps_the_old_folder_on_error(tmp_path):
    target = tmp_path / "m"
    io.atomic_write_dir(target, lambda d: (d / "x").write_text("1"))
    assert (target / "x").read_text() == "1"

    def fail(d: Path) -> None:
        (d / "x").write_text("2")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        io.atomic_write_dir(target, fail)
    assert (target / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_atomic_write_file_and_json(tmp_path):
    p = tmp_path / "sub" / "a.json"
    io.write_json_atomic(p, {"a": 1})
    assert io.read_json(p) == {"a": 1}
    with pytest.raises(RuntimeError):
        io.atomic_write_file(p, lambda t: (_ for _ in ()).throw(RuntimeError("x")))
    assert json.loads(p.read_text()) == {"a": 1}
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.json"]
    io.atomic_write_bytes(p, b"\xff")
    with pytest.raises(ValueError, match="a.json"):
        io.read_json(p)
    p.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        io.read_json(p)
