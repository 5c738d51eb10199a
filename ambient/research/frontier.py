"""The quality-memorization frontier (the paper's Figure 1): every scored snapshot of every run as a point.

A point is (Frechet distance, ratio-test rate with its 95 % bootstrap interval) for one snapshot. The
baselines' points at one training-set size N trace the early-stopping frontier: stopping the baseline
sooner trades quality for less copying. A variant helps where it lies *below* that frontier, that is,
where it copies less than the baseline does at the same Frechet distance (linear interpolation between
the baseline's snapshots; outside their range the comparison is left undecided).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ambient.memorization.metrics import bootstrap_rate_ci

AMBIENT_COLOR = "#1f77b4"  # each side's colour in every frontier picture (the app's and the README's)
BASELINE_COLOR = "#d62728"

# Runs of the studies written before grid files existed: what each one was.
LEGACY_LABELS = {
    "runs/baseline": "baseline",
    "runs/baseline_n300": "baseline",
    "runs/ambient": "Ambient one network, sigma_n 0.5",
    "runs/ambient_s2": "Ambient one network, sigma_n 2",
    "runs/ambient_high": "Ambient high-noise-only, sigma_n 0.5, hand-over at 0.5",
    "runs/ambient_high_s1": "Ambient high-noise-only, sigma_n 1, hand-over at 1",
}


def describe_config(cfg: dict[str, Any], ev: dict[str, Any] | None = None) -> str:
    """A short label of a training config (and its hand-over), e.g. 'Ambient high-noise-only, sigma_n 0.5'."""
    if cfg.get("loss") == "baseline":
        label = "baseline"
    elif cfg.get("regime") == "high":
        label = f"Ambient high-noise-only, sigma_n {cfg.get('sigma_n'):g}"
    else:
        label = f"Ambient one network, sigma_n {cfg.get('sigma_n'):g}"
    extras = []
    if cfg.get("time_scale_shift", "default") != "default":
        extras.append("scale-shift cond.")
    if cfg.get("dropout"):
        extras.append(f"dropout {cfg['dropout']:g}")
    if cfg.get("weight_decay"):
        extras.append(f"AdamW decay {cfg['weight_decay']:g}")
    if cfg.get("high_weight", "edm") != "edm":
        extras.append(f"weight {cfg['high_weight']}")
    if (cfg.get("p_mean", -1.2), cfg.get("p_std", 1.2)) != (-1.2, 1.2):
        extras.append(f"ln sigma ~ N({cfg['p_mean']:g}, {cfg['p_std']:g})")
    if cfg.get("upsample", 1) != 1:
        k = cfg["upsample"]
        extras.append(f"trained at {k}x the pixels per side (scored at {cfg.get('image_size', 32)})")
    if cfg.get("patch", 1) != 1:
        extras.append(f"{cfg['patch']}x{cfg['patch']} patch stem")
    if cfg.get("lr_decay", "none") != "none":
        extras.append(f"{cfg['lr_decay']} lr decay")
    if cfg.get("ema", 0.999) != 0.999:
        extras.append(f"EMA {cfg['ema']:g}")
    if cfg.get("block_out_channels", [32, 64, 64]) != [32, 64, 64]:
        extras.append("channels " + "/".join(str(c) for c in cfg["block_out_channels"]))
    if ev and ev.get("baseline") and ev.get("sigma_c"):
        extras.append(f"hand-over at {ev['sigma_c']:g}")
    return label + (", " + ", ".join(extras) if extras else "")


def ratio_interval(row: dict[str, Any]) -> list[float]:
    """A row's 95 % interval of the ratio-test rate: stored, or rebuilt from its rate and sample size."""
    n = int(row.get("n") or row.get("n_samples"))
    return list(row.get("rate_ratio_ci95") or bootstrap_rate_ci(round(float(row["rate_ratio"]) * n), n))


def _point(row: dict[str, Any], label: str, study: str, kind: str) -> dict[str, Any]:
    n = int(row.get("n") or row.get("n_samples"))
    rate = float(row["rate_ratio"])
    ci = ratio_interval(row)
    return {
        "label": label,
        "kind": kind,
        "study": study,
        "run": row.get("run"),
        "n_train": row.get("n_train"),
        "step": row.get("step"),
        "n": n,
        "rate_ratio": rate,
        "rate_ratio_ci95": [float(ci[0]), float(ci[1])],
        "rate_cos_0.95": float(row["rate_similarity"]["0.95"]),
        "frechet_distance": float(row["frechet_distance"]),
        "prompt_fidelity": row.get("prompt_fidelity"),
        # scored since the studies carry them (None in older studies): the distance's interval, the novel samples'
        # distance, precision and recall (docs/method.md)
        "frechet_ci95": row.get("frechet_ci95"),
        "frechet_novel": row.get("frechet_novel"),
        "n_novel": row.get("n_novel"),
        "precision": row.get("precision"),
        "recall": row.get("recall"),
    }


