"""Store a pair's model weights in half precision, where the outputs stay within tolerance; measure first.

For every pixel pair of the config, both sides sample the same seeds through the app's path (``Pair.sample`` with
the app's solver and steps, the empty prompt, the pair's default cutoff) four ways: float32 weights with float32
arithmetic (the reference), float16-stored weights with float32 arithmetic, and both again under the bf16 autocast
that the app uses on a CPU with native bf16. The images are compared as the app shows them (uint8 grey levels),
and so are the copy verdicts. The tolerance is the change the app already accepts: storing float16 weights must
move the shown images less than half as much as bf16 autocast does (mean absolute difference in grey levels,
float32 arithmetic both), and, under bf16 autocast, the copy verdicts with float16 weights must agree with those of
float32 weights on at least 98 % of the samples. With ``--write``, the model folders of the pairs that pass are
rewritten with float16 weights (atomically; the written folder must load to exactly the float16-rounded weights
before it replaces the old one). A folder already stored in half precision is left alone, and a pair whose two
folders both are is not measured again; the study JSON keeps the earlier runs' measurements, which justify their
rewrites.

Usage:
  python scripts/half_weights.py --n 256 --out assets/fmnist-100/studies/half_weights.json --write
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ambient.data import to_uint8
from ambient.denoiser import TEXT_PROJ_NAME, WEIGHTS_NAME, EDMDenoiser
from ambient.evaluate import write_json
from ambient.pair import DEFAULT_SAMPLER
from ambient.pairs_config import load_config, load_pair, resolve_relative
from ambient.research.studies import command_line, git_commit

FIRST_SEED = 8_808_000  # used nowhere else in the repository
MAX_SHARE_OF_BF16 = 0.5  # float16 storage may move the shown images at most half as much as bf16 autocast does
MIN_VERDICT_AGREEMENT = 0.98


def stored_dtypes(folder: Path) -> set[str]:
    """The dtypes of the floating-point tensors in a model folder's safetensors files."""
    out = set()
    for name in (WEIGHTS_NAME, TEXT_PROJ_NAME):
        f = folder / name
        if f.is_file():
            with safe_open(str(f), framework="pt") as h:
                out |= {str(h.get_slice(k).get_dtype()) for k in h.keys()}
    return {d for d in out if d.startswith(("F", "BF"))}


def halved(model: EDMDenoiser) -> EDMDenoiser:
    """A copy of the model whose weights went through float16 and back, as loading a float16 folder gives them."""
    out = copy.deepcopy(model)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    out.load_state_dict(state)
    return out


def shown_and_copies(pair: Any, side: str, seeds: list[int], bf16: bool) -> tuple[np.ndarray, list[bool]]:
    """One side's images as the app shows them (uint8) and its copy verdicts, at the app's defaults."""
    cond = pair.prompts.cond("", len(seeds))
    x = pair.sample(seeds, cond, pair.start_steps(DEFAULT_SAMPLER), pair.default_cutoff(), 1.0, side, None, bf16,
                    DEFAULT_SAMPLER)  # fmt: skip
    return to_uint8(pair.codec.decode(x)), [bool(v.is_copy) for v in pair.verdicts(pair.to_data(x))]


Runs = dict[tuple[str, bool], tuple[np.ndarray, list[bool]]]


def mad(got: Runs, a: tuple[str, bool], b: tuple[str, bool]) -> float:
    """Mean absolute difference, in grey levels, between two ways' shown images."""
    return float(np.abs(got[a][0].astype(np.int16) - got[b][0].astype(np.int16)).mean())


def agree(got: Runs, a: tuple[str, bool], b: tuple[str, bool]) -> float:
    """The share of samples whose copy verdicts two ways agree on."""
    return float(np.mean([x == y for x, y in zip(got[a][1], got[b][1], strict=True)]))


