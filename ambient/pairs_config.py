"""pairs.json: the pairs an app (or a study) serves, parsed, checked and loaded into ``ambient.pair.Pair``.

Config format (paths relative to the config file's folder; ``hub:owner/name`` for a Hugging Face hub id)::

    {"default": "fmnist-100-highnoise",
     "pairs": [{"name": "fmnist-100-highnoise", "title": "Fashion-MNIST, 100 training images", "kind": "edm",
                "ambient": "fmnist-100/ambient_high", "baseline": "fmnist-100/baseline",
                "train_data": "fmnist-100/train.npz", "index": "fmnist-100/index",
                "sweep": "fmnist-100/eval_high/sweep.json", "sweep_plot": "fmnist-100/eval_high/sweep.png",
                "text_model": "all-MiniLM-L6-v2"}]}

Optional keys: ``sigma_n`` (else read from the Ambient model's config meta), ``reference_data`` (held-out
images, .npz, for the live quality score), ``summary`` (the headline result in one line), ``card`` (a markdown
file beside the models, relative to the config's folder: the long description; ``description``, markdown
inline, is its older form and still read). ``kind`` is ``edm`` (folders written by
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
512 px and above), ``needs_gpu`` (false). Any pair may set ``steps``, the sampler steps a request starts with
for it (18; 8 for a latent pair of 512 px and above), and ``copy_test``, the test behind its COPY marks:
``similarity`` (the default: cosine of the index's features above its threshold) or ``ratio`` (the pixel ratio
test of Gu et al., d1/d2 < 1/3, a near-exact copy); the other test is shown beside it.
Models trained on their images upsampled (``--upsample K``) pair with the images before upsampling: nothing in
the config says so, the models record it.

Anything wrong raises ``ambient.pair.PairError`` (the entry's name, what is wrong, how to fix it); a broken entry
leaves the others usable. Where a path may lead is the caller's policy: ``load_pair`` takes a ``resolve``
function (the app's refuses folders outside the allowed ones); the default resolves relative to the config.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ambient.memorization.verdicts import COPY_TESTS
from ambient.pair import Pair, PairError, assemble, check_models, read_sweep

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HUB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_PREFIX = "hub:"
KINDS = ("edm", "diffusers", "latent")
PATH_FIELDS = ("ambient", "baseline", "train_data", "index", "sweep", "sweep_plot", "frontier", "reference_data")
LATENT_KEYS = ("embedder", "index_size", "trajectory_points", "needs_gpu")
TEXT_KEYS = ("title", "text_model", "description", "summary", "card")
KNOWN_KEYS = {"name", "kind", "sigma_n", "steps", "copy_test", *TEXT_KEYS, *LATENT_KEYS, *PATH_FIELDS}
DEFAULT_STEPS = 18
MAX_STEPS = 200
MAX_SUMMARY_CHARS = 300
MAX_CARD_BYTES = 256 * 1024

Resolve = Callable[["PairSpec", str, str], Path]


def config_error(problem: str, fix: str = "") -> PairError:
    """The error of a config file that cannot be read as a whole (no entry to name)."""
    return PairError(problem, fix)


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
    summary: str = ""  # the headline result, one line
    card: str | None = None  # a markdown file beside the models (relative to the config's folder)

    @property
    def label(self) -> str:
        """What the pair dropdown shows."""
        return self.title or self.name

    @property
    def card_path(self) -> Path | None:
        """The card's absolute path (None when the entry names none)."""
        return None if not self.card else (self.base_dir / self.card).resolve()

    @property
    def card_text(self) -> str:
        """The long description: the card file's markdown, else ``description``; a card that cannot be read
        gives ``description`` (``read_card`` says why)."""
        try:
            return self.read_card()
        except PairError:
            return self.description

    def read_card(self) -> str:
        """The card's markdown (``description`` when the entry names no card); ``PairError`` when it cannot be
        read (missing, not UTF-8, larger than ``MAX_CARD_BYTES``)."""
        path = self.card_path
        if path is None:
            return self.description
        fix = f'Write the card as a UTF-8 markdown file at {self.card!r} beside the models, or remove "card".'
        try:
            if path.stat().st_size > MAX_CARD_BYTES:
                raise PairError(f'the card "{self.card}" is over {MAX_CARD_BYTES // 1024} KB.', fix, self.name)
            return path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise PairError(f'the card "{self.card}" cannot be read ({e.strerror or e}).', fix, self.name) from e
        except UnicodeDecodeError as e:
            raise PairError(f'the card "{self.card}" is not UTF-8 text ({e.reason}).', fix, self.name) from e


