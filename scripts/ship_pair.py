"""Put a trained model pair into assets/: models, training images, index, evaluation, model cards.

Usage (the command behind the shipped pair):
    python scripts/ship_pair.py --baseline runs/baseline/model --ambient runs/ambient/model \
        --extra-ambient runs/ambient_high/model --out assets/fmnist-100 --n 1000 --sweep-n 256

Another Ambient model beside the same shipped baseline (into OUT/ambient_x, evaluated into OUT/eval_x; the
baseline, its card and the other models stay as shipped):
    python scripts/ship_pair.py --baseline runs/baseline/model --ambient runs/x/model --as ambient_x \
        --out assets/fmnist-100 --n 1000 --sweep-n 256
(add --baseline-as baseline_y to ship a new baseline beside it as its partner).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from ambient.cards import measured_card
from ambient.data import training_set_of
from ambient.denoiser import CARD_NAME, EDMDenoiser, is_model_dir
from ambient.evaluate import evaluate_pair
from ambient.memorization.neighbours import TrainingSetIndex
from ambient.research.studies import command_line

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
    ap.add_argument(
        "--as",
        dest="variant",
        help="ship --ambient as another variant under this folder name, beside the shipped baseline",
    )
    ap.add_argument(
        "--baseline-as",
        help="with --as: ship --baseline too, as a new baseline under this folder name (the pair's partner)",
    )
    args = ap.parse_args()
    if args.only == "ambient_high" and not args.extra_ambient:
        ap.error("--only ambient_high needs --extra-ambient")
    if args.baseline_as and (not args.variant or not args.baseline_as.startswith("baseline_")):
        ap.error("--baseline-as goes with --as and names a new folder baseline_<something>")
    if args.variant and (args.only or args.extra_ambient):
        ap.error("--as ships one Ambient variant: it takes neither --only nor --extra-ambient")
    if args.variant and (
        not re.fullmatch(r"[A-Za-z0-9_.-]+", args.variant)
        or args.variant in ("baseline", "ambient", "ambient_high", "index")
    ):
        ap.error(f"--as {args.variant!r}: use a new folder name of letters, digits, '_', '-' and '.'")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    main_name = args.variant or "ambient"
    base_name = args.baseline_as or "baseline"
    models = {base_name: args.baseline, main_name: args.ambient}
    if args.extra_ambient:
        models["ambient_high"] = args.extra_ambient
    new = {args.only or args.variant, args.baseline_as} - {None}  # shipped anew; the others must be as shipped
    if args.variant and not args.baseline_as and not is_model_dir(out / "baseline"):
        raise SystemExit(f"--as needs a shipped baseline in {out / 'baseline'}")
    loaded = {}
    for name, src in models.items():
        m = EDMDenoiser.from_pretrained(src)
        if new and name not in new and is_model_dir(out / name):
            # --only keeps the other models' folders and cards as shipped: they must be the same weights
            shipped = EDMDenoiser.from_pretrained(out / name).state_dict()
            if any(not torch.equal(v, shipped[k]) for k, v in m.state_dict().items()):
                raise SystemExit(f"{src} differs from the shipped {out / name}: ship the pair anew")
        else:
            m.save_pretrained(out / name)
        loaded[name] = m
    ids = [m.meta["train_ids"] for m in loaded.values()]
    if any(i != ids[0] for i in ids):
        raise SystemExit("the models were not trained on the same images")

    ds = training_set_of(out / base_name)
    ds.save_npz(out / "train.npz")
    TrainingSetIndex(ds.images, ds.ids, "pixels").save(out / "index")
    licence = Path("/usr/share/doc/dataset-fashion-mnist/copyright")
    text = licence.read_text() if licence.is_file() else "MIT licence, Copyright 2017 Zalando SE"
    (out / "DATA.md").write_text(DATA_NOTE.format(n=len(ds), licence=text.strip()))

    cmd = command_line()
    evals = {"ambient": "eval"}
    if args.variant:  # ambient_x is evaluated into eval_x, as ambient_high into eval_high
        evals = {
            args.variant: "eval" + args.variant.removeprefix("ambient")
            if args.variant.startswith("ambient_")
            else f"eval_{args.variant}"
        }
    if args.extra_ambient:
        evals["ambient_high"] = "eval_high"
    for name, folder in evals.items():
        if args.only and name != args.only:
            continue
        report = evaluate_pair(
            out / name,
            out / base_name,
            out,
            out / folder,
            n=args.n,
            sweep_n=args.sweep_n,
            sweep_points=args.sweep_points,
            steps=args.steps,
            guidance=args.guidance,
        )
        card = loaded[name].model_card(measured_card(name, loaded[name], report, cmd))  # with Hub metadata
        (out / name / CARD_NAME).write_text(card)
        if (name == "ambient" and not args.variant) or args.baseline_as:
            base = loaded[base_name]
            (out / base_name / CARD_NAME).write_text(base.model_card(measured_card(base_name, base, report, cmd)))
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
