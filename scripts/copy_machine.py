"""The Frechet distance of a copy machine: n draws (with replacement) from a model's training images, against the
held-out reference of an n-sample evaluation. The score a generator that only recalls would get.

    python scripts/copy_machine.py [--model assets/fmnist-100/ambient_up2_s4_seed1] [--n 1000] [--draws 3]
"""

from __future__ import annotations

import argparse

import torch

from ambient.data import heldout_reference, training_set_of
from ambient.memorization.metrics import frechet_report


def main(argv: list[str] | None = None) -> list[float]:
    """Print (and return) the distance of each draw."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="assets/fmnist-100/ambient_up2_s4_seed1", help="a model folder (its training set)"
    )
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args(argv)
    train = training_set_of(args.model)
    reference, _ = heldout_reference(args.n)
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.draws):
        idx = torch.randint(len(train.images), (args.n,), generator=g)
        out.append(frechet_report(train.images[idx], reference.images)["frechet_distance"])
    print("copy machine, Frechet distance per draw:", ", ".join(f"{d:.2f}" for d in out))
    return out


if __name__ == "__main__":
    main()
