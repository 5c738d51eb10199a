"""Where does the copying happen? Truncate each model at sigma_c and score its estimate x0_hat = D(x, sigma_c).

Usage: python scripts/truncate_probe.py [assets/fmnist-100] [n]   -> <pair>/eval/truncate_probe.json
"""

import sys
from pathlib import Path

import torch

from ambient.data import heldout_reference, load_npz
from ambient.denoiser import load_denoiser
from ambient.evaluate import encode_prompts, generate, prompt_plan, score_samples, write_json
from ambient.memorization.neighbours import TrainingSetIndex
from ambient.research.studies import command_line

P = Path(sys.argv[1] if len(sys.argv) > 1 else "assets/fmnist-100")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
torch.set_num_threads(1)
train = load_npz(P / "train.npz")
index = TrainingSetIndex.load(P / "index", train.images)
reference = heldout_reference(n)[0].images
models = {k: load_denoiser(P / k) for k in ["ambient_high", "ambient", "baseline"] if (P / k).is_dir()}
prompts, ids = prompt_plan(n, models["ambient"].meta["class_names"])
cond = encode_prompts(prompts, models["ambient"].meta["text_model"], models["ambient"].cond_dim)
out = []
for name, model in models.items():
    for sc in [0.5, 1.0, 2.0]:
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
