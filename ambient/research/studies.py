"""Studies: every snapshot of a training run scored for memorization and quality, as rows of a JSON file.

A row is one point on the quality-memorization frontier: the ratio-test rate with its 95 % bootstrap
interval, the cosine rates and the Frechet distance of one snapshot, sampled from the same seeds and
prompts as every other row and scored against the exact training subset the run was trained on.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch


def git_commit(repo: str | Path | None = None) -> str:
    """The checked-out commit, with "+dirty" when tracked files differ from it ("unknown" outside git)."""
    cwd = str(repo or Path(__file__).resolve().parents[2])
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=cwd, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running (``python`` and ``sys.argv``), quoted so that a shell can run it again; a
    script inside the checkout is named relative to it (``python benchmarks/run_all.py``, from any folder)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        root = Path(__file__).resolve().parents[2]
        try:
            argv[0] = str(Path(argv[0]).resolve().relative_to(root))
        except ValueError:
            pass  # a script outside the checkout keeps its path
    return shlex.join(["python", *argv])


def snapshots(run: Path) -> list[Path]:
    """The run's snapshot folders in step order (its final model when it has none)."""
    from ambient.denoiser import is_model_dir

    run = Path(run)
    snaps = sorted((run / "snapshots").glob("step_*"))
    if not snaps and is_model_dir(run / "model"):
        snaps = [run / "model"]
    if not snaps:
        raise FileNotFoundError(f"{run} has no snapshots and no model")
    return snaps


PROMPT_PLANS = ("classes", "empty")


def check_prompt_plan(prompts: str) -> str:
    """The prompt plan, if it is one of PROMPT_PLANS; else a ValueError that lists them."""
    if prompts not in PROMPT_PLANS:
        raise ValueError(f"prompts must be one of {list(PROMPT_PLANS)}, got {prompts!r}")
    return prompts


def score_run(
    run: Path,
    baseline: Any = None,
    sigma_c: float = 0.0,
    mode: str = "handover",
    n: int = 256,
    steps: int = 18,
    seed: int = 10_000,
    every: int = 0,
    min_step: int = 0,
    done: Iterable[int | None] = (),
    log: Callable[[str], None] = print,
    prompts: str = "classes",
) -> list[dict[str, Any]]:
    """Rows for the run's snapshots not in ``done`` (steps), plus its held-out reference row (step None).

    ``baseline`` (a denoiser) takes over below ``sigma_c`` in hand-over mode, as in the app. ``prompts`` is
    ``"classes"`` (spread over the classes, as every evaluation) or ``"empty"`` (all unconditional, as the
    app's default prompt).
    """
    from ambient.data import heldout_reference, training_set_of
    from ambient.denoiser import load_denoiser
    from ambient.evaluate import encode_prompts, generate, prompt_plan, score_samples
    from ambient.memorization.neighbours import TrainingSetIndex

    if n < 2:
        raise ValueError("a study needs at least 2 samples a snapshot")
    check_prompt_plan(prompts)
    done = set(done)
    rows: list[dict[str, Any]] = []
    ctx: dict[str, Any] = {}
    for snap in snapshots(run):
        model = load_denoiser(snap)
        step = int(model.meta.get("steps", 0))
        if step < min_step or (every and step % every) or step in done:
            continue
        if not ctx:  # one training set and one held-out reference per run
            train = training_set_of(snap)
            ctx["index"] = TrainingSetIndex(train.images, train.ids)
            ref, held_out = heldout_reference(n)  # as evaluate_pair
            ctx["reference"] = ref.images
            if None not in done:
                r = score_samples(held_out.images, ctx["index"], held_out.labels.tolist(), ctx["reference"])
                rows.append({"run": str(run), "n_train": len(train), "step": None, "samples": "held-out", **r})
            if prompts == "empty":
                texts, ctx["ids"] = [""] * n, [-1] * n
            else:
                texts, ctx["ids"] = prompt_plan(n, model.meta.get("class_names"))
            ctx["cond"] = encode_prompts(texts, model.meta.get("text_model"), model.cond_dim)
            ctx["n_train"] = len(train)
        size = ctx["reference"].shape[-1]  # an upsampled run is scored at its data's size
        x = generate(
            model, baseline, list(range(seed, seed + n)), ctx["cond"], steps, sigma_c, mode, bf16=True, size=size
        )
        r = score_samples(x, ctx["index"], ctx["ids"], ctx["reference"])
        rows.append({"run": str(run), "n_train": ctx["n_train"], "step": step, "samples": snap.name, **r})
        log(
            f"{run} step {step}: ratio {r['rate_ratio']:.3f} cos>0.95 {r['rate_similarity']['0.95']:.3f} "
            f"FD {r['frechet_distance']:.2f} fidelity {r.get('prompt_fidelity', float('nan')):.3f}"
        )
    return rows


def set_threads(k: int) -> None:
    """Use k torch threads (and as many for faiss, when it is there)."""
    torch.set_num_threads(max(1, k))
    try:
        import faiss

        faiss.omp_set_num_threads(max(1, k))
    except ImportError:
        pass


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until a started app answers on the port (or fail with its exit code)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the app did not answer on port {port} within {timeout} s")
