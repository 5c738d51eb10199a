"""The live slider through the app's API: a new seed and a cutoff move, per arm, timed with gradio_client.

Each arm starts ``app.py`` (the default pair, 2 x 4 images with their neighbours, the empty prompt) with its own
settings and times ``/generate`` end to end, as a visitor's browser would wait for it:

* new seed: 8 requests at the default cutoff, each with seeds no earlier request used;
* slider move: one seed, then 8 cutoffs spread evenly over the slider (log10 sigma), each a new position.

Arms (``--arms``), each ``cache:sampler:steps[:serial]``: ``off:heun:18`` is the path before trajectories were
recorded (``AMBIENT_TRAJECTORY_CACHE_MB=0``: both sides sampled afresh for every request, one after the other);
``on:heun:18`` records each model's run once and restarts the Ambient side below the cutoff; ``on:dpmpp_2m:N`` adds
the faster solver; the two models' runs are recorded in two threads unless ``:serial`` (``AMBIENT_PARALLEL_SIDES=0``).
Writes a JSON with every time, the medians and the machine.

    python benchmarks/bench_slider.py [--arms off:heun:18 on:heun:18 on:dpmpp_2m:10] [--port 7911]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ambient.research.studies import command_line, git_commit, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def slider_range() -> tuple[float, float]:
    """The default pair's cutoff range in log10(sigma), as the app's slider spans it."""
    from ambient.pairs_config import load_config, load_pair

    config = load_config(ROOT / "assets" / "pairs.json")
    pair = load_pair(next(s for s in config.specs if s.name == config.default))
    return math.log10(pair.sigma_min), math.log10(pair.sigma_max)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def run_arm(arm: str, port: int, requests: int) -> dict[str, Any]:
    """Start the app with one arm's settings and time its requests."""
    from gradio_client import Client

    cache, sampler, steps, *extra = arm.split(":")
    env = {
        **os.environ,
        "AMBIENT_TRAJECTORY_CACHE_MB": "0" if cache == "off" else "128",
        "AMBIENT_PARALLEL_SIDES": "0" if "serial" in extra else "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--sampler", sampler]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_for_port(port, proc)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)

        def call(seed: int, sigma_c: float | None) -> float:
            t0 = time.perf_counter()
            out = client.predict(
                pair="",
                prompt="",
                seed=seed,
                n_images=4,
                steps=int(steps),
                guidance=1.0,
                sigma_c=sigma_c,
                mode="handover",
                api_name="/generate",
            )
            dt = time.perf_counter() - t0
            if not out.get("ambient"):
                raise RuntimeError(f"no images in the answer: {str(out)[:200]}")
            return dt

        call(1, None)  # warm-up: models, text encoder, index
        rss0 = rss_mb(proc.pid)
        new_seed = [call(100_000 + 1000 * i, None) for i in range(requests)]
        lo, hi = slider_range()
        positions = [10 ** (lo + (hi - lo) * (k + 0.5) / requests) for k in range(requests)]
        call(200_000, None)  # the seed's first request (its runs recorded, where recording is on)
        moves = [call(200_000, sc) for sc in positions]
        return {
            "arm": arm,
            "new_seed_s": new_seed,
            "slider_move_s": moves,
            "positions": positions,
            "new_seed_median_s": statistics.median(new_seed),
            "slider_move_median_s": statistics.median(moves),
            "rss_mb_after_warmup": rss0,
            "rss_mb_end": rss_mb(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    """Time every arm, print a table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["off:heun:18", "on:heun:18", "on:dpmpp_2m:10"])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--port", type=int, default=7911)
    ap.add_argument("--out", default="benchmarks/results/slider.json")
    args = ap.parse_args()
    rows = []
    for k, arm in enumerate(args.arms):
        rows.append(run_arm(arm, args.port + k, args.requests))
        r = rows[-1]
        print(
            f"{arm:18s} new seed {r['new_seed_median_s']:.3f} s   slider move {r['slider_move_median_s']:.3f} s",
            flush=True,
        )
    out = {
        "what": "/generate through gradio_client: default pair, 2 x 4 images with neighbours, empty prompt",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": command_line(),
        "commit": git_commit(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
