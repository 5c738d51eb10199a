"""A grid of training runs and their studies from one JSON file: ``python -m ambient grid GRID.json``.

Every run trains as its own ``python -m ambient train`` process (``--jobs`` at once, the CPU's threads
shared between them, or all on the one GPU), resumes from its checkpoint when the grid is started again,
and then has every snapshot scored into ``<studies_dir>/<grid name>/<run name>.json`` with its config,
its commit and one frontier row per snapshot. A run that fails is recorded as failed, with its error,
and the others go on. The file::

    {"name": "wave1", "runs_dir": "runs", "studies_dir": "assets/fmnist-100/studies",
     "defaults": {"n": 100, "steps": 5000, "lr": 5e-4, "snapshot_every": 1000},
     "eval": {"n": 256, "steps": 18, "seed": 10000},
     "runs": [{"name": "baseline", "train": {"loss": "baseline"}},
              {"name": "high", "train": {"loss": "ambient", "sigma_n": 0.5, "regime": "high"},
               "eval": {"baseline": "baseline", "sigma_c": 0.5}}]}

``eval.baseline`` names another run of the grid (its exported model) or a model folder. ``eval.every`` and
``eval.min_step`` limit the scored snapshots to multiples of ``every`` from ``min_step`` on. ``eval.prompts``
is ``"classes"`` (the default: prompts spread over the classes) or ``"empty"`` (every sample unconditional, as
the app's Generate with its empty default prompt).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ambient.research.studies import check_prompt_plan
from ambient.training import TrainConfig

EVAL_KEYS = {"n", "steps", "seed", "baseline", "sigma_c", "mode", "every", "min_step", "prompts"}


@dataclasses.dataclass
class GridRun:
    """One run of a grid: its training config and how its snapshots are scored."""

    name: str
    config: TrainConfig
    eval: dict[str, Any]


def load_grid(path: str | Path) -> tuple[dict[str, Any], list[GridRun]]:
    """Read and check a grid file; raises ValueError naming the first bad entry."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    for key in ("name", "runs"):
        if key not in spec:
            raise ValueError(f"{path} has no {key!r}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    runs_dir = Path(spec.get("runs_dir", "runs"))
    names = [r.get("name") for r in spec["runs"]]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"{path}: every run needs a name, and names must differ")
    runs = []
    for r in spec["runs"]:
        train = {**spec.get("defaults", {}), **r.get("train", {})}
        bad = set(train) - fields
        if bad:
            raise ValueError(f"run {r['name']!r}: unknown training settings {sorted(bad)}")
        ev = {**spec.get("eval", {}), **r.get("eval", {})}
        bad = set(ev) - EVAL_KEYS
        if bad:
            raise ValueError(f"run {r['name']!r}: unknown eval settings {sorted(bad)}; known: {sorted(EVAL_KEYS)}")
        try:
            check_prompt_plan(ev.get("prompts", "classes"))
        except ValueError as e:
            raise ValueError(f"run {r['name']!r}: eval {e}") from e
        if ev.get("baseline") in names and ev["baseline"] == r["name"]:
            raise ValueError(f"run {r['name']!r} cannot hand over to itself")
        cfg = TrainConfig(**{**train, "out": str(runs_dir / r["name"]), "progress": False})
        cfg.validate()
        runs.append(GridRun(r["name"], cfg, ev))
    return spec, runs


def train_command(cfg: TrainConfig) -> list[str]:
    """The ``python -m ambient train`` command line of a config."""
    cmd = [sys.executable, "-m", "ambient", "train"]
    for f in dataclasses.fields(TrainConfig):
        v = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            cmd.append(flag if v else "--no-" + f.name.replace("_", "-"))
        elif isinstance(v, list):
            cmd += [flag, *map(str, v)]
        elif v is None:
            cmd += [flag, "none"]
        else:
            cmd += [flag, str(v)]
    return cmd


def _finished(cfg: TrainConfig) -> bool:
    from ambient.denoiser import is_model_dir, read_model_config

    model = Path(cfg.out) / "model"  # the sidecar, or the older layout's config.json
    return is_model_dir(model) and read_model_config(model).get("meta", {}).get("steps") == cfg.steps


def _checkpoint_step(cfg: TrainConfig) -> int:
    state = Path(cfg.out) / "checkpoint" / "state.json"
    return int(json.loads(state.read_text()).get("step", 0)) if state.is_file() else 0


