"""Matplotlib figures for the UI (drawing only: the numbers come from the handlers)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ambient.research.frontier import AMBIENT_COLOR, BASELINE_COLOR


def plain_log_axis(axis: Any) -> None:
    """Log-scale tick labels as plain numbers (0.01, 1, 10): matplotlib's default labels are mathtext, whose
    parser is not thread-safe, and the app renders figures of concurrent requests at the same time."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


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
    plain_log_axis(ax.xaxis)
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
        plain_log_axis(a.xaxis)
        a.set_xlabel("sigma_c (left: Ambient alone, right: baseline alone)")
        a.grid(alpha=0.3)
        if sigma_n:
            a.axvline(sigma_n, color="k", ls="--", lw=0.8)
            a.text(sigma_n, 0.95, " sigma_n", transform=a.get_xaxis_transform(), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ interactive figures (plotly)

FRONTIER_TICKS = [1, 2, 3, 5, 7, 10, 20, 30, 50, 100]


def _hover(p: dict[str, Any], title: str) -> str:
    """Hover text of one snapshot: what it is, its run, step, copies with interval, Frechet distance."""
    lo, hi = p["rate_ratio_ci95"]
    step = f"step {p['step']:,}" if p.get("step") is not None else "final model"
    run = Path(str(p.get("run") or "")).name
    fd = f"Frechet distance {p['frechet_distance']:.2f}"
    if p.get("frechet_ci95"):
        fd += f" (95 %: {p['frechet_ci95'][0]:.2f}-{p['frechet_ci95'][1]:.2f})"
    extra = ""
    if p.get("frechet_novel") is not None:
        extra += f"<br>novel samples alone ({p.get('n_novel')}): Frechet distance {p['frechet_novel']:.2f}"
    if p.get("precision") is not None:
        extra += f"<br>precision {p['precision']:.2f}, recall {p['recall']:.2f}"
    return (
        f"<b>{escape(title)}</b><br>run {escape(run)}: {escape(str(p.get('label', '')))}<br>{step}<br>"
        f"copies {100 * p['rate_ratio']:.1f} % (95 %: {100 * lo:.1f}-{100 * hi:.1f})<br>"
        f"{fd}{extra}<br>{p.get('n', '?')} samples"
    )


def frontier_figure(
    data: dict[str, Any], n_train: int, highlight: dict[str, tuple[str, int | None]] | None = None, title: str = ""
) -> Any:
    """The frontier at one training-set size as an interactive plotly figure: the baselines' envelope and the
    pair's two runs (``highlight``: side -> (run, shipped step)) drawn strong, every other run faint (off until
    switched on in the legend where the pair's runs are drawn); hover shows run, step, copies with interval,
    Frechet distance."""
    import plotly.graph_objects as go

    from ambient.research.frontier import envelope, series

    highlight = highlight or {}
    mine = {run: side for side, (run, _) in highlight.items()}
    points = data["points"]
    fig = go.Figure()
    env = envelope(points, n_train)
    if env:
        fig.add_trace(
            go.Scatter(
                x=[r["frechet_distance"] for r in env],
                y=[None if r["rate_ratio"] is None else 100 * r["rate_ratio"] for r in env],
                mode="lines",
                line={"color": "black", "width": 3, "dash": "dash"},
                name="baselines' frontier (any baseline stopped early)",
                hovertemplate="baselines' frontier<br>Frechet distance %{x:.2f}<br>copies %{y:.1f} %<extra></extra>",
            )
        )
    groups = [(k, g) for k, g in series(points).items() if k[2] == n_train and g[0]["kind"] != "reference"]
    groups.sort(key=lambda kg: (kg[0][1] not in mine, kg[1][0]["kind"] != "baseline"))  # the pair's runs first
    any_mine = any(run in mine for (_label, run, _n), _g in groups)
    for (label, run, _n), group in groups:
        kind = group[0]["kind"]
        side = mine.get(run)
        short = Path(run).name if run else label
        if side:
            color = AMBIENT_COLOR if side == "ambient" else BASELINE_COLOR
            name = f"this pair's {'Ambient model' if side == 'ambient' else 'baseline'} ({short})"
            style = {"line": {"color": color, "width": 3}, "marker": {"size": 7}, "opacity": 1.0, "visible": True}
        else:
            color = "#888888" if kind == "baseline" else "#9ab7d3"
            name = f"{'baseline' if kind == 'baseline' else 'Ambient'}: {short}"
            style = {"line": {"color": color, "width": 1}, "marker": {"size": 5}, "opacity": 0.45}
            style["visible"] = "legendonly" if any_mine else True  # no run of this pair here: all faint, shown
        fig.add_trace(
            go.Scatter(
                x=[p["frechet_distance"] for p in group],
                y=[100 * p["rate_ratio"] for p in group],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [100 * (p["rate_ratio_ci95"][1] - p["rate_ratio"]) for p in group],
                    "arrayminus": [100 * (p["rate_ratio"] - p["rate_ratio_ci95"][0]) for p in group],
                    "thickness": 1,
                    "width": 2,
                    "color": color,
                },
                mode="lines+markers",
                name=name,
                text=[_hover(p, name) for p in group],
                hovertemplate="%{text}<extra></extra>",
                **style,
            )
        )
        shipped_step = highlight.get(side, (None, None))[1] if side else None
        shipped = [p for p in group if shipped_step is not None and p["step"] == shipped_step]
        if shipped:
            fig.add_trace(
                go.Scatter(
                    x=[p["frechet_distance"] for p in shipped],
                    y=[100 * p["rate_ratio"] for p in shipped],
                    mode="markers",
                    marker={"symbol": "star", "size": 16, "color": color, "line": {"color": "black", "width": 1}},
                    name=f"shipped {'Ambient model' if side == 'ambient' else 'baseline'} (step {shipped_step:,})",
                    text=[_hover(p, f"shipped {name}") for p in shipped],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    ref = [p["frechet_distance"] for p in points if p["kind"] == "reference" and p["n_train"] == n_train]
    if ref:
        top = max([100 * p["rate_ratio_ci95"][1] for p in points if p["n_train"] == n_train] + [10.0])
        fig.add_trace(
            go.Scatter(
                x=[min(ref)] * 2,
                y=[0, top],
                mode="lines+text",
                text=["", "held-out real images"],
                textposition="top right",
                textfont={"size": 10, "color": "gray"},
                line={"color": "gray", "dash": "dot", "width": 1},
                name="held-out real images (the quality to reach)",
                hovertemplate=f"held-out real images<br>Frechet distance {min(ref):.2f}<extra></extra>",
            )
        )
    fig.update_xaxes(
        type="log", tickvals=FRONTIER_TICKS, title="Frechet distance to held-out images (lower = better quality)"
    )
    fig.update_yaxes(title="copies: ratio test d1/d2 < 1/3 (%)", rangemode="tozero")
    fig.update_layout(
        title={
            "text": title
            or f"N = {n_train} training images: below the dashed frontier = fewer copies at equal quality",
            "font": {"size": 14},
        },  # fmt: skip
        template="plotly_white",
        height=470,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"font": {"size": 10}, "itemclick": "toggle", "groupclick": "toggleitem"},
        hovermode="closest",
    )
    return fig


def similarity_figure(sim: dict[str, Any]) -> Any:
    """Histograms of each sample's nearest-training-image ratio d1/d2 and cosine, per side and for held-out real
    images scored the same way, with the copy thresholds drawn (plotly)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("ratio test d1/d2 (left of the dashed line: a copy)", "cosine of the nearest training image"),
    )
    groups = [
        ("baseline", "Baseline", BASELINE_COLOR),
        ("ambient", "Ambient", AMBIENT_COLOR),
        ("held_out", "held-out real images", "#2ca02c"),
    ]
    for key, name, color in groups:
        g = sim.get(key)
        if not g:
            continue
        for col, field, bins in ((1, "ratio", (0, 1.05, 0.035)), (2, "cosine", (0.5, 1.0, 0.0125))):
            vals = [v for v in g.get(field, []) if v == v]
            fig.add_trace(
                go.Histogram(
                    x=vals,
                    name=f"{name} ({len(vals)})",
                    legendgroup=key,
                    showlegend=col == 1,
                    marker={"color": color},
                    opacity=0.55,
                    histnorm="percent",
                    xbins={"start": bins[0], "end": bins[1], "size": bins[2]},
                    hovertemplate=f"{name}<br>{field} %{{x}}<br>%{{y:.1f}} % of them<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.add_vline(x=float(sim.get("ratio_threshold", 1 / 3)), line={"color": "black", "dash": "dash"}, row=1, col=1)
    fig.add_vline(x=float(sim.get("cosine_threshold", 0.95)), line={"color": "black", "dash": "dot"}, row=1, col=2)
    fig.update_layout(
        barmode="overlay",
        template="plotly_white",
        height=340,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.18},
    )
    fig.update_yaxes(title_text="% of images", row=1, col=1)
    return fig
