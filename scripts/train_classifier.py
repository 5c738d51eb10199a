"""Train the small Fashion-MNIST classifier and write it to assets/classifier (safetensors + JSON).

OMP_NUM_THREADS=1 python scripts/train_classifier.py            # about 4 minutes on one CPU core
python scripts/train_classifier.py --epochs 3 --out /tmp/clf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ambient.memorization.classifier import DEFAULT_CLASSIFIER_DIR, train_classifier


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print the summary as JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_CLASSIFIER_DIR, help="output folder (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=None, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary = train_classifier(
        args.out, epochs=args.epochs, batch=args.batch, seed=args.seed, lr=args.lr, data_folder=args.data
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
