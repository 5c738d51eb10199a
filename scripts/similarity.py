"""Per-sample nearest-training-image figures of a pair, beside held-out real images: the similarity histogram's data.

Requests of 8 images go through ``Pair.side_by_side`` at the app's defaults (empty prompt, the app's solver and
its starting steps, the pair's default cutoff, hand-over), as the Generate button sends them. For every sample the
verdict the app shows is kept: the pixel ratio d1/d2 of the ratio test and the cosine of its nearest training image.
Held-out Fashion-MNIST test images (never trained on) are scored against the same training set the same way:
the honest reference for "an unseen image". The Frechet distance of each side's novel samples (those the ratio
test does not call copies) is measured too (``ambient.memorization.metrics.novel_frechet_report``, against as
many held-out images): what each side creates when it does not copy.

Usage:
  python scripts/similarity.py --pair fmnist-100-64-seed1 --n 256 \
      --out assets/fmnist-100/eval_up2_s4_seed1/similarity.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ambient.pair import DEFAULT_SAMPLER

FIRST_SEED = 8_811_000  # used nowhere else in the repository
REQUEST_IMAGES = 8  # images a side in one request, as the app's largest (and the batches of the shipped figures)


def _figures(verdicts: list) -> dict[str, list[float]]:
    """Per-sample ratio d1/d2 and nearest cosine, rounded for a small JSON."""
    return {
        "ratio": [round(float(v.ratio), 4) for v in verdicts],
        "cosine": [round(float(v.similarity), 4) for v in verdicts],
    }


def measure(pair: Any, n: int, seed: int, sampler: str = DEFAULT_SAMPLER, bf16: bool | None = None) -> dict:
    """n samples a side at the app's defaults, and n held-out test images, scored alike."""
    from ambient.data import from_uint8, heldout_reference, to_uint8
    from ambient.memorization.metrics import bootstrap_rate_ci, novel_frechet_report
    from ambient.training import cpu_has_bf16

    bf16 = cpu_has_bf16() if bf16 is None else bf16  # as the app samples
    steps = pair.start_steps(sampler)  # where the app's step slider starts
    cutoff = pair.default_cutoff()
    images: dict[str, list[torch.Tensor]] = {"ambient": [], "baseline": []}
    for start in range(0, n, REQUEST_IMAGES):
        seeds = list(range(seed + start, seed + min(n, start + REQUEST_IMAGES)))
        r = pair.side_by_side(seeds, "", steps, cutoff, trajectory_points=0, bf16=bf16, sampler=sampler)
        images["ambient"].append(r.ambient.float().cpu())
        images["baseline"].append(r.baseline.float().cpu())
    c = pair.data_shape[0]
    reference, held_out = heldout_reference(n, size=pair.data_shape[-1])  # as every shipped evaluation
    out: dict = {
        "pair": pair.name,
        "cutoff": cutoff.label(),
        "n": n,
        "sampler": sampler,
        "steps": steps,
        "first_seed": seed,
        "ratio_threshold": float(getattr(pair.index, "ratio_threshold", 1 / 3)),
        "cosine_threshold": float(getattr(pair.index, "threshold", 0.95)),
        "held_out": {
            "what": "held-out Fashion-MNIST test images, never trained on (ambient.data.heldout_reference)",
            **_figures(pair.verdicts(held_out.images[:, :c], k=1)),
        },
    }
    for side, batches in images.items():
        x = torch.cat(batches)
        verdicts = pair.verdicts(pair.index_input(x))
        k = sum(v.copy_by_ratio for v in verdicts)
        shown = from_uint8(to_uint8(x))  # the 8-bit images the app shows
        novel = novel_frechet_report(shown[:, :c], pair.index, reference.images[:, :c])  # against as many images
        out[side] = {
            **_figures(verdicts),
            "rate_ratio": k / len(verdicts),
            "rate_ratio_ci95": list(bootstrap_rate_ci(k, len(verdicts))),
            "novel_n": novel["n_novel"],
            "novel_frechet_distance": novel["frechet_novel"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate, score, write the JSON, print one line a side."""
    from ambient.evaluate import write_json
    from ambient.pair import PairError
    from ambient.pairs_config import load_config, load_pair
    from ambient.research.studies import command_line, git_commit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("assets/pairs.json"), help="the app's pairs config")
    p.add_argument("--pair", default=None, help="pair name (default: the config's default pair)")
    p.add_argument("--n", type=int, default=256, help="samples a side, and held-out images (a multiple of 8)")
    p.add_argument("--seed", type=int, default=FIRST_SEED, help="first seed")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    if a.n < 8:
        p.error("--n must be at least 8")
    config = load_config(a.config)
    name = a.pair or config.default
    spec = next((s for s in config.specs if s.name == name), None)
    if spec is None:
        p.error(f"no pair {name!r} in {a.config}; it has {', '.join(s.name for s in config.specs)}")
    try:
        pair = load_pair(spec)
    except PairError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    out = measure(pair, a.n, a.seed)
    out |= {"seconds": round(time.perf_counter() - t0, 1), "commit": git_commit(), "command": command_line()}
    write_json(out, a.out)
    for side in ("baseline", "ambient"):
        s = out[side]
        fd = s["novel_frechet_distance"]
        novel = f", its {s['novel_n']} novel samples' Frechet distance {fd:.2f}" if fd is not None else ""
        print(f"{side:9s} ratio test {100 * s['rate_ratio']:.1f} %{novel}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
