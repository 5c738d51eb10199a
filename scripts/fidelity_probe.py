"""Why prompt fidelity stops near 75 %: the classifier's own accuracy on the training images, and whether a sample
(a copy or not) lands near a training image of the prompted class.

Prompt fidelity is the share of prompted samples that the Fashion-MNIST classifier assigns to the prompted class. A
model that only replays its training images can score no higher than the classifier's accuracy on those images; and
a copy of an image of another class fails whatever the classifier does. This probe separates the two for a pair.

Usage:
  python scripts/fidelity_probe.py assets/fmnist-100 --ambient ambient_up2_s4 --baseline baseline_up2 --n 256 \\
      --out assets/fmnist-100/studies/fidelity_probe_fmnist-100-64.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ambient.evaluate import encode_prompts, generate, prompt_plan, write_json
from ambient.memorization.classifier import load_default_classifier, predict_logits
from ambient.memorization.metrics import bootstrap_rate_ci
from ambient.pair import load_pair
from ambient.research.studies import command_line, git_commit


def share(mask: np.ndarray, of: np.ndarray) -> dict[str, float | int | list[float]]:
    """The share of ``of`` where ``mask`` holds, with its count and 95 % bootstrap interval."""
    k, n = int((mask & of).sum()), int(of.sum())
    return {"rate": k / n if n else float("nan"), "n": n, "ci95": list(bootstrap_rate_ci(k, n)) if n else []}


def main(argv: list[str] | None = None) -> int:
    """Sample both sides with class prompts and split prompt fidelity into its parts."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pair_dir", type=Path, help="folder with train.npz, index/ and the model folders")
    p.add_argument("--ambient", required=True, help="Ambient model folder name inside pair_dir")
    p.add_argument("--baseline", required=True, help="baseline model folder name inside pair_dir")
    p.add_argument("--n", type=int, default=256, help="samples a side")
    p.add_argument("--steps", type=int, default=18, help="Heun steps")
    p.add_argument("--seed", type=int, default=10_000, help="first sampling seed")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    d = a.pair_dir
    pair = load_pair(d / a.ambient, d / a.baseline, d / "train.npz", d / "index")
    meta = pair.ambient.meta
    if not pair.cond_dim or not meta.get("class_names"):
        p.error("the pair is not text-conditional with class names: there is no prompted class to check")
    prompts, ids = prompt_plan(a.n, meta["class_names"])
    cond = encode_prompts(prompts, meta.get("text_model"), pair.cond_dim)
    clf = load_default_classifier()
    labels = pair.train.labels.numpy()
    train_pred = predict_logits(clf, pair.train.images).argmax(1).numpy()
    out = {
        "what": "prompt fidelity split into: is the nearest training image of the prompted class, and does the "
        "classifier say so; copies by the ratio test and the rest apart",
        "classifier_accuracy_on_training_images": float((train_pred == labels).mean()),
        "settings": {"n": a.n, "steps": a.steps, "seed": a.seed, "ambient": a.ambient, "baseline": a.baseline},
        "commit": git_commit(),
        "command": command_line(),
    }
    prompted = np.asarray(ids) >= 0
    for side, model in (("baseline", pair.baseline), ("ambient", pair.ambient)):
        x = generate(model, None, list(range(a.seed, a.seed + a.n)), cond, a.steps, bf16=True, size=pair.data_shape[-1])
        verdicts = pair.index.verdicts(x, k=1)
        near = labels[[v.neighbours[0].position for v in verdicts]]
        copy = np.array([bool(v.copy_by_ratio) for v in verdicts])
        right = predict_logits(clf, x).argmax(1).numpy() == np.asarray(ids)
        near_right = near == np.asarray(ids)
        out[side] = {
            "copies": share(copy, prompted),
            "prompt_fidelity": share(right, prompted),
            "copies_nearest_of_prompted_class": share(near_right, prompted & copy),
            "copies_classifier_right": share(right, prompted & copy),
            "others_nearest_of_prompted_class": share(near_right, prompted & ~copy),
            "others_classifier_right": share(right, prompted & ~copy),
        }
        r = out[side]
        print(
            f"{side}: fidelity {100 * r['prompt_fidelity']['rate']:.1f} %; copies {100 * r['copies']['rate']:.1f} %, "
            f"of the prompted class {100 * r['copies_nearest_of_prompted_class']['rate']:.1f} %, classifier right "
            f"{100 * r['copies_classifier_right']['rate']:.1f} %; others: nearest of the prompted class "
            f"{100 * r['others_nearest_of_prompted_class']['rate']:.1f} %, classifier right "
            f"{100 * r['others_classifier_right']['rate']:.1f} %",
            flush=True,
        )
    print(f"classifier on the training images: {100 * out['classifier_accuracy_on_training_images']:.1f} %")
    write_json(out, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
