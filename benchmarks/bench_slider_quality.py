"""Quality and copies against network evaluations, per solver, on a shipped pair: which sampler the live slider uses.

Both sides of a pair (the baseline alone and the Ambient model alone, as the app's two galleries at its default
cutoff) are sampled unconditionally (the app's empty default prompt) from the same seeds with each solver setting,
then scored as every study: copies by the ratio test with their 95 % interval, the Frechet distance in the
classifier's features with its half-sample interval, and the distance of the novel samples alone. Writes one study
JSON with the config and commit.

``--pair NAME`` takes both sides from that entry of ``assets/pairs.json`` and samples its Ambient side at the pair's
default cutoff (for a high-noise-only network: the hand-over to the baseline at sigma_n), as the app's gallery does.

    python benchmarks/bench_slider_quality.py [--ambient DIR --baseline DIR | --pair NAME] [--n 1000] [--out FILE]
        [--arms heun:18 dpmpp_2m:10 dpmpp_2m:14 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ambient.data import downsample_pixels, heldout_reference, training_set_of
from ambient.denoiser import load_denoiser
from ambient.evaluate import score_samples
from ambient.memorization.neighbours import TrainingSetIndex
from ambient.pair import Pair
from ambient.pairs_config import load_config, load_pair
from ambient.research.studies import command_line, git_commit
from ambient.sampling import autocast, nfe, sample
from ambient.training import cpu_has_bf16

DEFAULT_ARMS = ["heun:18", "dpmpp_2m:8", "dpmpp_2m:10", "dpmpp_2m:14", "dpmpp_2m:20"]


def run_arm(model: torch.nn.Module, seeds: list[int], sampler: str, steps: int, size: int, bf16: bool) -> torch.Tensor:
    """Unconditional samples of one model with one solver setting, averaged back to the data's size."""
    out = []
    for i in range(0, len(seeds), 100):
        with autocast("cpu", bf16):
            x = sample(model, None, seeds[i : i + 100], model.image_shape, None, steps, 0.0, None, sampler)
        out.append(x.float())
    return downsample_pixels(torch.cat(out), size)


def run_pair_arm(pair: Pair, side: str, seeds: list[int], sampler: str, steps: int, bf16: bool) -> torch.Tensor:
    """Unconditional samples of one side of a shipped pair at its default cutoff, at the data's size."""
    cut = pair.default_cutoff()
    out = []
    for i in range(0, len(seeds), 100):
        x = pair.sample(seeds[i : i + 100], None, steps, cut, side=side, bf16=bf16, sampler=sampler)
        out.append(pair.to_data(x.float()))
    return torch.cat(out)


def main() -> None:
    """Sample and score every arm on both sides; write the study."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ambient", default="assets/fmnist-100/ambient_up2_s4_seed1")
    ap.add_argument("--baseline", default="assets/fmnist-100/baseline_up2_seed1")
    ap.add_argument("--pair", help="an entry of --config: both sides from it, the Ambient side at its default cutoff")
    ap.add_argument("--config", default="assets/pairs.json", help="the pairs file --pair is read from")
    ap.add_argument("--n", type=int, default=1000, help="samples a side and arm")
    ap.add_argument("--seed", type=int, default=31_000_000, help="first seed (a range no other study uses)")
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, help="sampler:steps settings")
    ap.add_argument("--out", default="benchmarks/results/slider_quality.json")
    args = ap.parse_args()
    bf16 = cpu_has_bf16()
    pair = None
    if args.pair:
        specs = {s.name: s for s in load_config(args.config).specs}
        if args.pair not in specs:
            ap.error(f"no pair {args.pair!r} in {args.config}; it has {sorted(specs)}")
        pair = load_pair(specs[args.pair])
        models = {"baseline": pair.baseline, "ambient": pair.ambient}
        train = pair.train
    else:
        models = {"baseline": load_denoiser(args.baseline), "ambient": load_denoiser(args.ambient)}
        train = training_set_of(args.ambient)
    index = TrainingSetIndex(train.images, train.ids)
    size = train.images.shape[-1]
    reference, _ = heldout_reference(args.n)
    seeds = list(range(args.seed, args.seed + args.n))
    rows = []
    for arm in args.arms:
        sampler, steps = arm.split(":")
        for side, model in models.items():
            t0 = time.perf_counter()
            if pair is not None:
                x = run_pair_arm(pair, side, seeds, sampler, int(steps), bf16)
            else:
                x = run_arm(model, seeds, sampler, int(steps), size, bf16)
            seconds = time.perf_counter() - t0
            r = score_samples(x, index, None, reference.images)
            row = {"side": side, "cutoff": pair.default_cutoff().label() if pair and side == "ambient" else None}
            row |= {"sampler": sampler, "steps": int(steps), "nfe": nfe(int(steps), sampler)}
            row.update(
                {k: r.get(k) for k in ("n", "rate_ratio", "rate_ratio_ci95", "frechet_distance", "frechet_ci95")}
            )
            row.update({k: r.get(k) for k in ("frechet_novel", "n_novel", "precision", "recall")})
            row["seconds"] = round(seconds, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    study = {
        "what": "quality and copies against network evaluations per solver, both sides alone, empty prompt",
        "config": {**vars(args), "bf16": bf16, "torch_threads": torch.get_num_threads()},
        "command": command_line(),
        "commit": git_commit(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(study, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
