"""What a model pair is (two denoisers, a text encoder, the training images and their index) and how one is
loaded and checked from a ``pairs.json`` config.

Config format (paths relative to the config file's folder; ``hub:owner/name`` for a Hugging Face hub id)::

    {"default": "fmnist-100",
     "pairs": [{"name": "fmnist-100", "title": "Fashion-MNIST, 100 training images", "kind": "edm",
                "ambient": "fmnist-100/ambient", "baseline": "fmnist-100/baseline",
                "train_data": "fmnist-100/train.npz", "index": "fmnist-100/index",
                "sweep": "fmnist-100/eval/sweep.json", "sweep_plot": "fmnist-100/eval/sweep.png",
                "text_model": "all-MiniLM-L6-v2"}]}

Optional keys: ``sigma_n`` (else read from the Ambient model's config meta), ``reference_data`` (held-out
images, .npz, for the live quality score), ``description`` (markdown). ``kind`` is ``edm`` (folders written by
``EDMDenoiser.save_pretrained``: ``ambient_config.json`` + ``unet/``, or the older ``config.json`` +
``model.safetensors``), ``diffusers`` (DDPM pipeline folders: ``unet/`` + ``scheduler/``) or ``latent`` (two
text-to-image pipelines fine-tuned by ``python -m ambient finetune``, local folders or ``hub:`` ids; see
``ambient.latent_pair``)::

    {"name": "sd15-laion10k", "kind": "latent", "ambient": "hub:owner/sd15-ambient",
     "baseline": "hub:owner/sd15-baseline", "train_data": "laion10k/images", "index": "laion10k/index",
     "needs_gpu": true, "steps": 12}

For ``latent`` pairs ``train_data`` is the image folder they were fine-tuned on (default: the folder their
``ambient_latent.json`` names), ``index`` a folder the index is loaded from or, the first time, saved to;
optional: ``embedder`` (default ``efficientnet-lite0``), ``index_size`` (128), ``trajectory_points`` (8; 3 at
512 px and above), ``needs_gpu`` (false). Any pair may set ``steps``, the sampler steps the app starts with for it
(18; 8 for a latent pair of 512 px and above), and ``copy_test``, the test behind its COPY marks: ``similarity``
(the default: cosine of the index's features above its threshold) or ``ratio`` (the pixel ratio test of Gu et al.,
d1/d2 < 1/3, a near-exact copy); the other test is shown beside it.
Models trained on their images upsampled (``--upsample K``) pair with the images before upsampling: nothing in
the config says so, the models record it.
A pair that cannot be loaded raises ``PairError`` saying what is wrong and how to fix it; other pairs are
unaffected.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ambient.memorization.verdicts import COPY_TESTS
from ambient.pair import OnDevice, Pair, PairProblem, assemble, check_models, read_sweep

__all__ = ["ModelPair", "OnDevice", "PairError", "PairRegistry", "PairSpec", "load_config", "load_pair"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HUB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_PREFIX = "hub:"
KINDS = ("edm", "diffusers", "latent")
PATH_FIELDS = ("ambient", "baseline", "train_data", "index", "sweep", "sweep_plot", "frontier", "reference_data")
LATENT_KEYS = ("embedder", "index_size", "trajectory_points", "needs_gpu")
KNOWN_KEYS = {
    "name",
    "title",
    "kind",
    "text_model",
    "sigma_n",
    "description",
    "steps",
    "copy_test",
    *LATENT_KEYS,
    *PATH_FIELDS,
}
DEFAULT_STEPS = 18
MAX_STEPS = 200


class ConfigError(Exception):
    """The config file as a whole cannot be read."""


class PairError(Exception):
    """A pair that cannot be used: what is wrong (``problem``) and how to fix it (``fix``)."""

    def __init__(self, pair: str, problem: str, fix: str = ""):
        self.pair, self.problem, self.fix = pair, problem, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"Model pair '{self.pair}': {self.problem}" + (f" How to fix: {self.fix}" if self.fix else "")

    def markdown(self) -> str:
        """The message as markdown for the status panel."""
        fix = f"\n\n**How to fix:** {self.fix}" if self.fix else ""
        return f"**Model pair `{self.pair}` cannot be used.** {self.problem}{fix}"


@dataclass(frozen=True)
class PairSpec:
    """One entry of the config, not yet loaded."""

    name: str
    kind: str
    ambient: str
    baseline: str
    train_data: str
    base_dir: Path
    title: str = ""
    index: str | None = None
    sweep: str | None = None
    sweep_plot: str | None = None
    frontier: str | None = None
    reference_data: str | None = None
    text_model: str | None = None
    sigma_n: float | None = None
    description: str = ""
    config_path: Path | None = None
    steps: int | None = None
    embedder: str | None = None
    index_size: int | None = None
    trajectory_points: int | None = None
    needs_gpu: bool = False
    copy_test: str = "similarity"  # the test behind the COPY marks: "similarity" or "ratio"

    @property
    def label(self) -> str:
        """What the pair dropdown shows."""
        return self.title or self.name


@dataclass
class PairsConfig:
    """A parsed config: the good entries, the broken ones (by name) and the default pair."""

    specs: list[PairSpec]
    default: str | None
    errors: dict[str, PairError] = field(default_factory=dict)
    path: Path | None = None


def _is_hub(value: str) -> bool:
    return value.startswith(HUB_PREFIX)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_extra_keys(name: str, kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    """``steps`` (any pair) and the latent pairs' own keys, checked; PairError on a bad value or a latent key
    given to another kind."""
    out: dict[str, Any] = {}
    steps = entry.get("steps")
    if steps is not None:
        if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
            raise PairError(name, f'"steps" must be a whole number from 1 to {MAX_STEPS}, got {steps!r}.', "Fix it.")
        out["steps"] = steps
    given = [k for k in LATENT_KEYS if entry.get(k) is not None]
    if given and kind != "latent":
        raise PairError(name, f"{given} apply to latent pairs only.", 'Remove them, or set "kind": "latent".')
    checks = {
        "embedder": (lambda v: isinstance(v, str) and bool(v.strip()), "an embedder name"),
        "index_size": (lambda v: _is_int(v) and 8 <= v <= 1024, "a whole number of pixels from 8 to 1024"),
        "trajectory_points": (lambda v: _is_int(v) and 0 <= v <= MAX_STEPS, f"a whole number from 0 to {MAX_STEPS}"),
        "needs_gpu": (lambda v: isinstance(v, bool), "true or false"),
    }
    for key in given:
        ok, what = checks[key]
        if not ok(entry[key]):
            raise PairError(name, f'"{key}" must be {what}, got {entry[key]!r}.', "Fix or remove it.")
        out[key] = entry[key].strip() if key == "embedder" else entry[key]
    return out


def parse_config(data: Any, base_dir: str | Path, path: Path | None = None) -> PairsConfig:
    """Check the structure of a config dict; entries with errors go to ``errors`` instead of ``specs``."""
    where = str(path) if path else "the config"
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise ConfigError(f'{where} must be a JSON object with a "pairs" list, e.g. {{"pairs": [{{"name": ...}}]}}')
    base = Path(base_dir)
    specs: list[PairSpec] = []
    errors: dict[str, PairError] = {}
    seen: set[str] = set()
    for i, entry in enumerate(data["pairs"]):
        label = f"#{i + 1}"
        try:
            if not isinstance(entry, dict):
                raise PairError(label, f"entry {i + 1} of {where} is not a JSON object.", "Write it as {...}.")
            name = entry.get("name")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise PairError(
                    label,
                    f"entry {i + 1} has no valid name ({name!r}).",
                    "Give it a name of letters, digits, '.', '_' or '-' (at most 64 characters).",
                )
            label = name
            if name in seen:
                specs = [s for s in specs if s.name != name]
                raise PairError(name, f"the name appears twice in {where}.", "Give every pair its own name.")
            seen.add(name)
            unknown = sorted(set(entry) - KNOWN_KEYS)
            if unknown:
                raise PairError(name, f"unknown keys {unknown}.", f"Use only {sorted(KNOWN_KEYS)}.")
            kind = entry.get("kind", "edm")
            if kind not in KINDS:
                raise PairError(name, f"kind {kind!r} is not supported.", f"Use one of {list(KINDS)}.")
            for key in ("ambient", "baseline") if kind == "latent" else ("ambient", "baseline", "train_data"):
                if not isinstance(entry.get(key), str) or not entry[key].strip():
                    raise PairError(name, f'"{key}" is missing.', f'Add "{key}": "<path relative to {where}>".')
            extra = _check_extra_keys(name, kind, entry)
            for key in PATH_FIELDS:
                if key in entry and entry[key] is not None and not isinstance(entry[key], str):
                    raise PairError(name, f'"{key}" must be a string path.', "Write the path as a JSON string.")
            if _is_hub(entry.get("train_data") or ""):
                what = "an image folder" if kind == "latent" else "a local .npz file"
                raise PairError(name, f'"train_data" must be {what}, not a hub id.', "Point it at a local path.")
            sigma_n = entry.get("sigma_n")
            if sigma_n is not None and (
                isinstance(sigma_n, bool)
                or not isinstance(sigma_n, int | float)
                or not math.isfinite(sigma_n)
                or sigma_n <= 0
            ):
                raise PairError(name, f'"sigma_n" must be a positive number, got {sigma_n!r}.', "Fix or remove it.")
            copy_test = entry.get("copy_test", "similarity")
            if copy_test not in COPY_TESTS:
                raise PairError(
                    name, f'"copy_test" must be one of {list(COPY_TESTS)}, got {copy_test!r}.', "Fix or remove it."
                )
            for key in ("title", "text_model", "description"):
                if entry.get(key) is not None and not isinstance(entry[key], str):
                    raise PairError(name, f'"{key}" must be a string.', "Write it as a JSON string.")
            specs.append(
                PairSpec(
                    name=name,
                    kind=kind,
                    ambient=entry["ambient"].strip(),
                    baseline=entry["baseline"].strip(),
                    train_data=(entry.get("train_data") or "").strip(),
                    base_dir=base,
                    title=entry.get("title") or "",
                    index=entry.get("index"),
                    sweep=entry.get("sweep"),
                    sweep_plot=entry.get("sweep_plot"),
                    frontier=entry.get("frontier"),
                    reference_data=entry.get("reference_data"),
                    text_model=entry.get("text_model"),
                    sigma_n=None if sigma_n is None else float(sigma_n),
                    description=entry.get("description") or "",
                    copy_test=copy_test,
                    config_path=path,
                    **extra,
                )
            )
        except PairError as e:
            errors[e.pair] = e
    names = [s.name for s in specs]
    default = data.get("default")
    if default is None:
        default = names[0] if names else None
    elif not isinstance(default, str) or (default not in names and default not in errors):
        # an unknown default is refused, not swapped for another pair; a broken one stays the default, so the
        # app opens on its message
        raise ConfigError(f'"default" in {where} names {default!r}, which is not a pair there; known: {names}')
    return PairsConfig(specs, default, errors, path)


def load_config(path: str | Path) -> PairsConfig:
    """Read and parse a pairs.json file; ``ConfigError`` when the file itself is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not readable JSON: {e}") from e
    return parse_config(data, path.resolve().parent, path)


