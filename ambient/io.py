"""File helpers shared by every module that writes or finds a folder: one atomic write, one JSON reader, one
hub-or-folder resolver with one offline rule.

- ``atomic_write_dir(path, write)`` / ``atomic_write_file(path, write)``: write through a temporary sibling and
  rename it into place; on any error the previous folder or file stays where it was.
- ``read_json(path)``: JSON with the file named in the error.
- ``hub_offline()``: ``HF_HUB_OFFLINE`` set to 1/true/yes/on (any case), as huggingface_hub reads it.
- ``resolve_folder(path_or_id, patterns)``: a local folder as is; ``owner/name`` or ``hub:owner/name`` from the hub,
  from the local cache alone when offline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HUB_PREFIX = "hub:"
SIDECAR_NAME = "ambient_config.json"  # a model folder's one sidecar: {"format_version", "type": "edm" | "latent", ...}
SIDECAR_VERSION = 3
LEGACY_LATENT_SIDECAR = "ambient_latent.json"  # latent pipelines exported before the sidecar was one file (v1)
OFFLINE_VALUES = ("1", "true", "yes", "on")


def as_os_error(e: BaseException, where: Path) -> BaseException:
    """safetensors reports a full or read-only disk as ``SafetensorError('... (os error 28)')``: the OSError it is."""
    if not isinstance(e, OSError) and type(e).__name__ == "SafetensorError":
        m = re.search(r"os error (\d+)", str(e))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code), str(where))
    return e


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def atomic_write_dir(target: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write a folder through a temporary sibling and rename it into place; on any error the previous folder
    stays (or is put back) where it was and the temporary one is removed. I/O errors are raised as ``OSError``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        write(tmp)
        umask = _umask()
        for root, dirs, files in os.walk(tmp):  # mkdtemp makes 0700 and safetensors 0600: the usual umask modes
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), 0o666 & ~umask)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old.exists():
            shutil.rmtree(old)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)  # put the previous folder back
        err = as_os_error(e, target)
        if err is not e:
            raise err from e
        raise


def atomic_write_file(target: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write one file through a temporary sibling (``write(tmp_path)``), fsync it and rename it into place; on
    any error the previous file stays and the temporary one is removed. The file gets the usual umask mode."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        err = as_os_error(e, target)
        if err is not e:
            raise err from e
        raise
    return target


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """``data`` into ``target`` atomically (see ``atomic_write_file``)."""
    return atomic_write_file(target, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(target: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``obj`` as JSON (with a final newline) into ``target`` atomically."""
    text = json.dumps(obj, indent=indent) + "\n"
    return atomic_write_file(target, lambda tmp: tmp.write_text(text))


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; a file that is not UTF-8 or not JSON raises ``ValueError`` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 text file: {e}") from e


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (1/true/yes/on, any case: huggingface_hub's own rule)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def hub_id(path_or_id: str | os.PathLike) -> str | None:
    """``owner/name`` when ``path_or_id`` has the form of a hub id (``owner/name`` or ``hub:owner/name``), else None."""
    s = str(path_or_id)
    if s.startswith(HUB_PREFIX):
        s = s[len(HUB_PREFIX) :]
    if s.count("/") != 1 or s.startswith((".", "/")) or not all(s.split("/")):
        return None
    return s


def resolve_folder(
    path_or_id: str | os.PathLike,
    patterns: Sequence[str] = ("*.json", "*.safetensors", "*.txt", "*.md"),
    what: str = "a model folder",
) -> Path:
    """A local folder as is; otherwise a hub id (``owner/name`` or ``hub:owner/name``): from the local hub cache
    when ``HF_HUB_OFFLINE`` is set (1/true/yes/on), else downloaded (files matching ``patterns``).

    Raises ``ValueError`` for a file, ``FileNotFoundError`` for a missing folder or an id that cannot be fetched."""
    s = str(path_or_id)
    p = Path(path_or_id)
    if not s.startswith(HUB_PREFIX) and p.exists():
        if not p.is_dir():
            raise ValueError(f"{p} is a file; expected {what}")
        return p
    repo = hub_id(s)
    if repo is None:
        raise FileNotFoundError(f"{what} {s!r} does not exist")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        return Path(snapshot_download(repo, allow_patterns=list(patterns), local_files_only=offline))
    except Exception as e:  # not cached while offline, network errors, unknown repos, bad ids
        flag = os.environ.get("HF_HUB_OFFLINE", "").strip()
        why = (
            f"it is not in the local hub cache and HF_HUB_OFFLINE={flag} forbids a download"
            if offline
            else f"{type(e).__name__}: {e}"
        )
        raise FileNotFoundError(f"{s!r} is not a local folder and could not be fetched from the hub: {why}") from e
