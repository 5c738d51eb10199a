"""What a visitor gets: a pair measured through the library's side-by-side sampling at the app's defaults.

Requests of 8 images (the app's largest) go through ``ambient.pair.Pair.side_by_side`` exactly as the Generate
button sends them (by default: the empty prompt, the app's solver and steps, guidance 1, the pair's default cutoff,
hand-over, bf16 where the CPU has it), from seeds that appear nowhere else in the repository. The verdicts the app
shows (ratio test, cosine) are counted, with 95 % bootstrap intervals; the images as shown are scored against as
many held-out test images: the Frechet distance with its half-sample interval, the distance of the novel samples
alone, precision and recall, and (with class prompts) prompt fidelity. ``--prompts classes`` sends each request a
class prompt in turn ("a photo of a <class>"), every 7th request the empty prompt. The JSON's ``goal`` part says
which of the target's conditions hold: the baseline copies at least 50 %, the Ambient model at most a fifth of
that, at a Frechet distance within 10 % of the baseline's, its novel samples at least as good.

Usage:
  python scripts/app_defaults.py --pair fmnist-100-64-seed1 --n 512 \\
      --out assets/fmnist-100/studies/app_defaults_fmnist-100-64-seed1.json
  python scripts/app_defaults.py --pair fmnist-100-64-seed1 --n 4096 --prompts classes --seed 60000000 --out FILE
The figures measured before the app's solver changed used ``--sampler heun --steps 18``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ambient.data import class_prompt, heldout_reference, to_uint8
from ambient.evaluate import score_samples, write_json
from ambient.memorization.metrics import bootstrap_rate_ci
from ambient.pair import DEFAULT_SAMPLER
from ambient.pairs_config import load_config, load_pair
from ambient.research.studies import command_line, git_commit

FIRST_SEED = 7_777_000  # used nowhere else in the repository
REQUEST_IMAGES = 8  # the app's largest request (demo.handlers.MAX_IMAGES)
APP_NEIGHBOURS = 4  # the neighbours the app searches per image
UNCOND_EVERY = 7  # with class prompts, every 7th request is sent the empty prompt
GOAL = {"baseline_copies": 0.5, "copy_factor": 0.2, "quality_margin": 0.10}


def request_prompts(pair: Any, requests: int, prompts: str) -> list[tuple[str, int]]:
    """The prompt of each request and its class (-1: the empty prompt): all empty, or the classes in turn with
    every ``UNCOND_EVERY``-th request empty."""
    if prompts == "empty":
        return [("", -1)] * requests
    names = list(getattr(pair.train, "class_names", None) or [])
    if not names:
        raise SystemExit(f"pair {pair.name!r} has no class names to prompt with; use --prompts empty")
    plan, k = [], 0
    for r in range(requests):
        if (r + 1) % UNCOND_EVERY == 0:
            plan.append(("", -1))
        else:
            plan.append((class_prompt(names[k % len(names)]), k % len(names)))
            k += 1
    return plan


def goal(out: dict[str, Any]) -> dict[str, Any]:
    """Which of the target's conditions the measured pair meets (None where a figure is missing)."""
    b, a = out["baseline"], out["ambient"]
    ratio = a["frechet_distance"] / b["frechet_distance"]
    novel = None
    if a.get("frechet_novel") is not None and b.get("frechet_novel") is not None:
        novel = a["frechet_novel"] <= b["frechet_novel"]
    checks = {
        "baseline copies at least 50 %": b["rate_ratio"] >= GOAL["baseline_copies"],
        "Ambient copies at most a fifth of that": a["rate_ratio"] <= GOAL["copy_factor"] * b["rate_ratio"],
        "Frechet distance within 10 % of the baseline's": ratio <= 1 + GOAL["quality_margin"],
        "novel samples at least as good": novel,
    }
    return {
        "checks": checks,
        "met": all(v is True for v in checks.values()),
        "frechet_ratio": ratio,
        "copy_ratio": a["rate_ratio"] / b["rate_ratio"] if b["rate_ratio"] else None,
    }