@dataclass
class ModelPair(Pair):
    """A loaded pair (``ambient.pair.Pair``) with what the app adds: its config entry, plots and frontier."""

    spec: PairSpec = None  # type: ignore[assignment]  # always set by load_pair
    sweep_plot: Path | None = None
    frontier: dict[str, Any] | None = None
    frontier_plot: Path | None = None
    latent: Any = None  # ambient.latent_pair.LatentPair for a latent pair: it samples and decodes

    @property
    def name(self) -> str:
        """The pair's config name."""
        return self.spec.name

    @property
    def default_steps(self) -> int:
        """The sampler steps the app starts with for this pair (its "steps", else a latent pair's own default)."""
        return self.spec.steps or (self.latent.default_steps if self.latent is not None else DEFAULT_STEPS)

    def index_input(self, images: Any) -> Any:
        """Generated images as the neighbour index takes them (a latent pair's are resized to the index's size)."""
        return images if self.latent is None else self.latent.for_index(images)

    def describe(self) -> str:
        """A markdown summary for the status panel."""
        c, h, w = self.image_shape
        cond = f"text-conditional ({self.text_model})" if self.cond_dim else "unconditional"
        sn = f"{self.sigma_n:g}" if self.sigma_n else "not recorded"
        lines = [
            f"**{self.spec.label}** ({self.spec.kind}): {len(self.train)} training images of {c}x{h}x{w}, {cond}; "
            f"Ambient training cutoff sigma_n = {sn}; sigma from {self.sigma_min:g} to {self.sigma_max:g}; "
            f"running on {self.device.upper()}."
        ]
        if self.upsample > 1:
            lines[0] = lines[0].replace(f"of {c}x{h}x{w}", "of {}x{}x{}".format(*self.data_shape))
            lines[0] += (
                f" The models were trained on these images upsampled {self.upsample} x {self.upsample} (each pixel "
                f"repeated, so the fixed noise holds {self.upsample**2} times the numbers) and sample at {h}x{w}; "
                f"their images are averaged back to {self.data_shape[1]}x{self.data_shape[2]} to be shown and "
                f"searched. Noise levels are on the {h}x{w} grid: averaging divides the noise by {self.upsample}, "
                f"so sigma_n = {sn} here is {self.sigma_n / self.upsample:g} on the training images."
                if self.sigma_n
                else "searched."
            )
        if self.latent is not None:
            lines[0] = lines[0].replace(f"training images of {c}x{h}x{w}", "training images")
            lines[0] += " " + self.latent.describe()
        if self.spec.description:
            lines.append(self.spec.description)
        lines += [f"- note: {w_}" for w_ in self.warnings]
        return "\n\n".join(lines[:2]) + ("\n" + "\n".join(lines[2:]) if len(lines) > 2 else "")


