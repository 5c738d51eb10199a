"""Matplotlib figures for the UI (drawing only: the numbers come from the handlers)."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

AMBIENT_COLOR = "#1f77b4"
BASELINE_COLOR = "#d62728"


def trajectory_figure(
    ambient: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    sigma_c: float,
    threshold: float,
    sigma_n: float | None = None,
    title: str = "",
    ambient_label: str = "Ambient",
) -> Figure:
    """Nearest-training-image similarity of x0_hat against sigma for both models, sigma_c and sigma_n marked."""
    fig = Figure(figsize=(7.5, 3.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for rows, color, label in ((ambient, AMBIENT_COLOR, ambient_label), (baseline, BASELINE_COLOR, "Baseline")):
        if rows:
            ax.plot([r["sigma"] for r in rows], [r["similarity"] for r in rows], "-o", ms=3, color=color, label=label)
        lock = _lock_on(rows, threshold)
        if lock is not None:
            ax.annotate(
                f"locks onto #{lock.get('id', lock['position'])}",
                (lock["sigma"], lock["similarity"]),
                xytext=(8, -16),
                textcoords="offset points",
                fontsize=8,
                color=color,
                arrowprops={"arrowstyle": "->", "color": color},
            )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.axhline(threshold, color="gray", ls=":", lw=1)
    ax.text(
        0.01, threshold, f" copy threshold {threshold:g}", transform=ax.get_yaxis_transform(), va="bottom", fontsize=8
    )
    ax.axvline(sigma_c, color="k", ls="--", lw=1)
    ax.text(sigma_c, 0.02, f"sigma_c={sigma_c:.3g} ", transform=ax.get_xaxis_transform(), fontsize=8, ha="right")
    if sigma_n:
        ax.axvline(sigma_n, color="#2ca02c", ls="-.", lw=1)
        ax.text(sigma_n, 0.92, f" sigma_n={sigma_n:g}", transform=ax.get_xaxis_transform(), fontsize=8, color="#2ca02c")
    ax.set_xlabel("sigma (sampling runs right to left: high noise to low)")
    ax.set_ylabel("nearest training image\nsimilarity of x0_hat")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _lock_on(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """The first step from which x0_hat stays above the threshold on the same training image, if any."""
    if not rows or rows[-1]["similarity"] <= threshold:
        return None
    first = None
    for r in reversed(rows):
        if r["similarity"] > threshold and r["position"] == rows[-1]["position"]:
            first = r
        else:
            break
    return first


def sweep_figure(rows: list[dict[str, Any]], sigma_n: float | None = None, title: str = "") -> Figure:
    """Memorization rates and (when present) quality against sigma_c, log scale, sigma_n marked."""
    fig = Figure(figsize=(9, 3.4), dpi=100)
    ax = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    from ambient.evaluate import sweep_positions

    sc = sweep_positions(rows)  # the baseline-alone row (sigma_c null) just past sigma_max
    keys = sorted({k for r in rows for k in (r.get("rate_similarity") or {})}, key=float, reverse=True)
    for k, style in zip(keys, ("-o", "--o", ":o", "-.o"), strict=False):
        ax.plot(
            sc, [100 * (r.get("rate_similarity") or {}).get(k, float("nan")) for r in rows], style, label=f"cos > {k}"
        )
    if any("rate_ratio" in r for r in rows):
        ax.plot(sc, [100 * r.get("rate_ratio", float("nan")) for r in rows], "-s", label="ratio test < 1/3")
    ax.set_ylabel("copies (%)")
    ax.legend(fontsize=8)
    if any("frechet_distance" in r for r in rows):
        ax2.plot(sc, [r.get("frechet_distance", float("nan")) for r in rows], "-o", color="C3")
        ax2.set_ylabel("Frechet distance (lower = better)")
    else:
        ax2.plot(sc, [r.get("mean_similarity", float("nan")) for r in rows], "-o", color="C2")
        ax2.set_ylabel("mean nearest similarity")
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("sigma_c (left: Ambient alone, right: baseline alone)")
        a.grid(alpha=0.3)
        if sigma_n:
            a.axvline(sigma_n, color="k", ls="--", lw=0.8)
            a.text(sigma_n, 0.95, " sigma_n", transform=a.get_xaxis_transform(), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