def measure(pair: Any, n: int, seed: int) -> dict[str, Any]:
    """Both sides, four ways: how far float16 storage moves the shown images and the verdicts, against bf16."""
    seeds = list(range(seed, seed + n))
    half = copy.copy(pair)
    half.ambient, half.baseline = halved(pair.ambient), halved(pair.baseline)
    sides = {}
    for side in ("ambient", "baseline"):
        got = {
            (w, b): shown_and_copies(p, side, seeds, b)
            for w, p in (("float32", pair), ("float16", half))
            for b in (False, True)
        }

        ref, f16, bf, f16bf = ("float32", False), ("float16", False), ("float32", True), ("float16", True)
        r = {
            "mean_abs_grey_float16_storage": mad(got, f16, ref),
            "mean_abs_grey_bf16_autocast": mad(got, bf, ref),
            "mean_abs_grey_float16_storage_under_bf16": mad(got, f16bf, bf),
            "verdicts_agree_float16_storage_under_bf16": agree(got, f16bf, bf),
            "verdicts_agree_bf16_autocast": agree(got, bf, ref),
            "copies": {f"{w}_weights{'_bf16' if b else ''}": int(sum(v[1])) for (w, b), v in got.items()},
        }
        r["share_of_bf16"] = r["mean_abs_grey_float16_storage"] / max(r["mean_abs_grey_bf16_autocast"], 1e-9)
        r["within_tolerance"] = bool(
            r["share_of_bf16"] <= MAX_SHARE_OF_BF16
            and r["verdicts_agree_float16_storage_under_bf16"] >= MIN_VERDICT_AGREEMENT
        )
        sides[side] = r
    return sides


def write_half(folder: Path) -> None:
    """Rewrite a model folder with float16 weights, checked on the temporary folder before it replaces the old."""
    model = EDMDenoiser.from_pretrained(folder)
    want = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}

    def check(tmp: Path) -> None:
        got = EDMDenoiser.from_pretrained(tmp).state_dict()
        bad = [k for k, v in want.items() if not torch.equal(got[k], v)]
        if bad or stored_dtypes(tmp) != {"F16"}:
            raise ValueError(f"the float16 copy of {folder} does not load to its rounded weights: {bad[:3]}")

    model.save_pretrained(folder, check=check, dtype=torch.float16)


def main(argv: list[str] | None = None) -> int:
    """Measure every pixel pair of the config, write the study, and (``--write``) halve the folders that pass."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="assets/pairs.json")
    ap.add_argument("--pairs", nargs="*", help="pair names (default: every pixel pair of the config)")
    ap.add_argument("--n", type=int, default=256, help="samples a side and way")
    ap.add_argument("--seed", type=int, default=FIRST_SEED)
    ap.add_argument("--out", type=Path, required=True, help="the study JSON to write")
    ap.add_argument("--write", action="store_true", help="rewrite the folders that pass with float16 weights")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error("--n must be at least 1")
    cfg = load_config(a.config)
    specs = [s for s in cfg.specs if (not a.pairs or s.name in a.pairs)]
    missing = sorted(set(a.pairs or []) - {s.name for s in specs})
    if missing:
        ap.error(f"no pair named {missing} in {a.config}")
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    study: dict[str, Any] = {
        "command": command_line(),
        "commit": git_commit(),
        "n": a.n,
        "seed": a.seed,
        "sampler": DEFAULT_SAMPLER,
        "tolerance": {"max_share_of_bf16": MAX_SHARE_OF_BF16, "min_verdict_agreement": MIN_VERDICT_AGREEMENT},
        "pairs": dict(old.get("pairs", {})),  # earlier runs' measurements stay: they justify what they wrote
        "history": [*old.get("history", []), *([{k: old[k] for k in ("command", "commit")}] if old else [])],
    }
    passed: dict[Path, bool] = {}  # a folder shared by two pairs is halved only if every pair using it passes
    for spec in specs:
        folders = {side: resolve_relative(spec, side, getattr(spec, side)) for side in ("ambient", "baseline")}
        if spec.kind != "edm":
            study["pairs"][spec.name] = {"skipped": f"a {spec.kind} pair: its pipeline keeps its own precision"}
            continue
        if all(stored_dtypes(f) == {"F16"} for f in folders.values()):  # nothing left to measure or write
            study["pairs"].setdefault(spec.name, {"skipped": "both sides already stored in float16"})
            continue
        t0 = time.perf_counter()
        r = measure(load_pair(spec), a.n, a.seed)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        r["folders"] = {side: os.path.relpath(f) for side, f in folders.items()}
        study["pairs"][spec.name] = r
        for side, f in folders.items():  # a side already in float16 measures as unchanged: nothing to write
            passed[f] = passed.get(f, True) and r[side]["within_tolerance"] and stored_dtypes(f) != {"F16"}
        print(spec.name, {s: {k: v for k, v in r[s].items() if k != "copies"} for s in ("ambient", "baseline")})
    study["kept"] = sorted(os.path.relpath(f) for f, ok in passed.items() if not ok and stored_dtypes(f) != {"F16"})
    study["written"] = list(old.get("written", []))
    write_json(study, a.out)  # the measurement is kept even if a rewrite below fails
    for f in sorted(f for f, ok in passed.items() if ok and a.write):
        write_half(f)
        study["written"].append(os.path.relpath(f))
        write_json(study, a.out)
        print(f"halved {os.path.relpath(f)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