@dataclass
class PairsConfig:
    """A parsed config: the good entries, the broken ones (by name) and the default pair."""

    specs: list[PairSpec]
    default: str | None
    errors: dict[str, PairError] = field(default_factory=dict)
    path: Path | None = None


def is_hub(value: str) -> bool:
    """Whether a config value is a hub id (``hub:owner/name``)."""
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
            raise PairError(f'"steps" must be a whole number from 1 to {MAX_STEPS}, got {steps!r}.', "Fix it.", name)
        out["steps"] = steps
    given = [k for k in LATENT_KEYS if entry.get(k) is not None]
    if given and kind != "latent":
        raise PairError(f"{given} apply to latent pairs only.", 'Remove them, or set "kind": "latent".', name)
    checks = {
        "embedder": (lambda v: isinstance(v, str) and bool(v.strip()), "an embedder name"),
        "index_size": (lambda v: _is_int(v) and 8 <= v <= 1024, "a whole number of pixels from 8 to 1024"),
        "trajectory_points": (lambda v: _is_int(v) and 0 <= v <= MAX_STEPS, f"a whole number from 0 to {MAX_STEPS}"),
        "needs_gpu": (lambda v: isinstance(v, bool), "true or false"),
    }
    for key in given:
        ok, what = checks[key]
        if not ok(entry[key]):
            raise PairError(f'"{key}" must be {what}, got {entry[key]!r}.', "Fix or remove it.", name)
        out[key] = entry[key].strip() if key == "embedder" else entry[key]
    return out


def _check_texts(name: str, entry: dict[str, Any]) -> None:
    """``title``, ``text_model``, ``description``, ``summary`` and ``card`` are strings; a summary is one line,
    a card a relative .md path inside the config's folder."""
    for key in TEXT_KEYS:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise PairError(f'"{key}" must be a string.', "Write it as a JSON string.", name)
    summary = entry.get("summary") or ""
    if "\n" in summary or "\r" in summary or len(summary) > MAX_SUMMARY_CHARS:
        raise PairError(
            f'"summary" must be one line of at most {MAX_SUMMARY_CHARS} characters (the headline result).',
            'Shorten it; the long description goes into "card".',
            name,
        )
    card = entry.get("card")
    if card is not None:
        p = Path(card)
        if not card.strip() or p.is_absolute() or ".." in p.parts or "\x00" in card or p.suffix.lower() != ".md":
            raise PairError(
                f'"card" must be the relative path of a .md file inside the config\'s folder, got {card!r}.',
                'Put the card beside the models and name it relative to the config, e.g. "fmnist-100/card.md".',
                name,
            )


