"""Build the quality-memorization frontier from every study JSON of a pair: a PNG per N and one JSON.

Usage:
  python scripts/frontier.py assets/fmnist-100
writes assets/fmnist-100/frontier/frontier.json and frontier_n<N>.png (every run's snapshots, the shipped
pairs marked, each Ambient point compared with the baseline's early-stopping frontier at its quality), from the
studies scored with class prompts; the studies scored with the empty prompt make frontier_empty_prompt_n<N>.png and
the JSON's "empty_prompt" part.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ambient.evaluate import write_json
from ambient.research import frontier
from ambient.research.studies import command_line, git_commit


def main(argv: list[str] | None = None) -> int:
    """Collect the points, compare them with the baseline frontier, write JSON and plots."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pair_dir", type=Path, help="pair folder with studies/ and eval*/report.json")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <pair_dir>/frontier)")
    a = p.parse_args(argv)
    out = a.out or a.pair_dir / "frontier"
    points, failed = frontier.load_points([a.pair_dir / "studies"])
    if not points:
        p.error(f"no study rows under {a.pair_dir / 'studies'}")
    marks = frontier.shipped_marks(a.pair_dir)
    compared = frontier.compare(points)
    plots = {}
    for n in sorted({q["n_train"] for q in points if q["n_train"]}):
        path = frontier.plot_frontier(points, out / f"frontier_n{n}.png", marks if n == 100 else (), n)
        plots[str(n)] = path.name
    # the second way of scoring: the app's default empty prompt, a frontier of its own (its own seeds and n)
    empty, _ = frontier.load_points([a.pair_dir / "studies"], prompts="empty")
    empty_plots = {}
    for n in sorted({q["n_train"] for q in empty if q["n_train"]}):
        path = frontier.plot_frontier(
            empty,
            out / f"frontier_empty_prompt_n{n}.png",
            (),
            n,
            title=f"Quality against memorization, N = {n}, empty prompt: below the baseline curves = helps",
        )
        empty_plots[str(n)] = path.name
    bands = [json.loads(f.read_text()) for f in sorted((a.pair_dir / "studies").glob("band_probe*.json"))]
    write_json(
        {
            "what": "ratio-test rate (95 % bootstrap interval) against Frechet distance, one point per snapshot",
            "commit": git_commit(),
            "command": command_line(),
            "plots": plots,
            "points": points,
            "ambient_vs_frontier": compared,
            "marks": marks,  # every evaluated model: "shipped" while its folder is in assets/, else "retired"
            "empty_prompt": {
                "what": "the same, scored with the app's default empty prompt (no class prompts)",
                "plots": empty_plots,
                "points": empty,
                "ambient_vs_frontier": frontier.compare(empty),
            },
            "bands": bands,
            "failed_runs": [
                {"study": f["study"], "label": f["label"], "error": f.get("error")}
                for f in failed
                if f.get("status") == "failed"
            ],
            "unfinished_runs": [
                {
                    "study": f["study"],
                    "label": f["label"],
                    "trained_to": f.get("trained_to"),
                    "steps": f["config"]["steps"],
                }
                for f in failed
                if f.get("status") == "unfinished"
            ],
        },
        out / "frontier.json",
    )
    for c in compared:
        ref = c["baseline_frontier_rate"]
        print(
            f"{c['label']:70s} N={c['n_train']} step {c['step']}: {100 * c['rate_ratio']:5.1f} % at FD "
            f"{c['frechet_distance']:6.2f}; baseline frontier {'n/a' if ref is None else f'{100 * ref:5.1f} %'}"
            f" -> {c['vs_frontier']}"
        )
    print(f"wrote {out / 'frontier.json'} and {', '.join(plots.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
