"""Which classes a run's unconditional samples fall in: the default classifier's histogram, per snapshot.

A Frechet distance rises when samples over-represent some classes; this says whether they do. Each snapshot
samples the same seeds with the empty prompt (Heun, 18 steps, bf16 autocast, as the grids' empty-prompt scoring),
at its training images' size, and the shipped Fashion-MNIST classifier labels every sample.

Usage:
  python scripts/class_balance.py runs/n300_up2p2_baseline_pm-0.5_seed1 runs/n300_up2p2_ambient_s4_pm-0.5_seed1 \\
      --steps 9000 13500 --n 256
"""

from __future__ import annotations

import argparse
import sys

import torch

from ambient.denoiser import load_denoiser
from ambient.evaluate import encode_prompts, generate
from ambient.memorization.classifier import load_default_classifier, predict_logits


def class_histogram(images: torch.Tensor, classifier: torch.nn.Module, classes: int = 10) -> list[int]:
    """How many images the classifier puts in each class."""
    return torch.bincount(predict_logits(classifier, images).argmax(1), minlength=classes).tolist()


def main(argv: list[str] | None = None) -> int:
    """Print each run's class histogram at each step, and its largest class's share."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders with snapshots/step_NNNNNN")
    ap.add_argument("--steps", type=int, nargs="+", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=20_000, help="first seed (the empty-prompt grids' eval seed)")
    a = ap.parse_args(argv)
    clf = load_default_classifier()
    for run in a.runs:
        for step in a.steps:
            m = load_denoiser(f"{run}/snapshots/step_{step:06d}")
            cond = encode_prompts([""] * a.n, m.meta.get("text_model"), m.cond_dim)
            size = m.meta.get("train_config", {}).get("image_size")  # an upsampled run: labelled at its data's size
            x = generate(m, None, list(range(a.seed, a.seed + a.n)), cond, 18, bf16=True, size=size)
            h = class_histogram(x, clf)
            print(f"{run} step {step}: {h} largest class {100 * max(h) / a.n:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
