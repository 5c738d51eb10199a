"""Where does the copying happen? Truncate each model at sigma_c and score its estimate x0_hat = D(x, sigma_c).

Usage: python scripts/truncate_probe.py [assets/fmnist-100] [n]   -> <pair>/eval/truncate_probe.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ambient.data import heldout_reference, load_npz
from ambient.denoiser import load_denoiser
from ambient.evaluate import encode_prompts, generate, prompt_plan, score_samples, write_json
from ambient.memorization.neighbours import TrainingSetIndex
from ambient.research.studies import command_line

CUTOFFS = (0.5, 1.0, 2.0)


def main(argv: list[str] | None = None) -> int:
    """Score each shipped model of the pair truncated at each sigma_c; write the rows as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pair", nargs="?", type=Path, default=Path("assets/fmnist-100"), help="a shipped pair's folder")
    ap.add_argument("n", nargs="?", type=int, default=200, help="samples per model and cutoff (default 200)")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error(f"n must be at least 1, got {a.n}")
    P, n = a.pair, a.n
    models = {k: load_denoiser(P / k) for k in ["ambient_high", "ambient", "baseline"] if (P / k).is_dir()}
    if "ambient" not in models:
        ap.error(f"{P} has no ambient/ model folder")
    train = load_npz(P / "train.npz")
    index = TrainingSetIndex.load(P / "index", train.images)
    reference = heldout_reference(n)[0].images
    prompts, ids = prompt_plan(n, models["ambient"].meta["class_names"])
    cond = encode_prompts(prompts, models["ambient"].meta["text_model"], models["ambient"].cond_dim)
    out = []
    for name, model in models.items():
        for sc in CUTOFFS:
            x = generate(model, None, list(range(10000, 10000 + n)), cond, 18, sc, "truncate", 1.0, bf16=True)
            r = score_samples(x, index, ids, reference)
            row = {
                "model": name,
                "truncate_at": sc,
                "n": n,
                "rate_ratio": r["rate_ratio"],
                **{f"rate_cos_{k}": v for k, v in r["rate_similarity"].items()},
                "mean_similarity": r["mean_similarity"],
                "frechet_distance": r["frechet_distance"],
                "prompt_fidelity": r["prompt_fidelity"],
            }
            print(row, flush=True)
            out.append(row)
    write_json({"rows": out, "command": command_line()}, P / "eval" / "truncate_probe.json")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