def train_all(runs: Sequence[GridRun], jobs: int, threads: int) -> dict[str, str | None]:
    """Train the runs, ``jobs`` processes at once; returns each run's error (None when it finished)."""
    errors: dict[str, str | None] = {}
    todo = [r for r in runs if not _finished(r.config)]
    for r in runs:
        if r not in todo:
            errors[r.name] = None
    active: list[tuple[GridRun, subprocess.Popen, Any]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    while todo or active:
        while todo and len(active) < jobs:
            r = todo.pop(0)
            Path(r.config.out).mkdir(parents=True, exist_ok=True)
            log = open(Path(r.config.out) / "train.log", "a")  # noqa: SIM115 (closed when the process ends)
            print(f"[grid] train {r.name}: log {r.config.out}/train.log", flush=True)
            active.append((r, subprocess.Popen(train_command(r.config), stdout=log, stderr=log, env=env), log))
        time.sleep(2)
        for item in list(active):
            r, proc, log = item
            if proc.poll() is None:
                continue
            log.close()
            active.remove(item)
            ok = proc.returncode == 0 and _finished(r.config)
            errors[r.name] = (
                None if ok else f"training exited with code {proc.returncode}; see {r.config.out}/train.log"
            )
            print(f"[grid] {r.name}: {'trained' if ok else errors[r.name]}", flush=True)
    return errors


def study_path(spec: dict[str, Any], run: GridRun) -> Path:
    """Where a run's study JSON lives."""
    return Path(spec.get("studies_dir", "studies")) / spec["name"] / f"{run.name}.json"


def evaluate_run(spec: dict[str, Any], run: GridRun, runs: Sequence[GridRun], error: str | None) -> Path:
    """Score the run's snapshots missing from its study JSON (or record why it failed); returns the path."""
    from ambient.denoiser import load_denoiser
    from ambient.evaluate import write_json
    from ambient.research.studies import git_commit, score_run

    out = study_path(spec, run)
    old = json.loads(out.read_text()) if out.is_file() else {}
    rows = old.get("rows", [])
    ev = {"n": 256, "steps": 18, "seed": 10_000, "baseline": None, "sigma_c": 0.0, "mode": "handover", "every": 0}
    ev.update(run.eval)
    study = {
        "grid": spec["name"],
        "run": run.name,
        "config": dataclasses.asdict(run.config),
        "eval": ev,
        "commits": sorted({*old.get("commits", []), git_commit()}),
        "status": "ok",
        "rows": rows,
    }
    if old.get("eval") not in (None, ev):
        raise ValueError(f"{out} was scored with other settings {old['eval']}; move it away to rescore")
    try:
        if error:
            raise RuntimeError(error)
        base = None
        if ev["baseline"]:
            by_name = {r.name: r for r in runs}
            src = by_name[ev["baseline"]].config.out + "/model" if ev["baseline"] in by_name else ev["baseline"]
            base = load_denoiser(src)
        done = [r["step"] for r in rows]
        new = score_run(
            Path(run.config.out),
            base,
            ev["sigma_c"],
            ev["mode"],
            ev["n"],
            ev["steps"],
            ev["seed"],
            ev["every"],
            ev.get("min_step", 0),  # not a default in ev: studies scored before it existed keep their settings
            done,
            prompts=ev.get("prompts", "classes"),  # likewise
        )
        study["rows"] = sorted(rows + new, key=lambda r: -1 if r["step"] is None else r["step"])
        if not _finished(run.config):  # scored with --no-train before training ended: say how far it got
            study["status"] = "unfinished"
            study["trained_to"] = _checkpoint_step(run.config)
            study["note"] = (
                f"training stopped at step {study['trained_to']} of {run.config.steps}; the scored snapshots are "
                f"points like any other; it resumes from {run.config.out}/checkpoint when the grid is run again"
            )
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as e:
        study["status"] = "failed"
        study["error"] = f"{type(e).__name__}: {e}"
        print(f"[grid] {run.name}: {study['error']}", flush=True)
    write_json(study, out)
    return out


def run_grid(
    path: str | Path,
    jobs: int = 1,
    only: Sequence[str] = (),
    train: bool = True,
    evaluate: bool = True,
    threads: int | None = None,
) -> list[Path]:
    """Train then score every run of a grid file (or the ``only`` ones); returns the study files. Without
    ``train``, a run whose folder does not exist yet is skipped (no study is written for it)."""
    from ambient.research.studies import set_threads

    spec, runs = load_grid(path)
    if only:
        unknown = set(only) - {r.name for r in runs}
        if unknown:
            raise ValueError(f"no run named {sorted(unknown)} in {path}")
    chosen = [r for r in runs if not only or r.name in only]
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    errors = train_all(chosen, jobs, threads) if train else {r.name: None for r in chosen}
    outs = []
    if evaluate:
        before = torch.get_num_threads()
        set_threads(os.cpu_count() or 1)  # scoring runs after training: all cores
        try:
            for r in chosen:
                if not train and not Path(r.config.out).exists():  # never started: nothing to score, nothing failed
                    print(f"[grid] {r.name}: not trained yet ({r.config.out} does not exist); skipped", flush=True)
                    continue
                outs.append(evaluate_run(spec, r, runs, errors.get(r.name)))
        finally:
            set_threads(before)  # a caller in the same process keeps its setting
    return outs
