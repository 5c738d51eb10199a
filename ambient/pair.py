"""What a model pair is, and how one is loaded and cross-checked: evaluation and the app build pairs here.

A pair is an Ambient model and a baseline trained on the same images, those training images with their
nearest-neighbour index, the sigma range both cover, the Ambient model's training cutoff sigma_n and
regime (so the right sampling cutoff can be chosen), and optionally the shipped sigma_c sweep and
held-out reference images. Models trained on their images upsampled (``--upsample K``: each pixel repeated,
a finer noise grid over the same content) sample at K times the side; ``Pair.to_data`` averages their
images back to the training images' size, where they are searched, scored and shown. Anything inconsistent
raises ``PairProblem``, which says what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ambient.cutoff import Cutoff

INDEX_FIX = (
    "Rebuild it from the training images: TrainingSetIndex(images, ids).save(folder) "
    "(python -m ambient index, or python scripts/make_tiny_pair.py for a tiny pair)."
)


class PairProblem(ValueError):
    """A pair that cannot be used: ``problem`` says what is wrong, ``fix`` what to do."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(f"{problem} {fix}".strip())
        self.problem, self.fix = problem, fix


class OnDevice(nn.Module):
    """Runs a CPU-facing denoiser on another device: inputs move there, outputs come back to the CPU."""

    def __init__(self, model: nn.Module, device: str):
        super().__init__()
        self.model, self.device = model.to(device), torch.device(device)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the wrapped model's images."""
        return tuple(self.model.image_shape)  # type: ignore[return-value]

    @property
    def cond_dim(self) -> int:
        """The wrapped model's conditioning width."""
        return int(getattr(self.model, "cond_dim", 0))

    @property
    def meta(self) -> dict[str, Any]:
        """The wrapped model's config meta."""
        return dict(getattr(self.model, "meta", {}) or {})

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """D(x, sigma, cond) computed on the device."""
        s = torch.as_tensor(sigma).to(self.device)
        c = None if cond is None else cond.to(self.device)
        return self.model(x.to(self.device), s, c).to(x.device)


@dataclass
class Pair:
    """A loaded, cross-checked model pair."""

    ambient: Any
    baseline: Any
    train: Any  # ambient.data.ImageDataset
    index: Any  # ambient.memorization.neighbours.TrainingSetIndex
    image_shape: tuple[int, int, int]
    cond_dim: int
    sigma_min: float
    sigma_max: float
    sigma_n: float | None = None
    regime: str = "all"  # the Ambient model's: "high" = trained only at sigma >= sigma_n
    upsample: int = 1  # the models sample at this many times the training images' side
    copy_test: str = "similarity"  # the test behind a verdict's is_copy: "similarity" or "ratio"
    text_model: str | None = None
    sweep: dict[str, Any] | None = None
    reference: Any = None
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the training images: the size at which samples are searched, scored and shown."""
        c, h, w = self.image_shape
        return (c, h // self.upsample, w // self.upsample)

    def to_data(self, images: torch.Tensor) -> torch.Tensor:
        """Samples (or x0_hat estimates) at the training images' size: each upsample x upsample block averaged."""
        from ambient.data import downsample_pixels

        return downsample_pixels(images, self.data_shape[-1])

    def verdicts(self, images: torch.Tensor, k: int = 5) -> list[Any]:
        """Nearest training images and copy verdicts of images at the training images' size, by the pair's test."""
        return self.index.verdicts(images, k=k, primary=self.copy_test)

    def default_cutoff(self) -> Cutoff:
        """The cutoff the Ambient model was trained for (hand-over at sigma_n for a high-noise-only one)."""
        return Cutoff.default_for(self.regime, self.sigma_n)


def check_models(
    ambient: Any, baseline: Any, text_model: str | None = None, sigma_n: float | None = None
) -> dict[str, Any]:
    """Cross-check two denoisers; returns image_shape, cond_dim, text_model, sigma_n, regime, the common sigma
    range and warnings. Raises ``PairProblem`` when they cannot be paired."""
    shape_a, shape_b = tuple(ambient.image_shape), tuple(baseline.image_shape)
    if shape_a != shape_b:
        raise PairProblem(
            f"the two models make images of different shapes: ambient {shape_a}, baseline {shape_b}.",
            "Pair models trained on the same data at the same resolution.",
        )
    cond_a, cond_b = int(getattr(ambient, "cond_dim", 0)), int(getattr(baseline, "cond_dim", 0))
    if cond_a != cond_b:
        raise PairProblem(
            f"the models take different conditioning widths: ambient {cond_a}, baseline {cond_b}.",
            "Train both with the same text encoder (or both unconditional).",
        )
    meta = getattr(ambient, "meta", {}) or {}
    text_model = text_model or meta.get("text_model") or None
    if cond_a and not text_model:
        raise PairProblem(
            f"the models are text-conditional ({cond_a}-d) but no text encoder is named.",
            'Add "text_model": "all-MiniLM-L6-v2" (or the encoder they were trained with) to the pair.',
        )
    warnings = []
    sigma_n = sigma_n if sigma_n is not None else meta.get("sigma_n")
    if not isinstance(sigma_n, int | float) or isinstance(sigma_n, bool) or not math.isfinite(sigma_n) or sigma_n <= 0:
        sigma_n = None
        warnings.append('the Ambient model records no training cutoff sigma_n (set "sigma_n" in the config).')
    regime = meta.get("regime") or "all"
    if regime == "high" and not sigma_n:
        raise PairProblem(
            "the Ambient model is high-noise-only but records no sigma_n, so no cutoff can be chosen for it.",
            'Set "sigma_n" in the config to the value it was trained with.',
        )
    return {
        "image_shape": shape_a,
        "cond_dim": cond_a,
        "text_model": text_model if cond_a else None,
        "sigma_n": float(sigma_n) if sigma_n else None,
        "regime": regime,
        "sigma_min": max(float(getattr(m, "sigma_min", 0.002)) for m in (ambient, baseline)),
        "sigma_max": min(float(getattr(m, "sigma_max", 80.0)) for m in (ambient, baseline)),
        "warnings": warnings,
    }