def measure(
    pair: Any,
    n: int,
    seed: int,
    bf16: bool | None = None,
    prompts: str = "empty",
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    guidance: float = 1.0,
) -> dict:
    """n samples a side as the app's Generate button makes them; their verdicts counted, their quality scored."""
    from ambient.training import cpu_has_bf16

    bf16 = cpu_has_bf16() if bf16 is None else bf16
    steps = pair.start_steps(sampler) if steps is None else steps
    cut = pair.default_cutoff()
    images: dict[str, list[torch.Tensor]] = {"ambient": [], "baseline": []}
    verdicts: dict[str, list[Any]] = {"ambient": [], "baseline": []}
    classes: list[int] = []
    plan = request_prompts(pair, -(-n // REQUEST_IMAGES), prompts)
    for r, start in enumerate(range(0, n, REQUEST_IMAGES)):
        seeds = [seed + start + i for i in range(min(REQUEST_IMAGES, n - start))]
        prompt, cls = plan[r]
        classes += [cls] * len(seeds)
        res = pair.side_by_side(seeds, prompt, steps, cut, guidance, trajectory_points=0, bf16=bf16, sampler=sampler)
        for side, x in (("ambient", res.ambient), ("baseline", res.baseline)):
            verdicts[side] += pair.verdicts(pair.index_input(x.float().cpu()), k=APP_NEIGHBOURS)
            images[side].append(torch.from_numpy(to_uint8(x.float().cpu())))  # what the app shows
    reference, _ = heldout_reference(n)  # the images evaluate_pair measures against
    out: dict[str, Any] = {
        "pair": pair.name,
        "cutoff": cut.label(),
        "n": n,
        "first_seed": seed,
        "prompts": prompts,
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
    }
    for side, vs in verdicts.items():
        k_ratio = sum(bool(v.copy_by_ratio) for v in vs)
        k_cos = sum(float(v.similarity) > 0.95 for v in vs)
        x = torch.cat(images[side]).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = x[:, : pair.data_shape[0]]
        scored = score_samples(x, pair.index, classes if prompts == "classes" else None, reference.images)
        out[side] = {
            "rate_ratio": k_ratio / len(vs),
            "rate_ratio_ci95": list(bootstrap_rate_ci(k_ratio, len(vs))),
            "rate_cos_0.95": k_cos / len(vs),
            "rate_cos_0.95_ci95": list(bootstrap_rate_ci(k_cos, len(vs))),
            "frechet_distance": scored["frechet_distance"],
            "frechet_ci95": scored.get("frechet_ci95"),
            "feature_space": scored.get("feature_space"),
        }
        out[side] |= {k: scored.get(k) for k in ("frechet_novel", "n_novel", "precision", "recall", "prompt_fidelity")}
    out["goal"] = goal(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate n samples a side through the handler, count the verdicts, write JSON, print a table row."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("assets/pairs.json"), help="the app's pairs config")
    p.add_argument("--pair", default=None, help="pair name (default: the config's default pair)")
    p.add_argument("--n", type=int, default=512, help="samples a side (a multiple of 8)")
    p.add_argument("--seed", type=int, default=FIRST_SEED, help="first seed")
    p.add_argument("--prompts", choices=("empty", "classes"), default="empty", help="the prompt plan (see above)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, help="the solver (default: the app's)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the app's for that solver)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (the app's default: 1)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    name = a.pair or cfg.default
    spec = next((s for s in cfg.specs if s.name == name), None)
    if spec is None:
        raise SystemExit(cfg.errors[name] if name in cfg.errors else f"no pair {name!r} in {a.config}")
    pair = load_pair(spec)
    t0 = time.perf_counter()
    out = measure(pair, a.n, a.seed, prompts=a.prompts, sampler=a.sampler, steps=a.steps, guidance=a.guidance)
    out |= {
        "seconds": round(time.perf_counter() - t0, 1),
        "commit": git_commit(),
        "command": command_line(),
    }
    write_json(out, a.out)
    for side in ("baseline", "ambient"):
        s = out[side]
        lo, hi = s["rate_ratio_ci95"]
        print(
            f"{side:9s} ratio test {100 * s['rate_ratio']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]  "
            f"cos>0.95 {100 * s['rate_cos_0.95']:.1f} %  Frechet distance {s['frechet_distance']:.2f}  "
            f"novel {s['frechet_novel'] if s['frechet_novel'] is None else round(s['frechet_novel'], 2)}"
        )
    g = out["goal"]
    print(f"goal {'met' if g['met'] else 'not met'}: " + "; ".join(f"{k}: {v}" for k, v in g["checks"].items()))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
