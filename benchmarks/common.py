"""Shared pieces of the benchmarks: arguments, environment record, the model pair, timing, targets, JSON, Markdown.

Every benchmark script is ``python benchmarks/<name>.py [--quick] [--threads N] [--out DIR] [--config PAIRS]`` and
writes ``DIR/<name>.json``; ``run_all.py`` runs them all and renders ``DIR/README.md`` from the JSON files.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the checkout (its assets); the library itself is imported as installed (pip install -e .)

DEFAULT_CONFIG = ROOT / "assets" / "pairs.json"
DEFAULT_OUT = HERE / "results"
QUICK_OUT = HERE / "results-quick"
# Architecture of the project's pair: the fallback is a random pair of exactly this shape.
PAIR_CHANNELS = (32, 64, 64)
PAIR_COND_DIM = 384
PAIR_TEXT_MODEL = "all-MiniLM-L6-v2"
QUICK_NOTE = "--quick: tiny sizes to check that the script works; the numbers are NOT representative"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


# ----------------------------------------------------------------------------- arguments and environment


def base_parser(description: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --threads, --out, --config."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, seconds; numbers are not representative")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch and faiss threads (default: all cores)"
    )
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results, --quick: results-quick)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="pairs.json of the model pair (assets/pairs.json)")
    return ap


def out_dir(args: argparse.Namespace) -> Path:
    """The results folder for these arguments."""
    return Path(args.out) if args.out else (QUICK_OUT if args.quick else DEFAULT_OUT)


def set_threads(threads: int) -> int:
    """Set torch's (and faiss's, when importable) thread count; returns what torch reports."""
    import torch

    if threads < 1:
        raise SystemExit("--threads must be at least 1")
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    return torch.get_num_threads()


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # a missing optional package is just not recorded
        return None
    return str(getattr(mod, "__version__", "?"))


def env_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on: date, CPU, cores, threads, library versions, load."""
    import torch

    from ambient.training import cpu_has_bf16

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "faiss": _version("faiss"),
        "gradio": _version("gradio"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "loadavg_1_5_15": load,
    }


# ----------------------------------------------------------------------------- timing


