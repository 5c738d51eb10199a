"""What a visitor gets: a pair measured through the app's own generate handler at its default settings.

Requests of 8 images go through ``demo.handlers.Handlers.generate`` exactly as the Generate button sends
them (empty prompt, 18 Heun steps, guidance 1, the pair's default cutoff, hand-over), from seeds that
appear nowhere else in the repository. The verdicts the app shows (ratio test, cosine) are counted, with
95 % bootstrap intervals, and the Frechet distance of each side is measured against held-out test images.

Usage:
  python scripts/app_defaults.py --pair fmnist-100 --n 512 --out assets/fmnist-100/studies/app_defaults.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ambient.data import balanced_subset, load_fashion_mnist  # noqa: E402
from ambient.evaluate import write_json  # noqa: E402
from ambient.memorization.metrics import bootstrap_rate_ci, frechet_report  # noqa: E402
from ambient.research.studies import command_line, git_commit  # noqa: E402
from demo.handlers import MAX_IMAGES, Handlers  # noqa: E402
from demo.pairs import PairRegistry  # noqa: E402

FIRST_SEED = 7_777_000  # used nowhere else in the repository


def measure(H: Handlers, pair_name: str | None, n: int, seed: int) -> dict:
    """n samples a side through ``H.generate`` at the UI's defaults; the verdicts it returned, counted."""
    pair = H.pair(pair_name)
    sides: dict[str, list] = {"ambient": [], "baseline": []}
    cutoff = None
    for start in range(0, n, MAX_IMAGES):
        r = H.generate(pair.name, "", seed + start, min(MAX_IMAGES, n - start))  # the UI's defaults
        cutoff = r.cutoff
        sides["ambient"] += r.ambient
        sides["baseline"] += r.baseline
    test = balanced_subset(load_fashion_mnist("test"), 2 * n, seed=1)  # as evaluate_pair
    out = {"pair": pair.name, "cutoff": cutoff.label() if cutoff else None, "n": n, "first_seed": seed}
    for side, samples in sides.items():
        k_ratio = sum(s.verdict.copy_by_ratio for s in samples)
        k_cos = sum(s.verdict.similarity > 0.95 for s in samples)
        x = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 127.5 - 1 for s in samples])
        x = x[:, : pair.image_shape[0]]
        fd = frechet_report(x, test.images[:n])
        out[side] = {
            "rate_ratio": k_ratio / len(samples),
            "rate_ratio_ci95": list(bootstrap_rate_ci(k_ratio, len(samples))),
            "rate_cos_0.95": k_cos / len(samples),
            "rate_cos_0.95_ci95": list(bootstrap_rate_ci(k_cos, len(samples))),
            "frechet_distance": fd["frechet_distance"],
            "feature_space": fd.get("feature_space"),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate n samples a side through the handler, count the verdicts, write JSON, print a table row."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("assets/pairs.json"), help="the app's pairs config")
    p.add_argument("--pair", default=None, help="pair name (default: the config's default pair)")
    p.add_argument("--n", type=int, default=512, help="samples a side (a multiple of 8)")
    p.add_argument("--seed", type=int, default=FIRST_SEED, help="first seed")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    H = Handlers(PairRegistry.from_path(a.config))
    t0 = time.perf_counter()
    out = measure(H, a.pair, a.n, a.seed)
    out |= {
        "seconds": round(time.perf_counter() - t0, 1),
        "commit": git_commit(),
        "command": command_line(),
    }
    write_json(out, a.out)
    for side in ("baseline", "ambient"):
        s = out[side]
        lo, hi = s["rate_ratio_ci95"]
        print(
            f"{side:9s} ratio test {100 * s['rate_ratio']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]  "
            f"cos>0.95 {100 * s['rate_cos_0.95']:.1f} %  Frechet distance {s['frechet_distance']:.2f}"
        )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
