"""Create a tiny random (untrained) model pair, its training subset, index and pairs.json in a folder.

python scripts/make_tiny_pair.py /tmp/tiny        # then: python app.py --config /tmp/tiny/pairs.json
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the pair."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="where to write pairs.json and the pair's folder")
    ap.add_argument("--name", default="tiny", help="pair name (default: tiny)")
    ap.add_argument("--n", type=int, default=20, help="training images, balanced over classes (default: 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigma-n", type=float, default=1.0, help="training cutoff recorded for the Ambient model")
    ap.add_argument("--reference-n", type=int, default=0, help="held-out images for the live quality score")
    args = ap.parse_args(argv)
    from ambient.tiny import make_tiny_pair

    path = make_tiny_pair(args.folder, args.name, args.n, args.seed, args.sigma_n, args.reference_n)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