def load_points(
    studies: Iterable[str | Path], prompts: str = "classes"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Frontier points (one per scored snapshot) and the runs that failed or are unfinished, from study JSON files.

    Only studies scored with the ``prompts`` plan (``"classes"`` or ``"empty"``) are read: an unconditional
    sample's Frechet distance is not on the same scale as a prompted one's, so the two never share a frontier.
    """
    from ambient.research.studies import check_prompt_plan

    check_prompt_plan(prompts)
    files: list[Path] = []
    for s in studies:
        s = Path(s)
        files += sorted(s.rglob("*.json")) if s.is_dir() else [s]
    points, failed = [], []
    for f in files:
        data = json.loads(f.read_text())
        if (data.get("eval") or {}).get("prompts", "classes") != prompts:
            continue
        if data.get("status") in ("failed", "unfinished"):  # a run that did not finish: listed, with what it scored
            failed.append({"study": str(f), "label": describe_config(data["config"], data.get("eval")), **data})
        rows = data.get("rows")
        if not isinstance(rows, list) or not rows or "rate_ratio" not in rows[0] or "run" not in rows[0]:
            continue  # a probe, not a study of snapshots
        for r in rows:
            if r.get("rate_ratio") is None or r.get("frechet_distance") is None:
                continue
            if "config" in data:
                label = describe_config(data["config"], data.get("eval"))
                kind = "baseline" if data["config"].get("loss") == "baseline" else "ambient"
            else:
                label = LEGACY_LABELS.get(r["run"], Path(r["run"]).name)
                kind = "baseline" if label == "baseline" else "ambient"
            if r.get("step") is None:
                label, kind = "held-out real images", "reference"
            points.append(_point(r, label, str(f), kind))
    return points, failed


def series(points: Sequence[dict[str, Any]]) -> dict[tuple[str, str | None, int | None], list[dict[str, Any]]]:
    """Points grouped by (label, run, N), each group in step order."""
    out: dict[tuple[str, str | None, int | None], list[dict[str, Any]]] = {}
    for p in points:
        out.setdefault((p["label"], p["run"], p["n_train"]), []).append(p)
    for group in out.values():
        group.sort(key=lambda p: p["step"] or 0)
    return out


def baseline_rate_at(points: Sequence[dict[str, Any]], fd: float, n_train: int) -> float | None:
    """The early-stopping frontier at a Frechet distance: the least copying any baseline at N reaches there.

    For each baseline run at N, its rate at ``fd`` is interpolated linearly between the two snapshots
    whose Frechet distances bracket ``fd``; the frontier is the smallest of these (None when no baseline
    run brackets ``fd``).
    """
    best = None
    for (_label, _run, n), group in series(p for p in points if p["kind"] == "baseline").items():
        if n != n_train:
            continue
        for a, b in zip(group, group[1:], strict=False):
            lo, hi = sorted((a["frechet_distance"], b["frechet_distance"]))
            if lo <= fd <= hi:
                t = 0.0 if hi == lo else (fd - a["frechet_distance"]) / (b["frechet_distance"] - a["frechet_distance"])
                rate = a["rate_ratio"] + t * (b["rate_ratio"] - a["rate_ratio"])
                best = rate if best is None else min(best, rate)
    return best


def envelope(points: Sequence[dict[str, Any]], n_train: int, num: int = 80) -> list[dict[str, float | None]]:
    """The baselines' early-stopping frontier at N as plot-ready rows: ``num`` Frechet distances spread on a log
    scale over the baselines' range, each with ``baseline_rate_at`` there (None where no baseline brackets it)."""
    import math

    fds = [p["frechet_distance"] for p in points if p["kind"] == "baseline" and p["n_train"] == n_train]
    fds = [f for f in fds if f > 0]
    if len(fds) < 2 or num < 2:
        return []
    lo, hi = math.log(min(fds)), math.log(max(fds))
    grid = sorted({*fds, *(math.exp(lo + (hi - lo) * i / (num - 1)) for i in range(1, num - 1))})  # ends exact
    return [{"frechet_distance": fd, "rate_ratio": baseline_rate_at(points, fd, n_train)} for fd in grid]


def compare(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Ambient point with the baseline frontier's rate at its Frechet distance and the verdict.

    "below" when the frontier's rate lies above the point's 95 % interval, "above" when below it,
    "on" when inside it, None when no baseline brackets the point's quality.
    """
    out = []
    for p in points:
        if p["kind"] != "ambient":
            continue
        ref = baseline_rate_at(points, p["frechet_distance"], p["n_train"])
        verdict = None
        if ref is not None:
            lo, hi = p["rate_ratio_ci95"]
            verdict = "below" if ref > hi else ("above" if ref < lo else "on")
        out.append({**p, "baseline_frontier_rate": ref, "vs_frontier": verdict})
    return out


def plot_frontier(
    points: Sequence[dict[str, Any]],
    path: str | Path,
    marks: Sequence[dict[str, Any]] = (),
    n_train: int = 100,
    title: str = "",
) -> Path:
    """The frontier at one N as a PNG: ratio-test rate (95 % intervals) against Frechet distance, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(9, 5.5))
    k, kb = 0, 0
    for (label, run, n), group in series(points).items():
        if n != n_train or label == "held-out real images":
            continue
        x = [p["frechet_distance"] for p in group]
        y = [100 * p["rate_ratio"] for p in group]
        err = [
            [100 * (p["rate_ratio"] - p["rate_ratio_ci95"][0]) for p in group],
            [100 * (p["rate_ratio_ci95"][1] - p["rate_ratio"]) for p in group],
        ]
        base = group[0]["kind"] == "baseline"
        name = f"{label} ({Path(run).name})" if run else label
        ax.errorbar(
            x,
            y,
            yerr=err,
            fmt="-o" if base else "--s",
            color=("k", "0.55", "0.75")[min(kb, 2)] if base else f"C{k}",
            lw=2.2 if base else 1.2,
            ms=4,
            capsize=2,
            label=name,
        )
        k, kb = (k, kb + 1) if base else (k + 1, kb)
        for p in group:
            ax.annotate(f"{p['step'] // 1000}k", (p["frechet_distance"], 100 * p["rate_ratio"]), fontsize=6.5)
    for m in marks:
        ax.plot(m["frechet_distance"], 100 * m["rate_ratio"], "*", ms=15, mec="k", color=m.get("color", "gold"))
        ax.annotate(m["label"], (m["frechet_distance"], 100 * m["rate_ratio"]), xytext=(6, -10),
                    textcoords="offset points", fontsize=7.5, weight="bold")  # fmt: skip
    ref = [p for p in points if p["kind"] == "reference" and p["n_train"] == n_train]
    if ref:
        ax.axvline(min(p["frechet_distance"] for p in ref), color="gray", ls=":", lw=1)
        ax.text(min(p["frechet_distance"] for p in ref), 1, " held-out real images", fontsize=7, color="gray")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 3, 5, 10, 20, 30, 50]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("Frechet distance to held-out images (fmnist-cnn features; lower = better quality)")
    ax.set_ylabel("copies: ratio test d1/d2 < 1/3 (%, 95 % bootstrap)")
    ax.set_title(title or f"Quality against memorization, N = {n_train}: below the baseline curves = helps")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1)
    ax.grid(alpha=0.3, which="both")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def shipped_marks(pair_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluated models (``eval*/report.json``) as marks for the frontier plot: "shipped" while the model
    folder is in ``pair_dir``, "retired" once it has left."""
    marks = []
    for report in sorted(Path(pair_dir).glob("eval*/report.json")):
        rep = json.loads(report.read_text())
        for side, color in (("baseline", "white"), ("ambient", "gold")):
            r = rep.get(side)
            if not r or r.get("rate_ratio") is None or "frechet_distance" not in r:
                continue
            folder = Path(str((rep.get("settings") or {}).get(side) or side)).name  # e.g. baseline_up2
            name = folder if side == "baseline" else f"ambient ({report.parent.name})"
            shipped = (Path(pair_dir) / folder).is_dir()  # a model retired from assets/ keeps its mark, so labelled
            prefix = "shipped" if shipped else "retired"
            n = int(r.get("n") or r.get("n_samples"))
            ci = ratio_interval(r)
            marks.append(
                {
                    "label": f"{prefix} {name}",
                    "report": str(report),
                    "side": side,
                    "n": n,
                    "rate_ratio": float(r["rate_ratio"]),
                    "rate_ratio_ci95": ci,
                    "rate_cos_0.95": float(r["rate_similarity"]["0.95"]),
                    "frechet_distance": float(r["frechet_distance"]),
                    "color": color,
                }
            )
    unique = {(m["rate_ratio"], m["frechet_distance"]): m for m in marks}  # one baseline mark, not three
    return list(unique.values())


def read_frontier(folder: str | Path) -> dict[str, Any]:
    """A frontier folder's ``frontier.json`` (as ``scripts/frontier.py`` writes it), checked."""
    path = Path(folder) / "frontier.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("points"), list) or not data["points"]:
        raise ValueError(f"{path} has no frontier points")
    for key in ("rate_ratio", "rate_ratio_ci95", "frechet_distance", "label", "kind"):
        if any(key not in p for p in data["points"]):
            raise ValueError(f"{path}: every point needs {key!r}")
    return data


def summary(data: dict[str, Any]) -> str:
    """What the frontier says, in a few Markdown lines: points, failed runs, who lies below the baseline."""
    pts = data["points"]
    runs = {(p["label"], p.get("run")) for p in pts if p["kind"] != "reference"}
    compared = [c for c in data.get("ambient_vs_frontier", []) if c.get("vs_frontier")]
    below = [c for c in compared if c["vs_frontier"] == "below"]
    lines = [
        f"**The frontier**: {len(pts)} scored snapshots of {len(runs)} runs (failed runs: "
        f"{len(data.get('failed_runs', []))}). Each point is one snapshot: copies by the ratio test (95 % bootstrap "
        "interval) against the Frechet distance. The solid curves are baselines stopped at each snapshot; a variant "
        "helps only where it lies below them, at the same quality."
    ]
    if below:
        # the best-quality one: a gap at a Frechet distance no one would ship says little about the claim
        best = min(below, key=lambda c: c["frechet_distance"])
        lines.append(
            f"{len(below)} of {len(compared)} comparable Ambient snapshots lie below the baseline frontier. The one "
            f"of best quality: **{best['label']}** (N = {best['n_train']}) at step {best['step']}, "
            f"{100 * best['rate_ratio']:.1f} % copies against {100 * best['baseline_frontier_rate']:.1f} % for the "
            f"baseline at the same Frechet distance ({best['frechet_distance']:.1f})."
        )
    else:
        lines.append("No Ambient snapshot lies below the baseline frontier.")
    probes = data.get("bands") or []
    lines += [band_table(b) for b in ([probes] if isinstance(probes, dict) else probes)]  # a dict: one, as before
    return "\n\n".join(lines)


def band_table(bands: dict[str, Any]) -> str:
    """The band probe (``scripts/band_probe.py``) as a Markdown table: which model ran in which noise band."""
    rows = bands["rows"]
    edges = sorted({b["sigma_lo"] for r in rows for b in r["bands"]}, reverse=True)
    names = [f"sigma >= {edges[0]:g}"] + [f"{lo:g} <= sigma < {hi:g}" for hi, lo in zip(edges, edges[1:], strict=False)]
    title = f"{bands['title']}, " if bands.get("title") else ""
    head = f"**Which noise band decides copying** ({title}{bands['settings']['n']} samples a row, same seeds):\n\n"
    out = ["| " + " | ".join([*names, "ratio test", "cos > 0.95", "Frechet distance"]) + " |"]
    out.append("|" + "---|" * (len(names) + 3))
    for r in rows:
        owners = []
        for lo in edges:  # the model whose band contains [lo, next edge up)
            owners.append(next(b["model"] for b in r["bands"] if b["sigma_lo"] <= lo))
        out.append(
            "| "
            + " | ".join(
                [
                    *owners,
                    f"{100 * r['rate_ratio']:.1f} %",
                    f"{100 * r['rate_similarity']['0.95']:.1f} %",
                    f"{r['frechet_distance']:.2f}",
                ]
            )
            + " |"
        )
    return head + "\n".join(out)


def shipped_runs(models_dir: str | Path, ambient: str, baseline: str) -> dict[str, tuple[str, int | None]]:
    """The training runs (and snapshot steps) a pair's two model folders were shipped from, by side, as the
    ``SHIPPED.json`` beside them records it (later entries win); sides it does not name are left out."""
    path = Path(models_dir) / "SHIPPED.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    models: dict[str, str] = {}
    for entry in [*(data.get("history") or []), data]:
        if isinstance(entry, dict) and isinstance(entry.get("models"), dict):
            models.update({str(k): str(v) for k, v in entry["models"].items()})
    out: dict[str, tuple[str, int | None]] = {}
    for side, folder in (("ambient", ambient), ("baseline", baseline)):
        src = models.get(Path(folder).name)
        if not src:
            continue
        m = re.match(r"^(.*?)/(?:snapshots/step_0*(\d+)|model)/?$", src)
        out[side] = (m.group(1), int(m.group(2)) if m.group(2) else None) if m else (src, None)
    return out
