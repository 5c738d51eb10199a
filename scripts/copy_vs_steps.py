"""Memorization and quality of a training run's snapshots: when does a model start to copy?

Each snapshot (``<run>/snapshots/step_*``) samples the same seeds and prompts, and is scored against
the exact training subset it was trained on (ratio test and centred-pixel cosine), with held-out
Fashion-MNIST test images as the reference.  Several runs make a table of copying against steps and
against N.  An Ambient high-noise-only run is sampled with ``--baseline`` below ``--sigma-c``.

Usage:
  python scripts/copy_vs_steps.py runs/baseline runs/baseline_n300 --n 256 --out assets/copy_vs_steps.json
  python scripts/copy_vs_steps.py runs/ambient_high --baseline runs/baseline/model --sigma-c 0.5 --out x.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ambient.denoiser import load_denoiser
from ambient.evaluate import write_json
from ambient.research.studies import command_line, score_run

SAME = ("n", "steps", "seed", "baseline", "sigma_c", "mode")  # settings that rows of one file must share


def _setting(a: argparse.Namespace, key: str) -> object:
    value = getattr(a, key)
    return str(value) if isinstance(value, Path) else value


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (held-out reference rows included)."""
    out = [
        "| run | N | step | ratio test d1/d2 < 1/3 | cosine > 0.95 | Frechet distance (fmnist-cnn) | prompt fidelity |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pf = r.get("prompt_fidelity")
        out.append(
            f"| {Path(r['run']).name} | {r['n_train']} | {r['step'] or 'held-out real images'} "
            f"| {100 * r['rate_ratio']:.1f} % | {100 * r['rate_similarity']['0.95']:.1f} % "
            f"| {r['frechet_distance']:.2f} | {'n/a' if pf is None else f'{100 * pf:.1f} %'} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Score every snapshot of every run and write one JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="training run folders (with snapshots/)")
    p.add_argument("--n", type=int, default=256, help="samples per snapshot")
    p.add_argument("--steps", type=int, default=18, help="Heun steps")
    p.add_argument("--seed", type=int, default=10_000, help="first sampling seed")
    p.add_argument("--baseline", type=Path, help="low-noise model below --sigma-c (hand-over)")
    p.add_argument("--sigma-c", type=float, default=0.0)
    p.add_argument("--mode", choices=["handover", "truncate"], default="handover")
    p.add_argument("--min-step", type=int, default=0, help="skip snapshots before this step")
    p.add_argument("--every", type=int, default=0, help="only snapshots whose step is a multiple of this")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--append", action="store_true", help="keep --out's rows and add only snapshots it lacks")
    a = p.parse_args(argv)
    if a.n < 2:
        p.error("--n must be at least 2")

    baseline = load_denoiser(a.baseline) if a.baseline else None
    rows: list[dict] = []
    commands: list[str] = []
    if a.append and a.out.is_file():
        old = json.loads(a.out.read_text())
        rows, commands = old["rows"], old.get("commands", [old.get("command", "")])
        mismatched = [k for k in SAME if old["settings"].get(k) != _setting(a, k)]
        if mismatched:
            p.error(f"{a.out} was made with other {', '.join(mismatched)}; write a new file instead of --append")
    t0 = time.perf_counter()
    for run in a.runs:
        done = [r["step"] for r in rows if Path(r["run"]).resolve() == run.resolve()]
        try:
            rows += score_run(run, baseline, a.sigma_c, a.mode, a.n, a.steps, a.seed, a.every, a.min_step, done)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from e
    settings = {k: _setting(a, k) for k in SAME} | {"seconds": round(time.perf_counter() - t0, 1)}
    order = {run: k for k, run in enumerate(dict.fromkeys(r["run"] for r in rows))}
    rows.sort(key=lambda r: (order[r["run"]], r["step"] or 0))  # each run's held-out row first, then by step
    commands.append(command_line())
    write_json({"settings": settings, "rows": rows, "commands": commands}, a.out)
    print(markdown(rows))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