def recorded_upsample(model: Any) -> int:
    """The upsampling factor a model was trained at, from its config meta's ``train_config`` (1 when none)."""
    meta = getattr(model, "meta", {}) or {}
    k = (meta.get("train_config") or {}).get("upsample", 1)
    return k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else 1


def data_factor(models: tuple[Any, Any], model_shape: tuple[int, ...], data_shape: tuple[int, ...]) -> int:
    """How many times the training images' side the models sample at (1: the same size); ``PairProblem`` when
    the training images do not fit the models, or a larger model side is not one both models were trained at."""
    (c, h, w), (dc, dh, dw) = model_shape, data_shape
    k = h // dh if dh and dw and h % dh == 0 and w % dw == 0 and h // dh == w // dw else 0
    if c != dc or k < 1:
        raise PairProblem(
            f"the training images are {tuple(data_shape)} but the models make {tuple(model_shape)}.",
            '"train_data" must hold the images the models were trained on, at the same size and channels.',
        )
    recorded = [recorded_upsample(m) for m in models]
    if recorded != [k, k]:
        raise PairProblem(
            f"the models make {tuple(model_shape)} images from {tuple(data_shape)} training images, but they record "
            f"training at upsample {recorded[0]} (ambient) and {recorded[1]} (baseline), not {k}.",
            '"train_data" must hold the images the models were trained on; models trained with --upsample K '
            "record it in their config and pair with the images before upsampling.",
        )
    return k


def load_index(path: str | Path | None, train: Any, warnings: list[str] | None = None) -> Any:
    """The training set's saved index at ``path``, or one built in memory when ``path`` is None."""
    from ambient.memorization.neighbours import TrainingSetIndex

    if path is None:
        if warnings is not None:
            warnings.append("no index in the config: built one in memory (pixels embedder).")
        return TrainingSetIndex(train.images, list(train.ids))
    path = Path(path)
    if not path.is_dir():
        raise PairProblem(f"the nearest-neighbour index folder {path} does not exist.", INDEX_FIX)
    try:
        index = TrainingSetIndex.load(path, train.images)
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # faiss raises RuntimeError on a corrupt file
        msg = " ".join(str(e).split())[:300]
        raise PairProblem(f"the index at {path} could not be loaded: {msg}", INDEX_FIX) from e
    if len(index) != len(train):
        raise PairProblem(
            f"the index holds {len(index)} images but train_data holds {len(train)}.",
            "Rebuild the index from this train_data.",
        )
    return index


def read_sweep(path: str | Path) -> dict[str, Any]:
    """A sigma_c sweep JSON (``python -m ambient evaluate`` writes one); ValueError when it is not one."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = data.get("sweep") if isinstance(data, dict) else None
    if (
        not isinstance(rows, list)
        or not rows
        or not all(
            isinstance(r, dict) and "sigma_c" in r and isinstance(r["sigma_c"], int | float | None) for r in rows
        )
    ):
        raise ValueError('it needs a non-empty "sweep" list of rows with a "sigma_c" (a number, or null)')
    return data


def assemble(
    ambient: Any,
    baseline: Any,
    train: Any,
    index: str | Path | None = None,
    text_model: str | None = None,
    sigma_n: float | None = None,
    device: str = "cpu",
    warnings: list[str] | None = None,
) -> Pair:
    """A ``Pair`` from two loaded denoisers and their training images (the index loaded from ``index``, or built)."""
    checked = check_models(ambient, baseline, text_model, sigma_n)
    warnings = [*(warnings or []), *checked.pop("warnings")]
    upsample = data_factor((ambient, baseline), checked["image_shape"], tuple(train.images.shape[1:]))
    idx = load_index(index, train, warnings)
    if device != "cpu":
        ambient, baseline = OnDevice(ambient, device), OnDevice(baseline, device)
    return Pair(ambient, baseline, train, idx, device=device, warnings=warnings, upsample=upsample, **checked)


def load_pair(
    ambient_dir: str | Path,
    baseline_dir: str | Path,
    train_data: str | Path,
    index: str | Path | None = None,
    sweep: str | Path | None = None,
    text_model: str | None = None,
    device: str = "cpu",
) -> Pair:
    """Load a pair from its folders (models from ``save_pretrained`` or pipelines, ``train.npz``, ``index/``)."""
    from ambient.data import load_npz
    from ambient.denoiser import load_denoiser

    amb = load_denoiser(ambient_dir).eval().requires_grad_(False)
    base = load_denoiser(baseline_dir).eval().requires_grad_(False)
    pair = assemble(amb, base, load_npz(train_data), index, text_model, device=device)
    if sweep is not None:
        pair.sweep = read_sweep(sweep)
    return pair
