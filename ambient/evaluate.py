"""Evaluation of a model pair: memorization, quality and prompt fidelity, and the sweep over sigma_c."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient.cutoff import Cutoff
from ambient.data import class_prompt
from ambient.denoiser import SIGMA_MAX, SIGMA_MIN
from ambient.images import save_grid
from ambient.sampling import autocast, sample

Progress = Callable[[float, str], None]


def prompt_plan(n: int, class_names: Sequence[str] | None, uncond_every: int = 11) -> tuple[list[str], list[int]]:
    """n prompts spread evenly over the classes, every ``uncond_every``-th one empty (class id -1)."""
    if n < 1:
        raise ValueError(f"need at least one sample, got {n}")
    if not class_names:
        return [""] * n, [-1] * n
    prompts, ids = [], []
    k = 0
    for i in range(n):
        if uncond_every and i % uncond_every == uncond_every - 1:
            prompts.append("")
            ids.append(-1)
        else:
            c = k % len(class_names)
            prompts.append(class_prompt(class_names[c]))
            ids.append(c)
            k += 1
    return prompts, ids


def encode_prompts(prompts: Sequence[str], text_model: str | None, cond_dim: int) -> torch.Tensor | None:
    """Conditioning vectors for the prompts (None for an unconditional model)."""
    if not cond_dim:
        return None
    if not text_model:
        raise ValueError("the model is text-conditional but names no text encoder")
    from ambient.text import get_text_encoder

    enc = get_text_encoder(text_model)
    if enc.dim != cond_dim:
        raise ValueError(f"text encoder {text_model} gives {enc.dim}-d vectors; the model expects {cond_dim}")
    return enc.encode(list(prompts))


@torch.no_grad()
def generate(
    ambient: Any,
    baseline: Any | None,
    seeds: Sequence[int],
    cond: torch.Tensor | None,
    steps: int = 18,
    sigma_c: float | Cutoff = 0.0,
    mode: str | None = None,
    guidance: float = 1.0,
    batch: int = 128,
    bf16: bool = False,
    progress: Progress | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """Samples for many seeds, in batches (same start noise per seed as any other batch); see ``sample``.

    ``size``: average the samples down to size x size (an upsampled pair's training images' side, ``Pair.to_data``).
    """
    from ambient.data import downsample_pixels

    shape = ambient.image_shape
    out = []
    for start in range(0, len(seeds), batch):
        s = list(seeds[start : start + batch])
        c = None if cond is None else cond[start : start + batch]
        with autocast("cpu", bf16):
            out.append(sample(ambient, baseline, s, shape, c, steps, sigma_c, mode, "heun", guidance))
        if progress is not None:
            progress(min(1.0, (start + len(s)) / len(seeds)), f"{start + len(s)}/{len(seeds)} samples")
    x = torch.cat(out).float()
    return x if size is None else downsample_pixels(x, size)


def score_samples(
    samples: torch.Tensor,
    index: Any,
    class_ids: Sequence[int] | None = None,
    reference: torch.Tensor | None = None,
    classifier: Any = None,
    thresholds: Sequence[float] = (0.9, 0.95),
) -> dict[str, Any]:
    """Memorization (both verdicts), Frechet distance to ``reference`` and prompt fidelity of samples."""
    from ambient.memorization import metrics

    row: dict[str, Any] = {"n": len(samples)}
    row.update(metrics.memorization_report(samples, index, thresholds))
    if reference is not None:
        row.update(metrics.frechet_report(samples, reference, classifier))
        if row.get("rate_ratio") is not None:
            row.update(metrics.novel_frechet_report(samples, index, reference, classifier))
    if class_ids is not None and any(c >= 0 for c in class_ids):
        row["prompt_fidelity"] = metrics.prompt_fidelity(samples, list(class_ids), classifier)["accuracy"]
    return row


def log_cutoffs(n: int, lo: float = SIGMA_MIN, hi: float = SIGMA_MAX, extra: Sequence[float] = ()) -> list[Cutoff]:
    """n hand-over cutoffs log-spaced over [lo, hi], plus ``extra`` ones, then ``Cutoff.baseline_alone()``."""
    if n < 2:
        raise ValueError("a sweep needs at least 2 cutoffs")
    vals = np.exp(np.linspace(math.log(lo), math.log(hi), n)).tolist()
    vals = sorted({min(max(round(v, 6), lo), hi) for v in [*vals, *extra]})  # rounding never leaves [lo, hi]
    return [*(Cutoff(v) for v in vals), Cutoff.baseline_alone()]


def nearest_along(index: Any, estimates: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest training image of every step's estimate x0_hat: (similarity, position) arrays of shape
    (steps, batch), from one index search over all of them."""
    if not estimates:
        return np.zeros((0, 0)), np.zeros((0, 0), dtype=np.int64)
    n = len(estimates[0])
    stack = torch.cat([d.detach().float().cpu() for d in estimates]).clamp(-1, 1)
    sims, pos = index.search(stack, 1)
    return np.asarray(sims).reshape(len(estimates), n), np.asarray(pos).reshape(len(estimates), n)


