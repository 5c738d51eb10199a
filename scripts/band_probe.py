"""Which noise band decides copying: sample with a different model in each band and score the results.

Each configuration names a model for sigma >= 2, one for 0.5 <= sigma < 2 (or two, split at 1) and one
below 0.5; every configuration samples the same seeds and prompts (EDM Heun) and is scored against the
pair's training images (ratio test with its 95 % bootstrap interval, cosine > 0.95, Frechet distance).
Models trained on the images upsampled (``--upsample K``) are scored on their samples averaged back to the
training images' size; their sigmas are on the fine grid (K times the content's).

Usage (models by name=folder, configurations as "label=model@2,model@0.5,model@0" from the top band down):
  python scripts/band_probe.py assets/fmnist-100 --n 256 \\
      --model baseline=assets/fmnist-100/baseline --model high=assets/fmnist-100/ambient_high \\
      --config "all baseline=baseline@0" --config "high in 0.5-2=baseline@2,high@0.5,baseline@0" \\
      --out assets/fmnist-100/studies/band_probe_high.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ambient.data import downsample_pixels, heldout_reference, load_npz
from ambient.denoiser import load_denoiser
from ambient.evaluate import encode_prompts, prompt_plan, score_samples, write_json
from ambient.memorization.neighbours import TrainingSetIndex
from ambient.research.studies import command_line, git_commit
from ambient.sampling import BandDenoiser, sample


def parse_config(text: str) -> tuple[str, list[tuple[float, str]]]:
    """'label=a@2,b@0.5,c@0' -> (label, [(2.0, 'a'), (0.5, 'b'), (0.0, 'c')])."""
    label, _, spec = text.rpartition("=")
    if not label or not spec:
        raise ValueError(f"a configuration reads label=model@sigma_lo,...; got {text!r}")
    bands = []
    for part in spec.split(","):
        name, _, lo = part.strip().partition("@")
        bands.append((float(lo), name))
    return label, bands


def main(argv: list[str] | None = None) -> int:
    """Sample every configuration and write the table as JSON (and print it as Markdown)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pair_dir", type=Path, help="folder with train.npz (the training images)")
    p.add_argument("--model", action="append", default=[], help="name=model folder (repeat)")
    p.add_argument("--config", action="append", default=[], help="label=model@sigma_lo,... from the top band down")
    p.add_argument("--n", type=int, default=256, help="samples per configuration")
    p.add_argument("--steps", type=int, default=18, help="Heun steps")
    p.add_argument("--seed", type=int, default=10_000, help="first sampling seed")
    p.add_argument("--title", default="", help="what the probe is of, shown above its table (e.g. the pair)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    models = {}
    for m in a.model:
        name, _, folder = m.partition("=")
        models[name] = load_denoiser(folder)
    configs = [parse_config(c) for c in a.config]
    for label, bands in configs:
        missing = {n for _, n in bands} - set(models)
        if missing:
            p.error(f"configuration {label!r} names unknown models {sorted(missing)}")
    train = load_npz(a.pair_dir / "train.npz")
    index = TrainingSetIndex(train.images, train.ids)
    reference = heldout_reference(a.n)[0].images
    first = next(iter(models.values()))
    prompts, ids = prompt_plan(a.n, first.meta.get("class_names"))
    cond = encode_prompts(prompts, first.meta.get("text_model"), first.cond_dim)
    rows, t0 = [], time.perf_counter()
    for label, bands in configs:
        d = BandDenoiser([(lo, models[n]) for lo, n in bands])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = sample(d, None, list(range(a.seed, a.seed + a.n)), first.image_shape, cond, a.steps).float()
        r = score_samples(downsample_pixels(x, train.images.shape[-1]), index, ids, reference)
        rows.append({"label": label, "bands": [{"sigma_lo": lo, "model": n} for lo, n in bands], **r})
        print(
            f"{label}: ratio {100 * r['rate_ratio']:.1f} % cos>0.95 {100 * r['rate_similarity']['0.95']:.1f} % "
            f"FD {r['frechet_distance']:.2f}",
            flush=True,
        )
    write_json(
        {
            "what": "which noise band decides copying: a model per band, same seeds and prompts",
            "title": a.title,
            "models": dict(m.partition("=")[::2] for m in a.model),
            "settings": {"n": a.n, "steps": a.steps, "seed": a.seed, "seconds": round(time.perf_counter() - t0, 1)},
            "commit": git_commit(),
            "command": command_line(),
            "rows": rows,
        },
        a.out,
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
