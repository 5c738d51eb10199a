"""Prompt fidelity, copying and quality of a pair against the classifier-free guidance scale.

Both models of a pair sample the same seeds and class prompts (as every study: one prompt in 11 empty) at
each guidance scale, the Ambient side at the pair's default cutoff, and each set is scored against the
pair's training images: prompt fidelity (the project's Fashion-MNIST classifier agrees with the prompted
class), the ratio test with its 95 % bootstrap interval, cosine > 0.95 and the Frechet distance.

Usage:
  python scripts/guidance_probe.py --pair fmnist-100-64-seed1 --guidance 1 1.5 2 3 --n 256 \\
      --out assets/fmnist-100/studies/guidance_probe_fmnist-100-64-seed1.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ambient.cutoff import Cutoff
from ambient.data import heldout_reference
from ambient.evaluate import prompt_plan, score_samples, write_json
from ambient.memorization.metrics import bootstrap_rate_ci
from ambient.pairs_config import load_config, load_pair
from ambient.research.studies import command_line, git_commit


def main(argv: list[str] | None = None) -> int:
    """Sample and score both sides at every guidance scale; write JSON and print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("assets/pairs.json"), help="the app's pairs config")
    p.add_argument("--pair", default=None, help="pair name (default: the config's default pair)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0], help="guidance scales")
    p.add_argument("--n", type=int, default=256, help="samples per side and scale")
    p.add_argument("--steps", type=int, default=18, help="Heun steps")
    p.add_argument("--seed", type=int, default=10_000, help="first sampling seed")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    if a.n < 2 or any(g < 0 for g in a.guidance):
        p.error("--n must be at least 2 and every guidance scale at least 0")
    cfg = load_config(a.config)
    name = a.pair or cfg.default
    spec = next((s for s in cfg.specs if s.name == name), None)
    if spec is None:
        p.error(str(cfg.errors[name]) if name in cfg.errors else f"no pair {name!r} in {a.config}")
    pair = load_pair(spec)
    if not pair.cond_dim:
        p.error(f"pair {pair.name!r} is unconditional: guidance does not apply")
    prompts, ids = prompt_plan(a.n, (getattr(pair.ambient, "meta", {}) or {}).get("class_names"))
    cond = pair.prompts.encode(prompts)
    reference = heldout_reference(a.n)[0].images
    seeds = list(range(a.seed, a.seed + a.n))
    cut = pair.default_cutoff()
    rows, t0 = [], time.perf_counter()
    for g in a.guidance:
        for side, c in (("baseline", Cutoff.ambient_alone()), ("ambient", cut)):
            x = pair.generate(seeds, cond, a.steps, c, g, side=side, bf16=True)
            r = score_samples(x, pair.index, ids, reference)
            k = round(r["rate_ratio"] * len(x))
            rows.append(
                {"guidance": g, "side": side, "cutoff": c.label(), "rate_ratio_ci95": bootstrap_rate_ci(k, len(x)), **r}
            )
            print(
                f"guidance {g}: {side:8s} fidelity {100 * r['prompt_fidelity']:.1f} % ratio {100 * r['rate_ratio']:.1f} % "
                f"cos>0.95 {100 * r['rate_similarity']['0.95']:.1f} % FD {r['frechet_distance']:.2f}",
                flush=True,
            )
    write_json(
        {
            "pair": pair.name,
            "settings": {"n": a.n, "steps": a.steps, "seed": a.seed, "sampler": "heun", "bf16": True},
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1),
            "commit": git_commit(),
            "command": command_line(),
        },
        a.out,
    )
    print(
        "| guidance | side | prompt fidelity | ratio test | cos > 0.95 | Frechet distance |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        lo, hi = r["rate_ratio_ci95"]
        print(
            f"| {r['guidance']:g} | {r['side']} | {100 * r['prompt_fidelity']:.1f} % | {100 * r['rate_ratio']:.1f} % "
            f"[{100 * lo:.1f}, {100 * hi:.1f}] | {100 * r['rate_similarity']['0.95']:.1f} % | {r['frechet_distance']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