def _parse_entry(i: int, entry: Any, base: Path, path: Path | None, where: str) -> PairSpec:
    """One entry, checked; ``PairError`` naming it (or its position) otherwise."""
    label = f"#{i + 1}"
    if not isinstance(entry, dict):
        raise PairError(f"entry {i + 1} of {where} is not a JSON object.", "Write it as {...}.", label)
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PairError(
            f"entry {i + 1} has no valid name ({name!r}).",
            "Give it a name of letters, digits, '.', '_' or '-' (at most 64 characters).",
            label,
        )
    unknown = sorted(set(entry) - KNOWN_KEYS)
    if unknown:
        raise PairError(f"unknown keys {unknown}.", f"Use only {sorted(KNOWN_KEYS)}.", name)
    kind = entry.get("kind", "edm")
    if kind not in KINDS:
        raise PairError(f"kind {kind!r} is not supported.", f"Use one of {list(KINDS)}.", name)
    for key in ("ambient", "baseline") if kind == "latent" else ("ambient", "baseline", "train_data"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise PairError(f'"{key}" is missing.', f'Add "{key}": "<path relative to {where}>".', name)
    extra = _check_extra_keys(name, kind, entry)
    for key in PATH_FIELDS:
        if key in entry and entry[key] is not None and not isinstance(entry[key], str):
            raise PairError(f'"{key}" must be a string path.', "Write the path as a JSON string.", name)
    if is_hub(entry.get("train_data") or ""):
        what = "an image folder" if kind == "latent" else "a local .npz file"
        raise PairError(f'"train_data" must be {what}, not a hub id.', "Point it at a local path.", name)
    sigma_n = entry.get("sigma_n")
    if sigma_n is not None and (
        isinstance(sigma_n, bool) or not isinstance(sigma_n, int | float) or not math.isfinite(sigma_n) or sigma_n <= 0
    ):
        raise PairError(f'"sigma_n" must be a positive number, got {sigma_n!r}.', "Fix or remove it.", name)
    copy_test = entry.get("copy_test", "similarity")
    if copy_test not in COPY_TESTS:
        raise PairError(f'"copy_test" must be one of {list(COPY_TESTS)}, got {copy_test!r}.', "Fix or remove it.", name)
    _check_texts(name, entry)
    return PairSpec(
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
        summary=(entry.get("summary") or "").strip(),
        card=entry.get("card"),
        **extra,
    )


def parse_config(data: Any, base_dir: str | Path, path: Path | None = None) -> PairsConfig:
    """Check the structure of a config dict; entries with errors go to ``errors`` instead of ``specs``."""
    where = str(path) if path else "the config"
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise config_error(f'{where} must be a JSON object with a "pairs" list, e.g. {{"pairs": [{{"name": ...}}]}}')
    base = Path(base_dir)
    specs: list[PairSpec] = []
    errors: dict[str, PairError] = {}
    seen: set[str] = set()
    for i, entry in enumerate(data["pairs"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        try:
            if isinstance(name, str) and NAME_RE.match(name):
                if name in seen:
                    specs = [s for s in specs if s.name != name]
                    raise PairError(f"the name appears twice in {where}.", "Give every pair its own name.", name)
                seen.add(name)
            specs.append(_parse_entry(i, entry, base, path, where))
        except PairError as e:
            errors[e.pair or f"#{i + 1}"] = e
    names = [s.name for s in specs]
    default = data.get("default")
    if default is None:
        default = names[0] if names else None
    elif not isinstance(default, str) or (default not in names and default not in errors):
        # an unknown default is refused, not swapped for another pair; a broken one stays the default, so the
        # app opens on its message
        raise config_error(f'"default" in {where} names {default!r}, which is not a pair there; known: {names}')
    return PairsConfig(specs, default, errors, path)


def load_config(path: str | Path) -> PairsConfig:
    """Read and parse a pairs.json file; ``PairError`` when the file itself is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise config_error(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise config_error(f"{path} is not readable JSON: {e}") from e
    return parse_config(data, path.resolve().parent, path)


# ---------------------------------------------------------------- loading


def resolve_relative(spec: PairSpec, key: str, value: str) -> Path:
    """A config path made absolute (relative to the config's folder), with no restriction on where it leads."""
    if "\x00" in value:
        raise PairError(f'"{key}" contains a NUL byte.', "Correct the path.", spec.name)
    p = Path(value).expanduser()
    return (p if p.is_absolute() else spec.base_dir / p).resolve()


def fix_for_model(spec: PairSpec, key: str) -> str:
    """What to do about a model folder of an entry that cannot be used."""
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


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def model_location(spec: PairSpec, key: str, resolve: Resolve = resolve_relative) -> str:
    """Where a side's model is: a hub id (``owner/name``) or an existing local folder; ``PairError`` otherwise."""
    value: str = getattr(spec, key)
    if is_hub(value):
        repo = value[len(HUB_PREFIX) :]
        if not HUB_RE.match(repo):
            raise PairError(f'"{key}" ({value}) is not a hub id of the form hub:owner/name.', "Correct it.", spec.name)
        if _hub_offline():
            raise PairError(
                f'"{key}" is the hub id {repo}, but HF_HUB_OFFLINE=1: this machine may not download it.',
                "Run with internet access and HF_HUB_OFFLINE unset, or download the pipeline once "
                f'(huggingface-cli download {repo} --local-dir <folder>) and point "{key}" at that folder.',
                spec.name,
            )
        return repo
    path = resolve(spec, key, value)
    if not path.exists():
        raise PairError(f"the {key} model folder {path} does not exist.", fix_for_model(spec, key), spec.name)
    if not path.is_dir():
        raise PairError(f"the {key} model path {path} is a file, not a folder.", fix_for_model(spec, key), spec.name)
    return str(path)


def _load_model(spec: PairSpec, key: str, resolve: Resolve) -> nn.Module:
    from ambient.denoiser import DDPMAdapter, EDMDenoiser

    where = model_location(spec, key, resolve)
    try:
        model = EDMDenoiser.from_pretrained(where) if spec.kind == "edm" else DDPMAdapter.from_pretrained(where)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:  # the messages name the file at fault
        msg = " ".join(str(e).split())[:500]
        raise PairError(f"the {key} model could not be loaded: {msg}", fix_for_model(spec, key), spec.name) from e
    return model.eval().requires_grad_(False)


def _load_npz(spec: PairSpec, key: str, resolve: Resolve) -> Any:
    from ambient.data import load_npz

    path = resolve(spec, key, getattr(spec, key))
    try:
        return load_npz(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # missing, truncated, not an npz
        msg = " ".join(str(e).split())[:300]
        raise PairError(
            f'"{key}" ({path}) could not be read: {msg}',
            "Write the images with ImageDataset.save_npz (uint8 images, ids, labels), e.g. via "
            "python scripts/make_tiny_pair.py, or correct the path.",
            spec.name,
        ) from e


def _read_sweep(spec: PairSpec, resolve: Resolve, warnings: list[str]) -> tuple[dict[str, Any] | None, Path | None]:
    sweep, plot = None, None
    if spec.sweep:
        try:
            sweep = read_sweep(resolve(spec, "sweep", spec.sweep))
        except (OSError, ValueError) as e:  # PairError is a ValueError
            warnings.append(
                f"no precomputed sweep ({e}); the trade-off tab offers the live recompute only. "
                "Write one with `python -m ambient evaluate`."
            )
    if spec.sweep_plot:
        try:
            p = resolve(spec, "sweep_plot", spec.sweep_plot)
            if not p.is_file():
                raise FileNotFoundError(f"{p} does not exist")
            plot = p
        except (OSError, ValueError) as e:
            warnings.append(f"no sweep plot ({e}).")
    return sweep, plot


def _read_frontier(
    spec: PairSpec, resolve: Resolve, warnings: list[str], n_train: int
) -> tuple[dict[str, Any] | None, Path | None]:
    from ambient.research.frontier import read_frontier

    if not spec.frontier:
        return None, None
    try:
        folder = resolve(spec, "frontier", spec.frontier)
        data = read_frontier(folder)
        name = data.get("plots", {}).get(str(n_train))  # the plot at this pair's training-set size
        plot = folder / name if name else None
        if plot is None or not plot.is_file():
            warnings.append(f"the frontier has no plot for N = {n_train}.")
            plot = None
        return data, plot
    except (OSError, ValueError) as e:
        warnings.append(f"no frontier ({e}). Write one with `python scripts/frontier.py <pair folder>`.")
        return None, None


def load_pair(spec: PairSpec, resolve: Resolve = resolve_relative, device: str = "cpu") -> Pair:
    """Load and cross-check everything an entry needs, as one ``Pair``; ``PairError`` naming it otherwise."""
    try:
        pair = _load_latent(spec, resolve, device) if spec.kind == "latent" else _load_pixels(spec, resolve, device)
    except PairError as e:
        if e.pair == spec.name:
            raise
        raise e.named(spec.name) from e
    pair.spec = pair.spec or spec
    if spec.card:
        try:
            spec.read_card()
        except PairError as e:
            pair.warnings.append(f"no card ({e.problem})")
    pair.sweep, pair.sweep_plot = _read_sweep(spec, resolve, pair.warnings)
    pair.frontier, pair.frontier_plot = _read_frontier(spec, resolve, pair.warnings, len(pair.train))
    if spec.steps:
        pair.default_steps = spec.steps
    # the warnings are shown to visitors: paths under the config's folder are given relative to it
    root = str(spec.base_dir.resolve()) + os.sep
    pair.warnings[:] = [w.replace(root, "") for w in pair.warnings]
    return pair


def _load_pixels(spec: PairSpec, resolve: Resolve, device: str) -> Pair:
    warnings: list[str] = []
    ambient = _load_model(spec, "ambient", resolve)
    baseline = _load_model(spec, "baseline", resolve)
    check_models(ambient, baseline, spec.text_model, spec.sigma_n)  # before reading the training images
    train = _load_npz(spec, "train_data", resolve)
    index = resolve(spec, "index", spec.index) if spec.index else None
    pair = assemble(ambient, baseline, train, index, spec.text_model, spec.sigma_n, device, warnings)
    pair.copy_test, pair.spec = spec.copy_test, spec
    if spec.reference_data:
        try:
            pair.reference = _load_npz(spec, "reference_data", resolve)
        except PairError as e:
            pair.warnings.append(
                f"no held-out reference images ({e.problem}); the live sweep reports memorization only."
            )
    return pair


def _load_latent(spec: PairSpec, resolve: Resolve, device: str) -> Pair:
    """A latent pair (``ambient.latent_pair``): its pipelines, training image folder and index."""
    from ambient.latent import read_ambient_settings
    from ambient.latent_pair import DEFAULT_EMBEDDER, DEFAULT_INDEX_SIZE, load_latent_pair, resolve_latent_dir

    dirs = {}
    for key in ("ambient", "baseline"):
        where = model_location(spec, key, resolve)
        try:
            dirs[key] = resolve_latent_dir(where)
        except (OSError, ValueError) as e:
            msg = " ".join(str(e).split())[:500]
            raise PairError(f"the {key} pipeline could not be found: {msg}", fix_for_model(spec, key), spec.name) from e
    data = spec.train_data
    if not data:
        try:
            data = read_ambient_settings(dirs["ambient"]).get("data") or ""
        except (OSError, ValueError) as e:
            raise PairError(
                f"the ambient pipeline cannot be used: {e}", fix_for_model(spec, "ambient"), spec.name
            ) from e
        if not data:
            raise PairError("no training images are named.", 'Add "train_data": "<image folder>".', spec.name)
    train = resolve(spec, "train_data", data)
    index = resolve(spec, "index", spec.index) if spec.index else None
    pair = load_latent_pair(
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
    pair.sigma_n = spec.sigma_n or pair.sigma_n
    pair.copy_test, pair.spec = spec.copy_test, spec
    pair.info["base_dir"] = spec.base_dir
    return pair


# ---------------------------------------------------------------- what a visitor reads


def describe_pair(pair: Pair) -> str:
    """A markdown summary of a loaded pair for a status panel: what it is, its long description, its warnings."""
    c, h, w = pair.image_shape
    label = pair.label or "Model pair"
    kind = pair.spec.kind if pair.spec is not None else pair.kind
    cond = f"text-conditional ({pair.text_model})" if pair.cond_dim else "unconditional"
    sn = f"{pair.sigma_n:g}" if pair.sigma_n else "not recorded"
    of = "" if pair.kind == "latent" else f" of {c}x{h}x{w}"
    lines = [
        f"**{label}** ({kind}): {len(pair.train)} training images{of}, {cond}; "
        f"Ambient training cutoff sigma_n = {sn}; sigma from {pair.sigma_min:g} to {pair.sigma_max:g}; "
        f"running on {pair.device.upper()}."
    ]
    if pair.upsample > 1:
        lines[0] = lines[0].replace(f"of {c}x{h}x{w}", "of {}x{}x{}".format(*pair.data_shape))
        lines[0] += (
            f" The models were trained on these images upsampled {pair.upsample} x {pair.upsample} (each pixel "
            f"repeated, so the fixed noise holds {pair.upsample**2} times the numbers) and sample at {h}x{w}; "
            f"their images are averaged back to {pair.data_shape[1]}x{pair.data_shape[2]} to be shown and "
            f"searched. Noise levels are on the {h}x{w} grid: averaging divides the noise by {pair.upsample}, "
            f"so sigma_n = {sn} here is {pair.sigma_n / pair.upsample:g} on the training images."
            if pair.sigma_n
            else "searched."
        )
    if pair.kind == "latent":
        from ambient.latent_pair import describe_latent

        lines[0] += " " + describe_latent(pair)
    text = pair.card_text
    if text:
        lines.append(text)
    lines += [f"- note: {w_}" for w_ in pair.warnings]
    return "\n\n".join(lines[:2]) + ("\n" + "\n".join(lines[2:]) if len(lines) > 2 else "")
