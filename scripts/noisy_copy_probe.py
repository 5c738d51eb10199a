"""Has a high-noise-only Ambient network memorized its fixed noisy copies x_tn = x0 + sigma_n eta?

Runs each model alone from sigma_max down to its sigma_n (EDM Heun) and takes the state x there, which the
network models as a draw from the noisy copies.  Scored by the pixel-L2 ratio test d1/d2 < 1/3 against the
noisy copies, and against the clean training images.  Control: held-out test images with fresh noise of
the same level.

Usage: python scripts/noisy_copy_probe.py runs/ambient_high/snapshots/step_001500 runs/ambient_high/model
           [--n 256] [--out assets/fmnist-100/studies/noisy_copy_probe.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ambient.data import heldout_reference, training_set_of
from ambient.denoiser import load_denoiser
from ambient.evaluate import encode_prompts, prompt_plan, write_json
from ambient.losses import fixed_noise
from ambient.memorization.neighbours import TrainingSetIndex
from ambient.research.studies import command_line
from ambient.sampling import initial_noise, karras_sigmas, sample_heun, truncate_sigmas


def ratio_rate(x: torch.Tensor, points: torch.Tensor, threshold: float = 1 / 3) -> tuple[float, float]:
    """Share of rows of x whose nearest point is 3x closer than the second nearest, and the median d1/d2."""
    ratios, _ = TrainingSetIndex(points, ratio_threshold=threshold).ratio_test(x)
    return float((ratios < threshold).mean()), float(np.median(ratios))


def main(argv: list[str] | None = None) -> int:
    """Score each model's state at sigma_n against its noisy copies and its clean training images."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path, help="high-noise-only model folders (snapshots or model/)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--out", type=Path, default=Path("assets/fmnist-100/studies/noisy_copy_probe.json"))
    a = p.parse_args(argv)
    held_out = heldout_reference(a.n)[1].images  # the control, once for all models: the evaluations' held-out half
    fresh = torch.randn(held_out.shape, generator=torch.Generator().manual_seed(0))
    seeds = list(range(a.seed, a.seed + a.n))
    rows = []
    for folder in a.models:
        model = load_denoiser(folder)
        meta = model.meta
        if meta.get("regime") != "high":
            p.error(f"{folder} is not a high-noise-only network (regime {meta.get('regime')!r})")
        sigma_n = float(meta["sigma_n"])
        train = training_set_of(folder)
        noisy = train.images + sigma_n * fixed_noise(train.ids, train.images.shape[1:], int(meta.get("seed", 0)))
        control = held_out + sigma_n * fresh
        prompts, _ = prompt_plan(a.n, meta.get("class_names"))
        cond = encode_prompts(prompts, meta.get("text_model"), model.cond_dim)
        sigmas = truncate_sigmas(karras_sigmas(a.steps), sigma_n)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            x = sample_heun(model, initial_noise(seeds, model.image_shape), sigmas, cond).float()
        row = {"model": str(folder), "steps": meta.get("steps"), "sigma_n": sigma_n, "n": a.n}
        row["vs_noisy_copies"], row["median_ratio_noisy"] = ratio_rate(x, noisy)
        row["vs_clean_images"], row["median_ratio_clean"] = ratio_rate(x, train.images)
        row["control_vs_noisy_copies"], row["control_median_ratio"] = ratio_rate(control, noisy)
        print(row, flush=True)
        rows.append(row)
    write_json({"rows": rows, "command": command_line()}, a.out)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