def copy_trajectory(
    pair: Any,
    seed: int,
    prompt: str = "",
    steps: int = 18,
    cutoff: Cutoff | None = None,
    side: str = "ambient",
    sampler: str = "heun",
) -> list[dict[str, Any]]:
    """Nearest-training-image similarity of x0_hat at every sampling step of one seed of a pair's side (the
    moment of copying): ``Pair.trajectories`` of a one-image run, every step recorded."""
    cut = cutoff or Cutoff.ambient_alone()
    records: list[tuple[float, torch.Tensor]] = []
    keep = set(pair.record_steps(pair.steps_of(steps, cut) if side == "ambient" else steps, None))

    def cb(info: dict[str, Any]) -> None:
        if pair.trajectory_points is None or int(info["i"]) in keep:
            records.append((float(info["sigma"]), pair.codec.to_index(pair.codec.decode(info["denoised"]))))

    pair.sample([seed], pair.prompts.cond(prompt, 1), steps, cut, 1.0, side, cb, sampler=sampler)
    rows = pair.trajectories(records, cut, side)
    return rows[0] if rows else []


def plot_sweep(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    sigma_n: float | None = None,
    reference: dict[str, Any] | None = None,
    title: str = "",
    sigma_max: float = SIGMA_MAX,
) -> Path:
    """Memorization rate and Frechet distance against sigma_c, as a PNG (the baseline-alone row just past
    ``sigma_max``, the top of the pair's range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = sweep_positions(rows, sigma_max)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, style in (("0.95", "-o"), ("0.9", "--o")):
        if all(key in r.get("rate_similarity", {}) for r in rows):
            a1.plot(sc, [100 * r["rate_similarity"][key] for r in rows], style, label=f"cosine > {key}")
    a1.plot(sc, [100 * r["rate_ratio"] for r in rows], "-s", label="ratio d1/d2 < 1/3")
    if reference:
        a1.axhline(
            100 * reference["rate_similarity"].get("0.95", 0), color="gray", ls=":", label="held-out, cos > 0.95"
        )
    a1.set_ylabel("memorized samples (%)")
    if any("frechet_distance" in r for r in rows):
        a2.plot(sc, [r.get("frechet_distance", float("nan")) for r in rows], "-o", color="C3")
    a2.set_ylabel("Frechet distance (fmnist-cnn features)")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("sigma_c (Ambient above, baseline below)")
        if sigma_n:
            ax.axvline(sigma_n, color="k", lw=0.8, ls="--")
            ax.text(sigma_n, ax.get_ylim()[1], " sigma_n", va="top", fontsize=8)
    a1.legend(fontsize=8)
    fig.suptitle(title or "Hand-over sweep: left end = Ambient alone, right end = baseline alone")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_positions(rows: Sequence[dict[str, Any]], sigma_max: float = SIGMA_MAX) -> list[float]:
    """Where each sweep row goes on a log sigma_c axis: the baseline-alone row just past sigma_max."""
    return [sigma_max * 1.01 if Cutoff.from_row(r, sigma_max).is_baseline_alone else float(r["sigma_c"]) for r in rows]


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (``ambient.io.write_json_atomic``)."""
    from ambient.io import write_json_atomic

    return write_json_atomic(path, obj)


def is_latent_folder(path: str | Path) -> bool:
    """Whether a model folder is a fine-tuned latent pipeline (its sidecar records type "latent"), not a pixel
    model."""
    from ambient.latent import read_ambient_settings

    try:
        read_ambient_settings(path)
    except (OSError, ValueError):
        return False
    return True


def open_pair(
    ambient_dir: str | Path,
    baseline_dir: str | Path,
    pair_dir: str | Path | None = None,
    embedder: str | None = None,
    device: str = "cpu",
) -> Any:
    """The ``Pair`` of two model folders, loaded as the app loads it: pixel models with ``pair_dir``'s
    ``train.npz`` and ``index/``; fine-tuned latent pipelines with the training images their
    ``ambient_latent.json`` names and the index in ``pair_dir/index`` (built and saved there the first time)."""
    if is_latent_folder(ambient_dir) or is_latent_folder(baseline_dir):
        from ambient.latent_pair import DEFAULT_EMBEDDER, load_latent_pair

        index = Path(pair_dir) / "index" if pair_dir is not None else None
        return load_latent_pair(ambient_dir, baseline_dir, None, index, embedder or DEFAULT_EMBEDDER, device=device)
    from ambient.pair import load_pair

    if pair_dir is None:
        raise ValueError("a pixel pair needs its pair folder (train.npz and index/ from `python -m ambient index`)")
    pair_dir = Path(pair_dir)
    return load_pair(ambient_dir, baseline_dir, pair_dir / "train.npz", pair_dir / "index", device=device)