def _fix_for_model(spec: PairSpec, key: str) -> str:
    cfg = spec.config_path or "the config"
    if spec.kind == "latent":
        return (
            f'"{key}" must be a pipeline folder exported by `python -m ambient finetune` (its OUT/model: '
            "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ with safetensors weights, and "
            f"ambient_latent.json) or hub:owner/name when the machine is online; correct it in {cfg}."
        )
    if spec.kind == "edm":
        return (
            f"put a model folder written by EDMDenoiser.save_pretrained (ambient_config.json + unet/) at "
            f'"{getattr(spec, key)}", or correct "{key}" in {cfg}. For a quick random pair: '
            f"python scripts/make_tiny_pair.py <folder>."
        )
    return (
        f'"{key}" must be a diffusers DDPM pipeline folder (unet/ and scheduler/, safetensors weights, e.g. from '
        f"DDPMPipeline.save_pretrained) or hub:owner/name when the machine is online; correct it in {cfg}."
    )


class PathPolicy:
    """Resolves config paths and refuses any that lead outside the allowed folders."""

    def __init__(self, allowed_dirs: list[str | Path] | tuple[str | Path, ...] = ()):
        self.allowed = [Path(d).resolve() for d in allowed_dirs]

    def resolve(self, spec: PairSpec, key: str, value: str) -> Path:
        """The absolute path of ``value`` (relative to the config's folder), checked against the allowed folders."""
        if "\x00" in value:
            raise PairError(spec.name, f'"{key}" contains a NUL byte.', "Correct the path.")
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = spec.base_dir / p
        p = p.resolve()
        roots = [spec.base_dir.resolve(), *self.allowed]
        if not any(p == r or p.is_relative_to(r) for r in roots):
            raise PairError(
                spec.name,
                f'"{key}" ({value}) leads to {p}, outside the allowed folders ({", ".join(map(str, roots))}).',
                "Move the files under the config's folder, or start the app with --allow-dir <folder> "
                "(or AMBIENT_ALLOWED_DIRS) naming the folder that holds them.",
            )
        return p


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _model_location(spec: PairSpec, key: str, policy: PathPolicy) -> str:
    value: str = getattr(spec, key)
    if _is_hub(value):
        repo = value[len(HUB_PREFIX) :]
        if not HUB_RE.match(repo):
            raise PairError(spec.name, f'"{key}" ({value}) is not a hub id of the form hub:owner/name.', "Correct it.")
        if _hub_offline():
            raise PairError(
                spec.name,
                f'"{key}" is the hub id {repo}, but HF_HUB_OFFLINE=1: this machine may not download it.',
                "Run with internet access and HF_HUB_OFFLINE unset, or download the pipeline once "
                f'(huggingface-cli download {repo} --local-dir <folder>) and point "{key}" at that folder.',
            )
        return repo
    path = policy.resolve(spec, key, value)
    if not path.exists():
        raise PairError(spec.name, f"the {key} model folder {path} does not exist.", _fix_for_model(spec, key))
    if not path.is_dir():
        raise PairError(spec.name, f"the {key} model path {path} is a file, not a folder.", _fix_for_model(spec, key))
    return str(path)