def stats(xs: list[float]) -> dict[str, float]:
    """n, median, p90 (linear interpolation), mean, min and max of a list of timings."""
    if not xs:
        raise ValueError("no measurements")
    s = sorted(xs)
    pos = 0.9 * (len(s) - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    p90 = s[lo] + (s[hi] - s[lo]) * (pos - lo)
    return {
        "n": len(s),
        "median": statistics.median(s),
        "p90": p90,
        "mean": statistics.fmean(s),
        "min": s[0],
        "max": s[-1],
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Call fn once; (its result, wall seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def interleaved(arms: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time several arms side by side: every round runs each arm once, in turn (so drifting load hits all alike).

    ``warmup`` untimed rounds come first. Returns the wall seconds of every timed call per arm.
    """
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))  # alternate who goes first
        for k in order:
            times[k].append(timed(arms[k])[1])
    return times


class Probe:
    """Accumulates wall time and call counts per category of wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.items: dict[str, int] = {}

    def reset(self) -> None:
        """Forget what was recorded."""
        self.seconds, self.calls, self.items = {}, {}, {}

    def wrap(self, category: str, fn: Callable[..., Any], count_items: bool = False) -> Callable[..., Any]:
        """fn, timed into ``category`` (``count_items``: also sum len(first argument))."""

        def wrapped(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[category] = self.seconds.get(category, 0.0) + time.perf_counter() - t0
                self.calls[category] = self.calls.get(category, 0) + 1
                if count_items and a:
                    self.items[category] = self.items.get(category, 0) + len(a[0])

        return wrapped


# ----------------------------------------------------------------------------- targets and comparisons


def target(
    name: str,
    measured: float | None,
    op: str,
    limit: float,
    unit: str,
    evaluated: bool = True,
    note: str = "",
) -> dict[str, Any]:
    """A target check: ``measured op limit`` (op is '<=' or '>='), with how far off it is when missed.

    ``evaluated=False`` (e.g. --quick, or sizes that differ from the target's) records the number but no verdict.
    """
    if op not in ("<=", ">="):
        raise ValueError(f"op must be '<=' or '>=', not {op!r}")
    row: dict[str, Any] = {"name": name, "target": f"{op} {limit:g} {unit}".strip(), "measured": measured}
    row["unit"], row["note"] = unit, note
    if measured is None or not evaluated or not math.isfinite(measured):
        row["met"], row["miss"] = None, "not evaluated" + (f" ({note})" if note else "")
        return row
    met = measured <= limit if op == "<=" else measured >= limit
    row["met"] = bool(met)
    if met:
        row["miss"] = ""
    elif op == "<=":
        row["miss"] = f"{measured / limit:.2f}x the limit ({measured - limit:+.3g} {unit})"
    else:
        row["miss"] = f"{measured / limit:.2f}x of the target ({measured - limit:+.3g} {unit})"
    return row


def comparison(
    name: str, ours_label: str, ours: float, ref_label: str, ref: float, unit: str, lower_is_better: bool = True
) -> dict[str, Any]:
    """One side-by-side comparison; ``ratio`` > 1 means ours is better (faster, or more per second)."""
    if ours <= 0 or ref <= 0:
        ratio = float("nan")
    else:
        ratio = ref / ours if lower_is_better else ours / ref
    return {
        "name": name,
        "ours_label": ours_label,
        "ours": ours,
        "ref_label": ref_label,
        "ref": ref,
        "unit": unit,
        "ratio": ratio,
        "ratio_meaning": f"{ref_label} / ours" if lower_is_better else f"ours / {ref_label}",
    }


# ----------------------------------------------------------------------------- the model pair


def _write_fallback_pair(folder: Path) -> Path:
    """A random-init pair of the project's architecture (1.1M-parameter UNet, cond 384) on a 100-image
    Fashion-MNIST subset with a pixel index, written where the registry can load it; returns its pairs.json."""
    from ambient.tiny import make_tiny_pair

    return make_tiny_pair(
        folder,
        name="bench-fallback",
        n=100,
        seed=0,
        sigma_n=0.5,
        text_model=PAIR_TEXT_MODEL,
        channels=PAIR_CHANNELS,
        title="Random-init pair (benchmark fallback)",
        description="Untrained random networks of the shipped pair's architecture: timings only.",
        note="random-init benchmark fallback (benchmarks/common.py)",
    )


def library_default_pair(config: Path) -> tuple[None, Any, str | None]:
    """(None, the config's default pair or None, why not), loaded by the library (``ambient.pairs_config``)."""
    from ambient.pair import PairError
    from ambient.pairs_config import load_config
    from ambient.pairs_config import load_pair as load_spec

    try:
        cfg = load_config(config)
        if cfg.default in cfg.errors:
            raise cfg.errors[cfg.default]
        spec = next((s for s in cfg.specs if s.name == cfg.default), None)
        if spec is None:
            return None, None, f"{config} names no default pair"
        return None, load_spec(spec), None
    except PairError as e:
        return None, None, str(e)


def load_pair(
    config: str | Path, workdir: str | Path, open_default: Callable[[Path], tuple[Any, Any, str | None]] | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(registry or None, loaded pair, description): the config's default pair, opened by ``open_default``
    (default: ``library_default_pair``; the app benchmarks pass one that loads through the app's registry and
    returns it as the first item).

    When the configured default pair cannot be loaded, a random-init pair of the same architecture is written
    to ``workdir`` and loaded instead; the description says which one was used and why.
    """
    open_default = open_default or library_default_pair
    config = Path(config)
    registry, pair, reason = open_default(config)
    used = "trained"
    if pair is None:
        config = _write_fallback_pair(Path(workdir))
        registry, pair, error = open_default(config)
        if pair is None:
            raise RuntimeError(f"the benchmarks' fallback pair does not load: {error}")
        used = "random-init fallback"
    info = {
        "used": used,
        "name": pair.name,
        "config": str(config),
        "fallback_reason": " ".join(str(reason).split())[:400] if reason else None,
        "ambient_parameters": sum(p.numel() for p in pair.ambient.parameters())
        if hasattr(pair.ambient, "parameters")
        else None,
        "block_out_channels": getattr(getattr(pair.ambient, "net", None), "unet_config", {}).get("block_out_channels"),
        "cond_dim": pair.cond_dim,
        "image_shape": list(pair.image_shape),
        "n_train": len(pair.train),
        "index_embedder": pair.index.embedder_name,
        "index_kind": pair.index.kind,
        "sigma_min": pair.sigma_min,
        "sigma_max": pair.sigma_max,
    }
    if used != "trained":
        info["note"] = (
            "untrained random weights of the same architecture: timings are representative of the real pair, "
            "quality numbers are not"
        )
    return registry, pair, info


def heldout_images(n: int, seed: int = 1) -> tuple[Any, str]:
    """n held-out Fashion-MNIST test images (balanced), or synthetic blobs when the data set is missing."""
    from ambient.tiny import images_or_blobs

    ds = images_or_blobs(n, seed, "test")
    return ds, ds.source


# ----------------------------------------------------------------------------- output


def write_result(out: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``out/name.json`` atomically."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def result(
    name: str,
    title: str,
    args: argparse.Namespace,
    env: dict[str, Any],
    t_start: float,
    headline: dict[str, float],
    **sections: Any,
) -> dict[str, Any]:
    """The common JSON envelope of one benchmark."""
    from ambient.research.studies import command_line

    payload: dict[str, Any] = {
        "benchmark": name,
        "title": title,
        "command": command_line(),
        "quick": bool(args.quick),
        "representative": not args.quick,
        "env": env,
        "headline": headline,
    }
    if args.quick:
        payload["warning"] = QUICK_NOTE
    payload.update(sections)
    payload.setdefault("targets", [])
    payload.setdefault("comparisons", [])
    payload.setdefault("tables", [])
    payload["elapsed_s"] = time.perf_counter() - t_start
    return payload


def fmt(x: Any, unit: str = "") -> str:
    """A number for a table: 3 significant digits, with its unit."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        s = f"{x:,}"
    elif isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        s = f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"
    else:
        s = str(x)
    return f"{s} {unit}".strip()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A small table for the README (cells already formatted or plain numbers)."""
    return {
        "title": title,
        "columns": columns,
        "rows": [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows],
    }


def render_readme(results: list[dict[str, Any]], command: str, total_s: float, quick: bool) -> str:
    """The Markdown report of a run: environment, targets, side-by-side comparisons, detail tables."""
    results = sorted(results, key=lambda r: r.get("title", ""))  # titles start with the numbering
    env = results[0]["env"] if results else {}
    lines = ["# Benchmarks", ""]
    if quick:
        lines += [f"> **QUICK RUN ({QUICK_NOTE}).**", ""]
    pair = next((r.get("pair") for r in results if r.get("pair")), None)
    load_end = results[-1]["env"].get("loadavg_1_5_15") if results else None
    lines += [
        f"- command: `{command}` ({total_s / 60:.1f} min in all)",
        f"- date: {env.get('date')}",
        f"- CPU: {env.get('cpu')}, {env.get('cores')} cores (bf16 instructions: {fmt(env.get('cpu_bf16'))}); "
        f"threads: {env.get('threads')} (torch.set_num_threads and faiss)",
        f"- torch {env.get('torch')}, diffusers {env.get('diffusers')}, faiss {env.get('faiss')}, "
        f"gradio {env.get('gradio')}, Python {env.get('python')}",
        f"- load average (1, 5, 15 min) at the start: {env.get('loadavg_1_5_15')}, at the end: {load_end} "
        "(other work on the machine skews every number)",
    ]
    if pair:
        lines.append(
            f"- model pair: **{pair['used']}** `{pair['name']}` ({fmt(pair.get('ambient_parameters'))} parameters, "
            f"channels {pair.get('block_out_channels')}, cond {pair.get('cond_dim')}; {pair['n_train']} training "
            f"images; index: {pair['index_embedder']} {pair['index_kind']})"
            + (f"; fallback because: {pair['fallback_reason']}" if pair.get("fallback_reason") else "")
        )
    lines += ["", "Each script writes its own JSON beside this file; rerun one with the command in its row.", ""]
    lines += [
        "## Targets",
        "",
        "| Benchmark | Measure | Measured | Target | Met | Off by |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for t in r.get("targets", []):
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(
                f"| {r['benchmark']} | {t['name']} | {fmt(t['measured'], t['unit'])} | {t['target']} | {met} "
                f"| {t['miss'] or ''} |"
            )
    lines += [
        "",
        "## Side by side (same run; ratio > 1: ours is better)",
        "",
        "| Comparison | Ours | Reference | Ratio | Command |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for c in r.get("comparisons", []):
            lines.append(
                f"| {c['name']} | {c['ours_label']}: {fmt(c['ours'], c['unit'])} | {c['ref_label']}: "
                f"{fmt(c['ref'], c['unit'])} | **{fmt(c['ratio'])}x** ({c['ratio_meaning']}) | `{r['command']}` |"
            )
    for r in results:
        lines += ["", f"## {r['title']}", "", f"`{r['command']}` ({r['elapsed_s']:.0f} s)", ""]
        for note in r.get("notes", []):
            lines.append(f"- {note}")
        for tb in r.get("tables", []):
            lines += ["", f"**{tb['title']}**", "", "| " + " | ".join(tb["columns"]) + " |"]
            lines.append("|" + "---|" * len(tb["columns"]))
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in tb["rows"]]
    return "\n".join(lines) + "\n"
