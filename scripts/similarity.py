"""Per-sample nearest-training-image figures of a pair, beside held-out real images: the similarity histogram's data.

Requests of 8 images go through ``demo.handlers.Handlers.generate`` at the app's defaults (empty prompt, the
pair's default steps and cutoff, hand-over), as the Generate button sends them. For every sample the verdict
the app shows is kept: the pixel ratio d1/d2 of the ratio test and the cosine of its nearest training image.
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

import torch

FIRST_SEED = 8_811_000  # used nowhere else in the repository


def _figures(verdicts: list) -> dict[str, list[float]]:
    """Per-sample ratio d1/d2 and nearest cosine, rounded for a small JSON."""
    return {
        "ratio": [round(float(v.ratio), 4) for v in verdicts],
        "cosine": [round(float(v.similarity), 4) for v in verdicts],
    }


def measure(H, pair_name: str | None, n: int, seed: int) -> dict:  # noqa: ANN001
    """n samples a side through ``H.generate`` at the UI's defaults, and n held-out test images, scored alike."""
    from ambient.data import heldout_reference
    from ambient.memorization.metrics import bootstrap_rate_ci, novel_frechet_report
    from demo.handlers import MAX_IMAGES, default_steps

    pair = H.pair(pair_name)
    sides: dict[str, list] = {"ambient": [], "baseline": []}
    cutoff = None
    steps = default_steps(pair, H.sampler)  # where the app's step slider starts
    for start in range(0, n, MAX_IMAGES):
        r = H.generate(pair.name, "", seed + start, min(MAX_IMAGES, n - start), steps)
        cutoff = r.cutoff
        sides["ambient"] += r.ambient
        sides["baseline"] += r.baseline
    c = pair.data_shape[0]
    reference, held_out = heldout_reference(n, size=pair.data_shape[-1])  # as every shipped evaluation
    out: dict = {
        "pair": pair.name,
        "cutoff": cutoff.label() if cutoff else None,
        "n": n,
        "sampler": H.sampler,
        "steps": steps,
        "first_seed": seed,
        "ratio_threshold": float(getattr(pair.index, "ratio_threshold", 1 / 3)),
        "cosine_threshold": float(getattr(pair.index, "threshold", 0.95)),
        "held_out": {
            "what": "held-out Fashion-MNIST test images, never trained on (ambient.data.heldout_reference)",
            **_figures(pair.verdicts(held_out.images[:, :c], k=1)),
        },
    }
    for side, samples in sides.items():
        verdicts = [s.verdict for s in samples]
        k = sum(v.copy_by_ratio for v in verdicts)
        x = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 127.5 - 1 for s in samples])[:, :c]
        novel = novel_frechet_report(x, pair.index, reference.images[:, :c])  # against as many reference images
        out[side] = {
            **_figures(verdicts),
            "rate_ratio": k / len(samples),
            "rate_ratio_ci95": list(bootstrap_rate_ci(k, len(samples))),
            "novel_n": novel["n_novel"],
            "novel_frechet_distance": novel["frechet_novel"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate, score, write the JSON, print one line a side."""
    from ambient.evaluate import write_json
    from ambient.research.studies import command_line, git_commit
    from demo.handlers import Handlers
    from demo.pairs import PairRegistry

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("assets/pairs.json"), help="the app's pairs config")
    p.add_argument("--pair", default=None, help="pair name (default: the config's default pair)")
    p.add_argument("--n", type=int, default=256, help="samples a side, and held-out images (a multiple of 8)")
    p.add_argument("--seed", type=int, default=FIRST_SEED, help="first seed")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    if a.n < 8:
        p.error("--n must be at least 8")
    H = Handlers(PairRegistry.from_path(a.config))
    t0 = time.perf_counter()
    out = measure(H, a.pair, a.n, a.seed)
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