def _load_model(spec: PairSpec, key: str, policy: PathPolicy) -> nn.Module:
    from ambient.denoiser import DDPMAdapter, EDMDenoiser

    where = _model_location(spec, key, policy)
    try:
        model = EDMDenoiser.from_pretrained(where) if spec.kind == "edm" else DDPMAdapter.from_pretrained(where)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:  # the messages name the file at fault
        msg = " ".join(str(e).split())[:500]
        raise PairError(spec.name, f"the {key} model could not be loaded: {msg}", _fix_for_model(spec, key)) from e
    return model.eval().requires_grad_(False)


def _load_npz(spec: PairSpec, key: str, policy: PathPolicy) -> Any:
    from ambient.data import load_npz

    path = policy.resolve(spec, key, getattr(spec, key))
    try:
        return load_npz(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # missing, truncated, not an npz
        msg = " ".join(str(e).split())[:300]
        raise PairError(
            spec.name,
            f'"{key}" ({path}) could not be read: {msg}',
            "Write the images with ImageDataset.save_npz (uint8 images, ids, labels), e.g. via "
            "python scripts/make_tiny_pair.py, or correct the path.",
        ) from e


def _read_sweep(spec: PairSpec, policy: PathPolicy, warnings: list[str]) -> tuple[dict[str, Any] | None, Path | None]:
    sweep, plot = None, None
    if spec.sweep:
        try:
            sweep = read_sweep(policy.resolve(spec, "sweep", spec.sweep))
        except (PairError, OSError, ValueError) as e:
            warnings.append(
                f"no precomputed sweep ({e}); the trade-off tab offers the live recompute only. "
                "Write one with `python -m ambient evaluate`."
            )
    if spec.sweep_plot:
        try:
            p = policy.resolve(spec, "sweep_plot", spec.sweep_plot)
            if not p.is_file():
                raise FileNotFoundError(f"{p} does not exist")
            plot = p
        except (PairError, OSError) as e:
            warnings.append(f"no sweep plot ({e}).")
    return sweep, plot


def _read_frontier(
    spec: PairSpec, policy: PathPolicy, warnings: list[str], n_train: int
) -> tuple[dict[str, Any] | None, Path | None]:
    from ambient.research.frontier import read_frontier

    if not spec.frontier:
        return None, None
    try:
        folder = policy.resolve(spec, "frontier", spec.frontier)
        data = read_frontier(folder)
        name = data.get("plots", {}).get(str(n_train))  # the plot at this pair's training-set size
        plot = folder / name if name else None
        if plot is None or not plot.is_file():
            warnings.append(f"the frontier has no plot for N = {n_train}.")
            plot = None
        return data, plot
    except (PairError, OSError, ValueError) as e:
        warnings.append(f"no frontier ({e}). Write one with `python scripts/frontier.py <pair folder>`.")
        return None, None


def load_pair(
    spec: PairSpec, allowed_dirs: list[str | Path] | tuple[str | Path, ...] = (), device: str = "cpu"
) -> ModelPair:
    """Load and cross-check everything a pair needs; ``PairError`` with a fix when anything is wrong."""
    policy = PathPolicy(allowed_dirs)
    if spec.kind == "latent":
        return _load_latent(spec, policy, device)
    warnings: list[str] = []
    ambient = _load_model(spec, "ambient", policy)
    baseline = _load_model(spec, "baseline", policy)
    try:
        check_models(ambient, baseline, spec.text_model, spec.sigma_n)  # before reading the training images
        train = _load_npz(spec, "train_data", policy)
        index = policy.resolve(spec, "index", spec.index) if spec.index else None
        core = assemble(ambient, baseline, train, index, spec.text_model, spec.sigma_n, device, warnings)
    except PairProblem as e:
        raise PairError(spec.name, e.problem, e.fix) from e
    reference = None
    if spec.reference_data:
        try:
            reference = _load_npz(spec, "reference_data", policy)
        except PairError as e:
            core.warnings.append(
                f"no held-out reference images ({e.problem}); the live sweep reports memorization only."
            )
    sweep, plot = _read_sweep(spec, policy, core.warnings)
    frontier, frontier_plot = _read_frontier(spec, policy, core.warnings, len(core.train))
    core.copy_test = spec.copy_test
    fields = {k: v for k, v in core.__dict__.items() if k not in ("sweep", "reference")}
    return ModelPair(
        **fields,
        sweep=sweep,
        reference=reference,
        spec=spec,
        sweep_plot=plot,
        frontier=frontier,
        frontier_plot=frontier_plot,
    )


def _load_latent(spec: PairSpec, policy: PathPolicy, device: str) -> ModelPair:
    """A latent pair (``ambient.latent_pair``): its pipelines, training image folder and index, as a ModelPair."""
    from ambient.latent import read_ambient_settings
    from ambient.latent_pair import DEFAULT_EMBEDDER, DEFAULT_INDEX_SIZE, load_latent_pair, resolve_latent_dir

    dirs = {}
    for key in ("ambient", "baseline"):
        where = _model_location(spec, key, policy)
        try:
            dirs[key] = resolve_latent_dir(where)
        except (OSError, ValueError) as e:
            msg = " ".join(str(e).split())[:500]
            raise PairError(
                spec.name, f"the {key} pipeline could not be found: {msg}", _fix_for_model(spec, key)
            ) from e
    data = spec.train_data
    if not data:
        try:
            data = read_ambient_settings(dirs["ambient"]).get("data") or ""
        except (OSError, ValueError) as e:
            raise PairError(
                spec.name, f"the ambient pipeline cannot be used: {e}", _fix_for_model(spec, "ambient")
            ) from e
        if not data:
            raise PairError(spec.name, "no training images are named.", 'Add "train_data": "<image folder>".')
    train = policy.resolve(spec, "train_data", data)
    index = policy.resolve(spec, "index", spec.index) if spec.index else None
    try:
        lp = load_latent_pair(
            dirs["ambient"],
            dirs["baseline"],
            train,
            index,
            spec.embedder or DEFAULT_EMBEDDER,
            spec.index_size or DEFAULT_INDEX_SIZE,
            device,
            spec.needs_gpu,
            spec.trajectory_points,
        )
    except PairProblem as e:
        raise PairError(spec.name, e.problem, e.fix) from e
    warnings = list(lp.warnings)
    sweep, plot = _read_sweep(spec, policy, warnings)
    frontier, frontier_plot = _read_frontier(spec, policy, warnings, len(lp.train))
    return ModelPair(
        ambient=lp.ambient,
        baseline=lp.baseline,
        train=lp.train,
        index=lp.index,
        image_shape=lp.image_shape,
        cond_dim=lp.cond_dim,
        sigma_min=lp.sigma_min,
        sigma_max=lp.sigma_max,
        sigma_n=spec.sigma_n or lp.sigma_n,
        regime="all",  # one network split at sigma_n: ambient.latent fine-tunes every noise level
        text_model="the pipelines' CLIP text encoder",
        copy_test=spec.copy_test,
        sweep=sweep,
        device=device,
        warnings=warnings,
        spec=spec,
        sweep_plot=plot,
        frontier=frontier,
        frontier_plot=frontier_plot,
        latent=lp,
    )


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
        self._pairs: dict[str, ModelPair] = {}
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

    def get(self, name: str | None = None) -> ModelPair:
        """The loaded pair (loading it on first use); ``PairError`` when it cannot be used."""
        name = name or self.default
        if not name:
            raise PairError(
                "(none)",
                self.config_error or "the config lists no model pairs.",
                "Start the app with --config <pairs.json> (see demo/pairs.py for the format), or create a tiny "
                "random pair with python scripts/make_tiny_pair.py <folder>.",
            )
        with self._lock:
            if name in self._pairs:
                return self._pairs[name]
            if name in self._errors:
                raise self._errors[name]
            spec = self.spec(name)
            if spec is None:
                raise PairError(name, "no pair of this name in the config.", f"Choose one of {self.names()}.")
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