def evaluate_pair(
    ambient_dir: str | Path,
    baseline_dir: str | Path,
    pair_dir: str | Path | None,
    out: str | Path,
    n: int = 1000,
    sweep_n: int = 256,
    sweep_points: int = 9,
    sweep_min: float | None = None,
    steps: int = 18,
    guidance: float = 1.0,
    seed: int = 10_000,
    bf16: bool = True,
    progress: Progress | None = None,
    embedder: str | None = None,
) -> dict[str, Any]:
    """The full comparison behind the README table and the app's trade-off tab (pixel or latent pair, see
    ``open_pair``); writes report/sweep JSON and PNG."""
    pair = open_pair(ambient_dir, baseline_dir, pair_dir, embedder)
    extra = {"ambient": str(ambient_dir), "baseline": str(baseline_dir)}
    return evaluate_loaded(pair, out, n, sweep_n, sweep_points, sweep_min, steps, guidance, seed, bf16, progress, extra)


def evaluate_loaded(
    pair: Any,
    out: str | Path,
    n: int = 1000,
    sweep_n: int = 256,
    sweep_points: int = 9,
    sweep_min: float | None = None,
    steps: int = 18,
    guidance: float = 1.0,
    seed: int = 10_000,
    bf16: bool = True,
    progress: Progress | None = None,
    settings_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``evaluate_pair`` on a loaded ``ambient.pair.Pair``: both sides at the Ambient model's own cutoff, then
    the hand-over sweep over the pair's sigma range; writes report.json, sweep.json, sweep.png and sample grids."""
    import time

    from ambient.data import heldout_reference

    t0 = time.perf_counter()
    out = Path(out)
    index = pair.index
    meta = getattr(pair.ambient, "meta", {}) or {}
    class_names = meta.get("class_names")
    prompts, class_ids = prompt_plan(n, class_names)
    cond = pair.prompts.encode(prompts)
    seeds = list(range(seed, seed + n))

    reference = None
    ref_row: dict[str, Any] = {}
    if str(meta.get("dataset", "")).startswith("fashion-mnist"):
        ref, held_out = heldout_reference(n)
        reference = ref.images
        ref_row = score_samples(held_out.images, index, held_out.labels.tolist(), reference)
        ref_row["what"] = "held-out Fashion-MNIST test images (the creative reference)"

    # A high-noise-only Ambient network is untrained below its sigma_n: "Ambient" then means the hand-over
    # to the baseline at sigma_c = sigma_n (method.md, "Two ways", 2); a one-network model runs alone.
    sigma_n = pair.sigma_n
    high_only = pair.regime == "high"
    amb_cut = pair.default_cutoff()
    rows = {"reference": ref_row}
    for name, cut in (("baseline", Cutoff.ambient_alone()), ("ambient", amb_cut)):
        x = pair.generate(seeds, cond, steps, cut, guidance, side=name, bf16=bf16, progress=progress)
        rows[name] = score_samples(x, index, class_ids, reference)
        save_grid(x[:64], out / f"samples_{name}.png", ncol=16)

    extra = [sigma_n] if sigma_n else []
    lo = sweep_min or (float(sigma_n) if high_only else pair.sigma_min)
    cutoffs = log_cutoffs(sweep_points, lo, pair.sigma_max, extra)
    s_prompts, s_ids = prompt_plan(sweep_n, class_names)
    sweep = pair.sweep_cutoff(
        cutoffs,
        list(range(seed, seed + sweep_n)),
        s_prompts,
        steps,
        s_ids,
        reference,
        guidance=guidance,
        bf16=bf16,
        progress=progress,
    )
    settings = {
        **(settings_extra or {}),
        "kind": pair.kind,
        "n": n,
        "sweep_n": sweep_n,
        "steps": steps,
        "sampler": "heun",
        "guidance": guidance,
        "seed": seed,
        "bf16": bf16,
        "embedder": index.embedder.name,
        "threshold": index.threshold,
        "ratio_threshold": index.ratio_threshold,
        "sigma_n": sigma_n,
        "upsample": pair.upsample,
        "ambient_regime": pair.regime,
        "ambient_sigma_c": amb_cut.sigma_c,
        "quality": "Frechet distance in fmnist-cnn penultimate features vs held-out test images (not FID)",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if reference is None:
        settings["quality"] = "none: no held-out reference images for this pair (memorization only)"
    report = {**rows, "sweep": sweep, "settings": settings}
    write_json(report, out / "report.json")
    write_json({"sweep": sweep, "reference": ref_row, **settings}, out / "sweep.json")
    plot_sweep(sweep, out / "sweep.png", sigma_n, ref_row or None, sigma_max=pair.sigma_max)
    return report
