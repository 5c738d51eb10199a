"""The app's registry of model pairs: which pairs it serves (a ``pairs.json``, parsed and loaded by
``ambient.pairs_config``; the format is described there), where their files may be (``PathPolicy``), and what a
visitor may read of a server path (``PairRegistry.redact``).

A pair that cannot be loaded raises ``ambient.pair.PairError`` (``PairError`` here, and ``ConfigError`` for a
config file that cannot be read: the same type) saying what is wrong and how to fix it; other pairs are
unaffected.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from ambient import pairs_config
from ambient.pair import OnDevice, Pair, PairError
from ambient.pairs_config import PairsConfig, PairSpec, load_config, parse_config

__all__ = [
    "ConfigError",
    "ModelPair",
    "OnDevice",
    "PairError",
    "PairRegistry",
    "PairSpec",
    "PathPolicy",
    "load_config",
    "load_pair",
    "parse_config",
]

ModelPair = Pair  # the app's pairs are the library's
ConfigError = PairError  # one error type: a config file that cannot be read names no pair


class PathPolicy:
    """Resolves config paths and refuses any that lead outside the allowed folders."""

    def __init__(self, allowed_dirs: list[str | Path] | tuple[str | Path, ...] = ()):
        self.allowed = [Path(d).resolve() for d in allowed_dirs]

    def resolve(self, spec: PairSpec, key: str, value: str) -> Path:
        """The absolute path of ``value`` (relative to the config's folder), checked against the allowed folders."""
        if "\x00" in value:
            raise PairError(f'"{key}" contains a NUL byte.', "Correct the path.", spec.name)
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = spec.base_dir / p
        p = p.resolve()
        roots = [spec.base_dir.resolve(), *self.allowed]
        if not any(p == r or p.is_relative_to(r) for r in roots):
            raise PairError(
                f'"{key}" ({value}) leads to {p}, outside the allowed folders ({", ".join(map(str, roots))}).',
                "Move the files under the config's folder, or start the app with --allow-dir <folder> "
                "(or AMBIENT_ALLOWED_DIRS) naming the folder that holds them.",
                spec.name,
            )
        return p


def load_pair(
    spec: PairSpec, allowed_dirs: list[str | Path] | tuple[str | Path, ...] = (), device: str = "cpu"
) -> Pair:
    """Load an entry through the library with this app's path policy; ``PairError`` with a fix otherwise."""
    return pairs_config.load_pair(spec, PathPolicy(allowed_dirs).resolve, device)


class PairRegistry:
    """The pairs of a config, loaded on first use and kept; broken ones keep their error."""

    def __init__(
        self,
        config: PairsConfig | None,
        allowed_dirs: list[str | Path] | tuple[str | Path, ...] = (),
        device: str = "cpu",
        config_error: str | None = None,
    ):
        self.config = config or PairsConfig([], None)
        self.allowed_dirs = list(allowed_dirs)
        self.device = device
        self.config_error = config_error
        self._pairs: dict[str, Pair] = {}
        self._errors: dict[str, PairError] = dict(self.config.errors)
        self._lock = threading.Lock()

    @classmethod
    def from_path(
        cls, path: str | Path, allowed_dirs: list[str | Path] | tuple[str | Path, ...] = (), device: str = "cpu"
    ) -> PairRegistry:
        """A registry for a config file; an unreadable file gives an empty registry with ``config_error`` set."""
        try:
            return cls(load_config(path), allowed_dirs, device)
        except ConfigError as e:
            return cls(None, allowed_dirs, device, config_error=str(e))

    def redact(self, text: str) -> str:
        """``text`` as a visitor may see it: server folders shown relative to the config's folder, home as ``~``."""
        roots: dict[str, str] = {}
        for d in self.allowed_dirs:
            p = Path(d).resolve()
            roots[str(p)] = f"<allowed folder {p.name}>"
        for d in [Path.cwd(), *(s.base_dir for s in self.config.specs)]:
            roots[str(d.resolve())] = "."
        if self.config.path is not None:
            roots[str(self.config.path.resolve().parent)] = "."
        roots[str(Path.home().resolve())] = "~"
        for root in sorted(roots, key=len, reverse=True):  # the most specific folder first
            if root == os.sep:
                continue
            short = roots[root]
            text = text.replace(root + os.sep, "" if short == "." else short + os.sep)
            text = re.sub(re.escape(root) + r"(?![\w.-])", short, text)  # the folder itself
        # any other absolute path keeps only its last part
        return re.sub(r"(?<![\w.~>-])/(?:[\w.-]+/)+([\w.-]+)", r".../\1", text)

    @property
    def specs(self) -> list[PairSpec]:
        """The well-formed entries, in config order."""
        return list(self.config.specs)

    def names(self) -> list[str]:
        """All entry names, broken ones included (so the UI can say what is wrong with them)."""
        return [s.name for s in self.config.specs] + [n for n in self.config.errors if not n.startswith("#")]

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) pairs for a dropdown."""
        out = [(s.label, s.name) for s in self.config.specs]
        out += [(f"{n} (broken entry)", n) for n in self.config.errors if not n.startswith("#")]
        return out

    @property
    def default(self) -> str | None:
        """The pair to show first."""
        return self.config.default

    def spec(self, name: str) -> PairSpec | None:
        """The entry called ``name``."""
        return next((s for s in self.config.specs if s.name == name), None)

    def add(self, spec: PairSpec, make_default: bool = False) -> None:
        """Add an entry at run time (used for the fallback pair)."""
        with self._lock:
            self.config.specs = [s for s in self.config.specs if s.name != spec.name] + [spec]
            self._errors.pop(spec.name, None)
            self._pairs.pop(spec.name, None)
            if make_default or self.config.default is None:
                self.config.default = spec.name

    def get(self, name: str | None = None) -> Pair:
        """The loaded pair (loading it on first use); ``PairError`` when it cannot be used."""
        name = name or self.default
        if not name:
            raise PairError(
                self.config_error or "the config lists no model pairs.",
                "Start the app with --config <pairs.json> (see ambient/pairs_config.py for the format), or create "
                "a tiny random pair with python scripts/make_tiny_pair.py <folder>.",
                "(none)",
            )
        with self._lock:
            if name in self._pairs:
                return self._pairs[name]
            if name in self._errors:
                raise self._errors[name]
            spec = self.spec(name)
            if spec is None:
                raise PairError("no pair of this name in the config.", f"Choose one of {self.names()}.", name)
            try:
                pair = load_pair(spec, self.allowed_dirs, self.device)
            except PairError as e:
                self._errors[name] = e
                raise
            self._pairs[name] = pair
            return pair

    def error(self, name: str) -> PairError | None:
        """The stored error of a pair, if loading it failed."""
        return self._errors.get(name)

    def forget(self, name: str) -> None:
        """Drop a loaded pair or its error so the next ``get`` reloads it from disk."""
        with self._lock:
            self._pairs.pop(name, None)
            if name not in self.config.errors:
                self._errors.pop(name, None)
