"""Put a trained model pair into assets/: models, training images, index, evaluation, model cards.

Usage (the command behind the shipped pair):
    python scripts/ship_pair.py --baseline runs/baseline/model --ambient runs/ambient/model \
        --extra-ambient runs/ambient_high/model --out assets/fmnist-100 --n 1000 --sweep-n 256
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from ambient.data import training_set_of  # noqa: E402
from ambient.denoiser import CARD_NAME, EDMDenoiser, is_model_dir  # noqa: E402
from ambient.evaluate import evaluate_pair  # noqa: E402
from ambient.neighbours import TrainingSetIndex  # noqa: E402

DATA_NOTE = """# Training images: Fashion-MNIST subset

`train.npz` holds the {n} Fashion-MNIST training images (uint8, 28x28 padded to 32x32) that both models
of this pair were trained on, with their Fashion-MNIST training-set ids (`ids`) and labels.

Fashion-MNIST: Han Xiao, Kashif Rasul, Roland Vollgraf, *Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms*, arXiv:1708.07747 (2017). Copyright 2017 Zalando SE.
Licence: MIT (Expat), reproduced below (from the Debian package `dataset-fashion-mnist`).

```
{licence}
```
"""


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def model_card(name: str, model: EDMDenoiser, report: dict, command: str) -> str:
    """A README for one shipped model folder, with its measured numbers."""
    meta = model.meta
    tc = meta.get("train_config", {})
    row = report["ambient" if name != "baseline" else "baseline"]
    ref = report.get("reference", {})
    s = report["settings"]
    loss = meta.get("loss")
    regime = meta.get("regime", "all")
    what = {
        ("baseline", "all"): "plain EDM loss on the clean images at every noise level",
        ("ambient", "all"): f"Ambient loss, one network: fixed noisy copies (sigma_n = {meta.get('sigma_n')}) above "
        "sigma_n, clean images below",
        ("ambient", "high"): f"Ambient loss, high-noise-only network: trained only at sigma >= sigma_n = "
        f"{meta.get('sigma_n')} on the fixed noisy copies; sampled with a hand-over to the baseline at sigma_n",
    }[(loss, regime)]
    return f"""# {name}

- Loss: {what}.
- Data: {len(meta.get("train_ids", []))} Fashion-MNIST training images (class-balanced subset, seed
  {tc.get("subset_seed")}), 32x32, one channel; ids in `ambient_config.json` (`meta.train_ids`) and `../train.npz`.
- Text conditioning: prompt embeddings from {meta.get("text_model")} (captions from class names, templates
  and synonyms; caption dropout {tc.get("caption_dropout")} so the empty prompt samples unconditionally).
- Network: diffusers UNet2DModel, block_out_channels {tc.get("block_out_channels")}, no attention, EDM
  preconditioning (sigma_data 0.5).
- Training: {meta.get("steps")} steps, batch {tc.get("batch")}, Adam lr {tc.get("lr")} (warm-up {tc.get("warmup")}),
  EMA {tc.get("ema")}, bf16 autocast, seed {meta.get("seed")}.

## Measured ({s["n"]} samples, EDM Heun {s["steps"]} steps, guidance {s["guidance"]})

| | this model | held-out real images |
|---|---|---|
| nearest training image, cosine > 0.95 ({s["embedder"]}) | {_pct(row["rate_similarity"]["0.95"])} | {_pct(ref.get("rate_similarity", {}).get("0.95"))} |
| nearest training image, cosine > 0.9 | {_pct(row["rate_similarity"]["0.9"])} | {_pct(ref.get("rate_similarity", {}).get("0.9"))} |
| pixel-L2 ratio test d1/d2 < 1/3 | {_pct(row["rate_ratio"])} | {_pct(ref.get("rate_ratio"))} |
| mean nearest cosine | {row["mean_similarity"]:.3f} | {ref.get("mean_similarity", float("nan")):.3f} |
| Frechet distance (fmnist-cnn features) | {row.get("frechet_distance", float("nan")):.2f} | {ref.get("frechet_distance", float("nan")):.2f} |
| prompt fidelity (classifier accuracy) | {_pct(row.get("prompt_fidelity"))} | {_pct(ref.get("prompt_fidelity"))} |

Reproduce: `{command}`
"""


def main() -> int:
    """Copy models, build the index, evaluate, write cards."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--ambient", required=True)
    ap.add_argument("--extra-ambient", help="a second Ambient variant (e.g. high-noise-only), evaluated too")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sweep-n", type=int, default=256)
    ap.add_argument("--sweep-points", type=int, default=9)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument(
        "--only",
        choices=["ambient", "ambient_high"],
        help="re-evaluate only this variant (the other's shipped evaluation and model cards are kept)",
    )
    args = ap.parse_args()
    if args.only == "ambient_high" and not args.extra_ambient:
        ap.error("--only ambient_high needs --extra-ambient")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {"baseline": args.baseline, "ambient": args.ambient}
    if args.extra_ambient:
        models["ambient_high"] = args.extra_ambient
    loaded = {}
    for name, src in models.items():
        m = EDMDenoiser.from_pretrained(src)
        if args.only and name != args.only and is_model_dir(out / name):
            # --only keeps the other models' folders and cards as shipped: they must be the same weights
            shipped = EDMDenoiser.from_pretrained(out / name).state_dict()
            if any(not torch.equal(v, shipped[k]) for k, v in m.state_dict().items()):
                raise SystemExit(f"--only {args.only}: {src} differs from the shipped {out / name}; ship all")
        else:
            m.save_pretrained(out / name)
        loaded[name] = m
    ids = [m.meta["train_ids"] for m in loaded.values()]
    if any(i != ids[0] for i in ids):
        raise SystemExit("the models were not trained on the same images")

    ds = training_set_of(out / "baseline")
    ds.save_npz(out / "train.npz")
    TrainingSetIndex(ds.images, ds.ids, "pixels").save(out / "index")
    licence = Path("/usr/share/doc/dataset-fashion-mnist/copyright")
    text = licence.read_text() if licence.is_file() else "MIT licence, Copyright 2017 Zalando SE"
    (out / "DATA.md").write_text(DATA_NOTE.format(n=len(ds), licence=text.strip()))

    cmd = " ".join(["python", *sys.argv])
    evals = {"ambient": "eval"}
    if args.extra_ambient:
        evals["ambient_high"] = "eval_high"
    for name, folder in evals.items():
        if args.only and name != args.only:
            continue
        report = evaluate_pair(
            out / name,
            out / "baseline",
            out,
            out / folder,
            n=args.n,
            sweep_n=args.sweep_n,
            sweep_points=args.sweep_points,
            steps=args.steps,
            guidance=args.guidance,
        )
        card = loaded[name].model_card(model_card(name, loaded[name], report, cmd))  # with Hub metadata
        (out / name / CARD_NAME).write_text(card)
        if name == "ambient":
            base = loaded["baseline"]
            (out / "baseline" / CARD_NAME).write_text(base.model_card(model_card("baseline", base, report, cmd)))
        print(json.dumps({k: report[k] for k in ("reference", "baseline", "ambient")}, indent=1)[:3000], flush=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    shipped = out / "SHIPPED.json"
    old = json.loads(shipped.read_text()) if shipped.is_file() else {}
    history = old.get("history", []) + ([{k: old[k] for k in ("command", "git", "models") if k in old}] if old else [])
    entry = {"command": cmd, "git": rev, "models": models, "history": history}
    shipped.write_text(json.dumps(entry, indent=2))
    shutil.rmtree(out / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
