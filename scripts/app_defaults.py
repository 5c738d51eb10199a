"""What a visitor gets: a pair measured through the library's side-by-side sampling at the app's defaults.

Requests of 8 images (the app's largest) go through ``ambient.pair.Pair.side_by_side`` exactly as the Generate
button sends them (empty prompt, 18 Heun steps, guidance 1, the pair's default cutoff, hand-over, bf16 where the
CPU has it), from seeds that appear nowhere else in the repository. The verdicts the app shows (ratio test,
cosine) are counted, with 95 % bootstrap intervals, and the Frechet distance of each side is measured against
held-out test images.

Usage:
  python scripts/app_defaults.py --pair fmnist-100-64-seed1 --n 512 \\
      --out assets/fmnist-100/studies/app_defaults_fmnist-100-64-seed1.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ambient.data import heldout_reference, to_uint8
from ambient.evaluate import write_json
from ambient.memorization.metrics import bootstrap_rate_ci, frechet_report
from ambient.pairs_config import load_config, load_pair
from ambient.research.studies import command_line, git_commit

FIRST_SEED = 7_777_000  # used nowhere else in the repository
REQUEST_IMAGES = 8  # the app's largest request (demo.handlers.MAX_IMAGES)
APP_STEPS = 18  # the Generate tab's steps
APP_NEIGHBOURS = 4  # the neighbours the app searches per image


def measure(pair: Any, n: int, seed: int, bf16: bool | None = None) -> dict:
    """n samples a side as the app's Generate button makes them at its defaults; their verdicts, counted."""
    from ambient.training import cpu_has_bf16

    bf16 = cpu_has_bf16() if bf16 is None else bf16
    cut = pair.default_cutoff()
    images: dict[str, list[torch.Tensor]] = {"ambient": [], "baseline": []}
    verdicts: dict[str, list[Any]] = {"ambient": [], "baseline": []}
    for start in range(0, n, REQUEST_IMAGES):
        seeds = [seed + start + i for i in range(min(REQUEST_IMAGES, n - start))]
        r = pair.side_by_side(seeds, "", APP_STEPS, cut, 1.0, trajectory_points=0, bf16=bf16)
        for side, x in (("ambient", r.ambient), ("baseline", r.baseline)):
            verdicts[side] += pair.verdicts(pair.index_input(x.float().cpu()), k=APP_NEIGHBOURS)
            images[side].append(torch.from_numpy(to_uint8(x.float().cpu())))  # what the app shows
    reference, _ = heldout_reference(n)  # the images evaluate_pair measures against
    out = {"pair": pair.name, "cutoff": cut.label(), "n": n, "first_seed": seed}
    for side, vs in verdicts.items():
        k_ratio = sum(bool(v.copy_by_ratio) for v in vs)
        k_cos = sum(float(v.similarity) > 0.95 for v in vs)
        x = torch.cat(images[side]).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = x[:, : pair.data_shape[0]]
        fd = frechet_report(x, reference.images)
        out[side] = {
            "rate_ratio": k_ratio / len(vs),
            "rate_ratio_ci95": list(bootstrap_rate_ci(k_ratio, len(vs))),
            "rate_cos_0.95": k_cos / len(vs),
            "rate_cos_0.95_ci95": list(bootstrap_rate_ci(k_cos, len(vs))),
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
    cfg = load_config(a.config)
    name = a.pair or cfg.default
    spec = next((s for s in cfg.specs if s.name == name), None)
    if spec is None:
        raise SystemExit(cfg.errors[name] if name in cfg.errors else f"no pair {name!r} in {a.config}")
    pair = load_pair(spec)
    t0 = time.perf_counter()
    out = measure(pair, a.n, a.seed)
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
