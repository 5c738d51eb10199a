"""Layout and wiring of the Gradio app (no maths, no model code: everything goes through ``demo.handlers``)."""

from __future__ import annotations

import json
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ambient.research.frontier import shipped_runs
from demo import compare as cmp
from demo import handlers as h
from demo.handlers import Handlers, InputError
from demo.pairs import ModelPair, PairError
from demo.plots import frontier_figure, similarity_figure, sweep_figure, trajectory_figure

CSS = """
.banner {padding: 2px 8px; border-radius: 6px; background: #eef4ff; border: 1px solid #c9dafc; font-size: 12px;}
#intro h1 {margin-bottom: 2px;}
.headline {font-size: 15px; padding: 4px 10px; border-left: 4px solid #1f77b4; background: #f6f9ff;}
#compare {border: 1px solid #ddd; border-radius: 6px; padding: 6px;}
#compare img {image-rendering: pixelated;}
.banner-warn {padding: 6px 12px; border-radius: 6px; background: #fff4e5; border: 1px solid #f5c27a;}
.nn-panel {font-size: 12px;}
.nn-heading {font-weight: 600; font-size: 14px; margin: 4px 0 6px 0;}
.nn-row {display: flex; gap: 6px; align-items: flex-end; margin-bottom: 6px; flex-wrap: wrap;}
.nn-row figure {margin: 0; text-align: center;}
.nn-row figcaption {font-size: 11px; line-height: 1.2; max-width: 72px; white-space: nowrap;}
.nn-row img {image-rendering: pixelated; border: 2px solid #bbb; border-radius: 3px; display: block; margin: auto;}
.nn-row img.copy, .nn-row img.nn-hit {border: 3px solid #d62728;}
.nn-sample {padding-right: 8px; border-right: 1px dashed #bbb;}
.nn-copy {background: #d62728; color: white; font-weight: 700; padding: 0 4px; border-radius: 3px;}
.nn-novel {background: #2ca02c; color: white; padding: 0 4px; border-radius: 3px;}
.cutoff-scale {position: relative; height: 34px; margin: -6px 8px 4px 8px; font-size: 11px; color: #555;}
.cutoff-scale .tick {position: absolute; top: 0; transform: translateX(-50%); border-left: 1px solid #999;
  padding-top: 2px; height: 8px;}
.cutoff-scale .tick span {position: absolute; top: 9px; left: -12px; width: 24px; text-align: center;}
.cutoff-scale .sn {position: absolute; top: 0; transform: translateX(-50%); color: #2ca02c; font-weight: 700;
  white-space: nowrap;}
.cutoff-ends {display: flex; justify-content: space-between; font-size: 12px; margin: 0 4px;}
.gallery-pixelated img {image-rendering: pixelated;}
.gallery-auto .caption-label {font-size: 11px !important; padding: 1px 4px !important; max-width: calc(100% - 6px) !important;
  left: 3px !important; bottom: 3px !important;}
.gallery-auto .grid-container {padding-top: 30px !important;}
.gallery-auto .grid-wrap.fixed-height {min-height: 0 !important; height: auto !important; max-height: none !important;}
"""

INTRO = """# Ambient Explorer
Two diffusion models trained on the same few images and sampled from the same noise: a **baseline** trained the usual
way, and an **Ambient** model that never saw a clean image at high noise. How often does each **copy** a training image?
"""

GALLERY_HINT = (
    "Press **Generate**: both sides start from the same noise (image *i* on the left pairs with image *i* on the "
    "right). Each image is marked **COPY** or **novel**; click one to see it against its nearest training image."
)

MAX_FRONTIER_PLOTS = 3  # one plot per training-set size

API_DOC = """### Use it from code
Named endpoints: `/generate`, `/neighbours`, `/sweep` (JSON in, JSON out; images as base64 PNG).

```python
from gradio_client import Client
import base64, io
from PIL import Image

client = Client("http://127.0.0.1:7860/")
r = client.predict(pair="", prompt="a photo of a sneaker", seed=0, n_images=4, steps=18,
                   guidance=1.0, sigma_c=None, mode="handover", api_name="/generate")
print(r["copies"])                      # copies among the 4 samples of each side, e.g. {'ambient': ..., 'baseline': ...}
print(r["baseline"][0]["neighbours"])   # [{'id': ..., 'position': ..., 'similarity': ...}, ...]
Image.open(io.BytesIO(base64.b64decode(r["ambient"][0]["png_base64"]))).save("ambient0.png")

png = base64.b64encode(open("query.png", "rb").read()).decode()
print(client.predict(pair="", image=png, k=4, api_name="/neighbours")["is_copy"])
print(client.predict(pair="", live=False, api_name="/sweep")["rows"][:1])  # the shipped sigma_c sweep
```
`sigma_c=None` means the pair's default cutoff: Ambient alone for a one-network model, a hand-over at its sigma_n
for a high-noise-only one; `sigma_c` equal to the pair's sigma_max means the baseline alone.
"""


def _gpu(fn: Callable) -> Callable:
    """``spaces.GPU`` when running on a Hugging Face ZeroGPU Space, the function itself otherwise."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


def cutoff_scale_html(pair: ModelPair) -> str:
    """Sigma tick labels under the log10 slider, the Ambient model's sigma_n marked, and what the ends mean."""
    lo, hi = h.slider_range(pair)

    def pos(sigma: float) -> float:
        return 100 * (math.log10(sigma) - lo) / (hi - lo)

    ticks = [t for t in (0.01, 0.1, 1, 10) if pair.sigma_min < t < pair.sigma_max]
    marks = [
        f'<div class="tick" style="left:{pos(t):.2f}%"><span>{t:g}</span></div>'
        for t in [pair.sigma_min, *ticks, pair.sigma_max]
    ]
    if pair.sigma_n and pair.sigma_min < pair.sigma_n < pair.sigma_max:
        marks.append(
            f'<div class="sn" style="left:{pos(pair.sigma_n):.2f}%; top:20px">&#9650; sigma_n={pair.sigma_n:g}</div>'
        )
    return (
        f'<div class="cutoff-scale">{"".join(marks)}</div>'
        '<div class="cutoff-ends"><span>&#9664; Ambient alone</span><span>baseline alone &#9654;</span></div>'
    )


def _df(rows: list[dict[str, Any]], pair: ModelPair | None = None) -> pd.DataFrame:
    headers, data = h.sweep_table(rows, pair.sigma_min if pair else None, pair.sigma_max if pair else None)
    return pd.DataFrame(data, columns=headers)


def _new_seed() -> int:
    """A fresh random seed in the seed box's range."""
    return secrets.randbelow(h.MAX_SEED + 1)


def _first_pair(handlers: Handlers) -> ModelPair | None:
    """The registry's default pair, loaded, or None when there is none or it cannot be loaded."""
    default = handlers.registry.default
    try:
        return handlers.registry.get(default) if default else None
    except PairError:
        return None


def _spec_text(spec: Any, key: str) -> str:
    """``summary`` or ``card_text`` of a pair's config entry: from the spec when the loader parses it, else read
    from the entry itself (its ``card`` file beside the models), else ``description`` (older configs)."""
    value = getattr(spec, key, None)
    if isinstance(value, str) and value.strip():
        return value.strip()
    entry: dict[str, Any] = {}
    cfg = getattr(spec, "config_path", None)
    if cfg is not None:
        try:
            data = json.loads(Path(cfg).read_text(encoding="utf-8"))
            entry = next((e for e in data.get("pairs", []) if isinstance(e, dict) and e.get("name") == spec.name), {})
        except (OSError, ValueError, AttributeError):
            entry = {}
    if key == "summary" and isinstance(entry.get("summary"), str):
        return entry["summary"].strip()
    if key == "card_text" and isinstance(entry.get("card"), str):
        base = Path(spec.base_dir).resolve()
        path = (base / entry["card"]).resolve()
        if path.suffix == ".md" and path.is_relative_to(base):
            try:
                return path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                pass
    return (getattr(spec, "description", "") or "").strip()


def headline_markdown(H: Handlers, name: str | None) -> str:
    """The selected pair's headline result in one line (or what is wrong with the pair)."""
    try:
        p = H.registry.get(name or None)
    except PairError:
        return H.pair_status(name)
    summary = _spec_text(p.spec, "summary")
    if not summary:
        return "No measured result ships with this pair: press **Generate** to compare both sides."
    if summary == (p.spec.description or "").strip():  # an older entry: its description, cut to one sentence
        summary = summary.split(". ")[0].rstrip(".") + "."
    if summary.lower().startswith("measured"):
        return summary
    return f"**Measured** {summary[0].lower()}{summary[1:]}"  # "Measured with the empty prompt (Heun, ...), ..."


def card_markdown(H: Handlers, name: str | None) -> str:
    """The pair's model card (training, steps, what was measured and how far from the goal) for "About this pair"."""
    try:
        p = H.registry.get(name or None)
    except PairError:
        return ""
    card = _spec_text(p.spec, "card_text")
    status = H.pair_status(name)
    return "" if not card or card in status else card


def _frontier_parts(p: ModelPair | None) -> dict[str, Any]:
    """What the Trade-off tab shows of a pair's frontier: its text, one figure per training-set size, the band
    tables and the data (all empty when the pair ships no frontier)."""
    from ambient.research.frontier import band_table, summary

    data = p.frontier if p is not None else None
    if not data:
        return {
            "md": "No frontier ships with this pair (`python scripts/frontier.py <pair folder>` writes one).",
            "figs": [],
            "bands": "",
            "json": None,
        }
    probes = data.get("bands") or []
    probes = [probes] if isinstance(probes, dict) else probes
    spec = p.spec
    runs = shipped_runs((Path(spec.base_dir) / spec.ambient).parent, spec.ambient, spec.baseline)
    sizes = sorted({int(q["n_train"]) for q in data["points"] if q.get("n_train") and q["kind"] == "baseline"})
    sizes.sort(key=lambda n: not any(r in {q.get("run") for q in data["points"] if q.get("n_train") == n}
                                     for r, _ in runs.values()))  # fmt: skip  # the pair's own N first
    figs = [frontier_figure(data, n, runs) for n in sizes[:MAX_FRONTIER_PLOTS]]
    md = summary({**data, "bands": []})
    md += (
        "\n\nHover a point for its run, step, copies (95 % interval) and Frechet distance. This pair's two runs are "
        "drawn strong (stars: the shipped snapshots); every other run is off until you click its name in the legend. "
        "The snapshots were scored with prompts over the classes, so their figures differ from the headline's, "
        "which is measured through the app's defaults (empty prompt)."
    )
    return {
        "md": md,
        "figs": figs,
        "bands": "\n\n".join(band_table(b) for b in probes) or "No band probe ships with this pair.",
        "json": {k: data[k] for k in ("what", "commit", "command", "points", "ambient_vs_frontier") if k in data},
    }


def _similarity(p: ModelPair | None) -> tuple[str, Any]:
    """The shipped per-sample similarity figures (``similarity.json`` beside the pair's sweep) as text and figure."""
    if p is None or not getattr(p.spec, "sweep", None):
        return "", None
    path = Path(p.spec.base_dir) / Path(p.spec.sweep).parent / "similarity.json"
    try:
        sim = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (
            "No per-sample similarity data ships with this pair (`python scripts/similarity.py --pair "
            f"{p.spec.name} --out <its eval folder>/similarity.json` writes it).",
            None,
        )
    n = sim.get("n", "?")
    line = (
        f"#### How close each image is to its nearest training image ({n} samples a side, {n} held-out images)\n"
        "Every sample through the app's defaults, scored as the galleries score it, beside real Fashion-MNIST test "
        "images the models never saw, scored against the same training set. Left of the dashed line: copies."
    )
    novel = [
        f"{name}: {sim[side]['novel_frechet_distance']:.2f} on its {sim[side]['novel_n']} novel samples"
        for side, name in (("baseline", "baseline"), ("ambient", "Ambient model"))
        if isinstance(sim.get(side), dict) and "novel_frechet_distance" in sim[side]
    ]
    if novel:
        line += (
            f" What each side makes when it does not copy (Frechet distance to as many held-out images, lower = "
            f"better; fewer samples push it up): {'; '.join(novel)}."
        )
    return line, similarity_figure(sim)


# ------------------------------------------------------------------------------ layout: one builder per part


@dataclass
class _Header:
    """Above the tabs: the pair chooser, its headline result, its card, and the last generate result (shared)."""

    pair: gr.Dropdown
    headline: gr.Markdown
    status: gr.Markdown
    card: gr.Markdown
    last: gr.State


@dataclass
class _GenerateTab:
    """The "Generate side by side" tab."""

    prompt: gr.Textbox
    seed: gr.Number
    dice: gr.Button
    randomize: gr.Checkbox
    n_images: gr.Slider
    steps: gr.Slider
    guidance: gr.Slider
    cutoff: gr.Slider
    scale_html: gr.HTML
    cutoff_md: gr.Markdown
    mode: gr.Radio
    go: gr.Button
    summary: gr.Markdown
    g_amb: gr.Gallery
    g_base: gr.Gallery
    compare_box: gr.Column
    compare_slider: gr.ImageSlider
    compare_diff: gr.Image
    compare_md: gr.Markdown
    nn_amb: gr.HTML
    nn_base: gr.HTML
    traj_dd: gr.Dropdown
    traj_plot: gr.Plot
    raw: gr.JSON
    examples: gr.Examples


@dataclass
class _TradeoffTab:
    """The "Trade-off" tab: the frontier, the similarity histograms, the sigma_c sweep, then the research depth
    (band tables, sweep table, live recompute, static plots and data) one click away."""

    frontier_md: gr.Markdown
    frontier_plots: list[gr.Plot]
    similarity_md: gr.Markdown
    similarity_plot: gr.Plot
    sweep_md: gr.Markdown
    sweep_plot: gr.Plot
    sweep_tab: gr.Dataframe
    bands_md: gr.Markdown
    frontier_img: gr.Image
    sweep_png: gr.Image
    frontier_json: gr.JSON
    live_n: gr.Slider
    live_points: gr.Slider
    live_steps: gr.Slider
    live_btn: gr.Button
    live_md: gr.Markdown
    live_plot: gr.Plot
    live_tab: gr.Dataframe


@dataclass
class _CheckTab:
    """The "Check an image" tab."""

    upload: gr.File
    check_btn: gr.Button
    query_img: gr.Image
    check_md: gr.Markdown
    check_gallery: gr.Gallery
    train_gallery: gr.Gallery


def _header(H: Handlers, warning: str) -> _Header:
    """Title and the claim in one sentence, an optional warning, the pair chooser with its headline result, and
    the pair's card (collapsed)."""
    default = H.registry.default
    gr.Markdown(INTRO, elem_id="intro")
    if warning:
        gr.Markdown(warning, elem_classes=["banner-warn"], elem_id="banner-warning")
    with gr.Row(equal_height=True):
        pair_dd = gr.Dropdown(
            choices=H.registry.choices(), value=default, label="Model pair", scale=2, interactive=True, elem_id="pair"
        )
        with gr.Column(scale=3):
            headline = gr.Markdown(headline_markdown(H, default), elem_id="pair-headline", elem_classes=["headline"])
    with gr.Accordion("About this pair", open=False, elem_id="about-pair"):
        card = gr.Markdown(card_markdown(H, default), elem_id="pair-card")
        status = gr.Markdown(H.pair_status(default) if default else H.pair_status(None), elem_id="pair-status")
    return _Header(pair=pair_dd, headline=headline, status=status, card=card, last=gr.State(None))


def _generate_tab(first: ModelPair | None, banner: str, sampler: str = h.DEFAULT_SAMPLER) -> _GenerateTab:
    """The controls with Generate on the first screen; the two galleries, the comparison of a selected sample
    with its nearest training image, the neighbours; trajectories; raw JSON; examples."""
    lo, hi = h.slider_range(first) if first else (math.log10(0.002), math.log10(80.0))
    start = h.slider_start(first) if first else lo
    with gr.Tab("Generate side by side", id="generate"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                prompt = gr.Textbox(
                    label="Prompt (empty = unconditional)",
                    placeholder="e.g. a photo of a sneaker",
                    max_lines=2,
                    elem_id="prompt",
                )
                with gr.Row():
                    seed = gr.Number(
                        value=0,
                        precision=0,
                        minimum=0,
                        maximum=h.MAX_SEED,
                        label="Seed (image i: seed + i)",
                        elem_id="seed",
                        scale=3,
                    )
                    dice = gr.Button("New seed", scale=1, min_width=60, elem_id="dice", size="sm")
                n_images = gr.Slider(1, h.MAX_IMAGES, value=4, step=1, label="Images per model", elem_id="n")
                cutoff = gr.Slider(
                    lo,
                    hi,
                    value=start,
                    step=0.01,
                    label="Noise cutoff: log10(sigma_c)",
                    elem_id="cutoff",
                    info="The Ambient model above sigma_c, the baseline below.",
                )
                scale_html = gr.HTML(cutoff_scale_html(first) if first else "")
                cutoff_md = gr.Markdown(
                    h.cutoff_label(h.sigma_from_slider(start, first), first) if first else "", elem_id="cutoff-label"
                )
                gr.Markdown(banner or h.device_banner("cpu"), elem_classes=["banner"], elem_id="banner")
                with gr.Accordion("More settings", open=False, elem_id="more-settings"):
                    randomize = gr.Checkbox(value=False, label="New random seed on every Generate")
                    start_steps = first.start_steps(sampler) if first else 20
                    steps = gr.Slider(
                        1, h.MAX_STEPS, value=start_steps, step=1, label=f"Sampler steps ({h.SAMPLER_NAMES[sampler]})"
                    )
                    guidance = gr.Slider(0, h.MAX_GUIDANCE, value=1.0, step=0.1, label="Guidance scale (1 = off)")
                    mode = gr.Radio(
                        [("hand-over", "handover"), ("truncate", "truncate")],
                        value="handover",
                        label="Cutoff mode",
                        info="truncate: stop the Ambient run at sigma_c and show its estimate x0_hat.",
                    )
            with gr.Column(scale=3):
                with gr.Row(equal_height=False):
                    summary = gr.Markdown(GALLERY_HINT, elem_id="summary")
                    go = gr.Button(
                        "Generate", variant="primary", size="lg", elem_id="generate-btn", scale=0, min_width=180
                    )
                with gr.Row():
                    g_amb = gr.Gallery(
                        label="Ambient (with the cutoff)",
                        columns=4,
                        height="auto",
                        elem_id="gallery-ambient",
                        elem_classes=["gallery-pixelated", "gallery-auto"],
                        object_fit="contain",
                        format="png",
                        allow_preview=False,
                    )
                    g_base = gr.Gallery(
                        label="Baseline (alone)",
                        columns=4,
                        height="auto",
                        elem_id="gallery-baseline",
                        elem_classes=["gallery-pixelated", "gallery-auto"],
                        object_fit="contain",
                        format="png",
                        allow_preview=False,
                    )
                with gr.Column(visible=False, elem_id="compare") as compare_box:
                    compare_md = gr.Markdown(elem_id="compare-caption")
                    with gr.Row():
                        compare_slider = gr.ImageSlider(
                            label="Sample | nearest training image (drag)",
                            type="pil",
                            format="png",
                            interactive=False,
                            max_height=320,
                            elem_id="compare-slider",
                            elem_classes=["gallery-pixelated"],
                            scale=3,
                        )
                        compare_diff = gr.Image(
                            label="Difference (white: the same)",
                            type="pil",
                            format="png",
                            interactive=False,
                            height=320,
                            elem_id="compare-diff",
                            elem_classes=["gallery-pixelated"],
                            scale=2,
                        )
                with gr.Row():
                    nn_amb = gr.HTML("", elem_id="nn-ambient")
                    nn_base = gr.HTML("", elem_id="nn-baseline")
        with gr.Accordion("The moment of copying: similarity of x0_hat at every step", open=True):
            with gr.Row():
                traj_dd = gr.Dropdown(choices=[], label="Image", scale=1, elem_id="traj-image")
                traj_plot = gr.Plot(label="Nearest-training-image similarity against sigma", scale=4)
        with gr.Accordion("Raw result (JSON)", open=False):
            raw = gr.JSON()
        ex_lo, ex_sn = round(lo, 2), round(math.log10(first.sigma_n), 2) if first and first.sigma_n else 0.0
        examples = gr.Examples(
            [
                ["", 0, ex_lo, "handover"],
                ["a photo of a sneaker", 0, ex_sn, "handover"],
                ["a photo of a bag", 3, round(hi, 2), "handover"],
                ["a photo of a dress", 7, ex_sn, "truncate"],
            ],
            inputs=[prompt, seed, cutoff, mode],
            label="Examples (results are cached once computed)",
        )
    return _GenerateTab(
        prompt=prompt,
        seed=seed,
        dice=dice,
        randomize=randomize,
        n_images=n_images,
        steps=steps,
        guidance=guidance,
        cutoff=cutoff,
        scale_html=scale_html,
        cutoff_md=cutoff_md,
        mode=mode,
        go=go,
        summary=summary,
        g_amb=g_amb,
        g_base=g_base,
        compare_box=compare_box,
        compare_slider=compare_slider,
        compare_diff=compare_diff,
        compare_md=compare_md,
        nn_amb=nn_amb,
        nn_base=nn_base,
        traj_dd=traj_dd,
        traj_plot=traj_plot,
        raw=raw,
        examples=examples,
    )


def _tradeoff_tab(H: Handlers, default: str | None, first: ModelPair | None) -> _TradeoffTab:
    """The frontier (interactive, one plot per training-set size), the similarity histograms, the sweep of
    sigma_c; then, collapsed: where copying is decided (band tables), the sweep table, the live recompute, the
    static plots and the frontier's data."""
    with gr.Tab("Trade-off", id="tradeoff"):
        fr = _frontier_parts(first)
        gr.Markdown("### Quality against memorization: every snapshot of every run")
        frontier_md = gr.Markdown(fr["md"], elem_id="frontier-md")
        frontier_plots = [
            gr.Plot(
                fr["figs"][i] if i < len(fr["figs"]) else None,
                show_label=False,
                visible=i < len(fr["figs"]),
                elem_id=f"frontier-plot-{i}",
            )
            for i in range(MAX_FRONTIER_PLOTS)
        ]
        sim_md0, sim_fig0 = _similarity(first)
        similarity_md = gr.Markdown(sim_md0, elem_id="similarity-md")
        similarity_plot = gr.Plot(sim_fig0, show_label=False, visible=sim_fig0 is not None, elem_id="similarity-plot")
        gr.Markdown("### The noise cutoff of this pair: hand-over sweep of sigma_c")
        sv0 = H.precomputed_sweep(default) if first else None
        sweep_md = gr.Markdown(sv0.markdown if sv0 else "")
        has_rows = bool(sv0 and sv0.rows)
        sweep_plot = gr.Plot(
            sweep_figure(sv0.rows, sv0.sigma_n, "precomputed") if has_rows else None,
            label="Memorization and quality against sigma_c",
            visible=has_rows,
        )
        with gr.Accordion("Sweep table", open=False, elem_id="sweep-table"):
            sweep_tab = gr.Dataframe(
                _df(sv0.rows, first) if has_rows else None, label="Sweep", interactive=False, visible=has_rows
            )
        with gr.Accordion(
            "Where copying is decided: which model runs in which noise band", open=False, elem_id="bands"
        ):
            bands_md = gr.Markdown(fr["bands"], elem_id="bands-md")
        with gr.Accordion("Recompute the sweep live", open=False, elem_id="live-sweep"):
            gr.Markdown("Hand-over sweep; each cutoff samples every seed.")
            with gr.Row():
                live_n = gr.Slider(2, 64, value=8, step=1, label="Seeds")
                live_points = gr.Slider(2, 9, value=4, step=1, label="Cutoffs")
                live_steps = gr.Slider(2, 40, value=12, step=1, label="Steps")
                live_btn = gr.Button("Recompute live", elem_id="sweep-btn")
            live_md = gr.Markdown()
            live_plot = gr.Plot(label="Live sweep")
            live_tab = gr.Dataframe(label="Live sweep", interactive=False)
        with gr.Accordion("Static plots and data (PNG, JSON)", open=False, elem_id="tradeoff-data"):
            fr_img0 = H.precomputed_frontier(default)[1] if first else None
            frontier_img = gr.Image(
                fr_img0,
                label="The frontier as shipped (PNG; stars: the shipped models)",
                interactive=False,
                type="pil",
                visible=fr_img0 is not None,
            )
            sweep_png = gr.Image(sv0.plot if sv0 else None, label="sweep.png", interactive=False, type="pil")
            frontier_json = gr.JSON(fr["json"], label="Frontier points (frontier.json)")
    return _TradeoffTab(
        frontier_md=frontier_md,
        frontier_plots=frontier_plots,
        similarity_md=similarity_md,
        similarity_plot=similarity_plot,
        sweep_md=sweep_md,
        sweep_plot=sweep_plot,
        sweep_tab=sweep_tab,
        bands_md=bands_md,
        frontier_img=frontier_img,
        sweep_png=sweep_png,
        frontier_json=frontier_json,
        live_n=live_n,
        live_points=live_points,
        live_steps=live_steps,
        live_btn=live_btn,
        live_md=live_md,
        live_plot=live_plot,
        live_tab=live_tab,
    )


def _check_tab(H: Handlers, default: str | None, first: ModelPair | None) -> _CheckTab:
    """Upload an image (or pick a training image) and see its nearest training images."""
    with gr.Tab("Check an image", id="check"):
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Upload an image", file_types=["image"], type="filepath")
                check_btn = gr.Button("Find nearest training images", variant="primary")
                query_img = gr.Image(label="What the index sees", interactive=False, height=160)
            with gr.Column(scale=2):
                check_md = gr.Markdown()
                check_gallery = gr.Gallery(
                    label="Nearest training images",
                    columns=5,
                    height="auto",
                    format="png",
                    elem_classes=["gallery-pixelated", "gallery-auto"],
                    elem_id="check-gallery",
                )
        gr.Markdown("Or pick a training image (its nearest neighbour is itself: a copy by definition).")
        train_gallery = gr.Gallery(
            value=H.training_gallery(default) if first else None,
            label="Training images",
            columns=10,
            height=300,
            allow_preview=False,
            elem_classes=["gallery-pixelated"],
            format="png",
            elem_id="train-gallery",
        )
    return _CheckTab(
        upload=upload,
        check_btn=check_btn,
        query_img=query_img,
        check_md=check_md,
        check_gallery=check_gallery,
        train_gallery=train_gallery,
    )


def _api_tab() -> None:
    """How to call the named endpoints from code."""
    with gr.Tab("API", id="api"):
        gr.Markdown(API_DOC)


# ------------------------------------------------------------------------------ wiring


def _wire_cutoff_label(H: Handlers, pair_dd: gr.Dropdown, tab: _GenerateTab) -> None:
    """The label under the cutoff slider follows the slider and the mode."""

    def on_cutoff(pair: str, v: float, m: str) -> str:
        try:
            p = H.pair(pair)
        except InputError:
            return ""
        label = h.cutoff_label(h.sigma_from_slider(v, p), p, h.check_mode(m))
        if not H.slider_is_live(pair):
            label += " (the images follow when you release the slider: this model samples for seconds a move here)"
        return label

    for ev in (tab.cutoff.change, tab.mode.change):
        ev(
            on_cutoff,
            [pair_dd, tab.cutoff, tab.mode],
            tab.cutoff_md,
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )


def _wire_generate(H: Handlers, top: _Header, tab: _GenerateTab, heavy: dict[str, Any]) -> None:
    """Generate (button, Enter, new seed, example), streaming previews; the trajectory picker."""

    # gradio names the private events after their functions (and "lambda"): these keep the names they had
    def show_trajectory(res: h.GenerateResult | None, i: int | None) -> Any:
        if res is None or i is None or not 0 <= int(i) < len(res.ambient):
            return None
        a, b = res.ambient[int(i)], res.baseline[int(i)]
        left = "Ambient alone" if res.cutoff.is_ambient_alone and res.mode == "handover" else "Ambient"
        left += "" if left == "Ambient alone" else h._side_note(res)
        return trajectory_figure(
            a.trajectory,
            b.trajectory,
            res.sigma_c,
            res.threshold,
            res.sigma_n,
            f"Image {int(i) + 1} (seed {a.seed})",
            left,
        )

    def pick(evt: gr.SelectData) -> Any:
        return evt.index

    def finals(res: h.GenerateResult) -> tuple:
        p = H.pair(res.pair)
        choices = [(f"image {i + 1} (seed {s.seed})", i) for i, s in enumerate(res.ambient)]
        return (
            h.gallery_items(res, "ambient"),
            h.gallery_items(res, "baseline"),
            res.seed,
            h.summary_markdown(res),
            h.neighbours_html(h.neighbour_rows(res, "ambient", p), "Ambient: nearest training images"),
            h.neighbours_html(h.neighbour_rows(res, "baseline", p), "Baseline: nearest training images"),
            gr.update(choices=choices, value=0),
            show_trajectory(res, 0),
            h.result_json(res),
            res,
        )

    @_gpu
    def ui_generate(
        pair: str,
        prompt_: str,
        seed_: Any,
        rnd: bool,
        n: Any,
        steps_: Any,
        g: Any,
        v: float,
        m: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Iterator[tuple]:
        p = H.pair(pair)
        if rnd:
            seed_ = _new_seed()
        sc = h.sigma_from_slider(v, p)
        events: queue.SimpleQueue = queue.SimpleQueue()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["res"] = H.generate(
                    pair, prompt_, seed_, n, steps_, g, sc, m, on_step=lambda side, info: events.put((side, info))
                )
            except BaseException as e:  # handed to the generator below
                box["err"] = e
            finally:
                events.put(None)

        progress(0, desc="starting")
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        shown = 0.0
        skip = [gr.skip()] * 8
        while (item := events.get()) is not None:
            side, info = item
            half = 0 if side == "ambient" else 1
            progress((half + (info["i"] + 1) / info["total"]) / 2, desc=f"{side}: step {info['i'] + 1}/{info['total']}")
            if time.monotonic() - shown > 0.3:
                shown = time.monotonic()
                prev = h.preview_items(info["denoised"], info)
                yield (prev, gr.skip(), *skip) if side == "ambient" else (gr.skip(), prev, *skip)
        worker.join()
        if "err" in box:
            raise box["err"]
        yield finals(box["res"])

    t = tab
    gen_inputs = [top.pair, t.prompt, t.seed, t.randomize, t.n_images, t.steps, t.guidance, t.cutoff, t.mode]
    gen_outputs = [t.g_amb, t.g_base, t.seed, t.summary, t.nn_amb, t.nn_base, t.traj_dd, t.traj_plot, t.raw, top.last]
    t.go.click(ui_generate, gen_inputs, gen_outputs, api_visibility="private", **heavy)
    t.prompt.submit(ui_generate, gen_inputs, gen_outputs, api_visibility="private", **heavy)
    t.dice.click(lambda: _new_seed(), None, t.seed, queue=False, api_visibility="private").then(
        ui_generate, gen_inputs, gen_outputs, api_visibility="private", **heavy
    )
    t.examples.load_input_event.then(ui_generate, gen_inputs, gen_outputs, api_visibility="private", **heavy)
    t.traj_dd.change(
        show_trajectory, [top.last, t.traj_dd], t.traj_plot, api_visibility="private", show_progress="hidden"
    )
    t.g_amb.select(pick, None, t.traj_dd, api_visibility="private", queue=False)
    t.g_base.select(pick, None, t.traj_dd, api_visibility="private", queue=False)

    # The cutoff slider moves the galleries: while it is dragged where a move is cheap (each model's run is recorded
    # once, so a move runs only the baseline's steps below the new cutoff), on release where it is not (a latent
    # pair on the CPU). The seed stays as it is; the latest position wins (trigger_mode "always_last").
    slide_inputs = [top.pair, t.prompt, t.seed, t.n_images, t.steps, t.guidance, t.cutoff, t.mode]

    def slide(live: bool, pair: str, prompt_: str, seed_: Any, n: Any, steps_: Any, g: Any, v: float, m: str) -> Any:
        if H.slider_is_live(pair) != live:
            return tuple(gr.skip() for _ in gen_outputs)
        p = H.pair(pair)
        return finals(H.generate(pair, prompt_, seed_, n, steps_, g, h.sigma_from_slider(v, p), m))

    @_gpu
    def ui_slide(*args: Any) -> Any:
        return slide(True, *args)

    @_gpu
    def ui_slide_release(*args: Any) -> Any:
        return slide(False, *args)

    t.cutoff.change(
        ui_slide,
        slide_inputs,
        gen_outputs,
        trigger_mode="always_last",
        show_progress="hidden",
        api_visibility="private",
        **heavy,
    )
    t.cutoff.release(ui_slide_release, slide_inputs, gen_outputs, api_visibility="private", **heavy)


def _wire_pair_change(
    H: Handlers, top: _Header, gen: _GenerateTab, trade: _TradeoffTab, check: _CheckTab, heavy: dict[str, Any]
) -> None:
    """Choosing a pair updates its headline, card and status, the cutoff slider, the Trade-off tab and the
    training gallery."""
    k = len(trade.frontier_plots)

    def on_pair(pair: str) -> tuple:
        st = H.pair_status(pair)
        try:
            p = H.pair(pair)
        except InputError:
            return (
                st,
                headline_markdown(H, pair),
                "",
                *[gr.skip()] * 3,
                "This pair cannot be used (see above).",
                None,
                None,
                None,
                None,
                "",
                gr.update(value=None, visible=False),
                gr.skip(),
                *[gr.update(value=None, visible=False)] * k,
                "",
                gr.update(value=None, visible=False),
                "",
                None,
            )
        a, b = h.slider_range(p)
        start = h.slider_start(p)
        sv = H.precomputed_sweep(pair)
        fr = _frontier_parts(p)
        fr_img = H.precomputed_frontier(pair)[1]
        sim_md, sim_fig = _similarity(p)
        figs = fr["figs"]
        return (
            st,
            headline_markdown(H, pair),
            card_markdown(H, pair),
            gr.update(minimum=a, maximum=b, value=start),
            h.cutoff_label(h.sigma_from_slider(start, p), p),
            cutoff_scale_html(p),
            sv.markdown,
            gr.update(
                value=sweep_figure(sv.rows, sv.sigma_n, "precomputed") if sv.rows else None, visible=bool(sv.rows)
            ),
            gr.update(value=_df(sv.rows, p) if sv.rows else None, visible=bool(sv.rows)),
            sv.plot,
            H.training_gallery(pair),
            fr["md"],
            gr.update(value=fr_img, visible=fr_img is not None),
            gr.update(value=p.start_steps(H.sampler)),  # the pair's own default (a full-size latent pair: fewer)
            *[gr.update(value=figs[i] if i < len(figs) else None, visible=i < len(figs)) for i in range(k)],
            sim_md,
            gr.update(value=sim_fig, visible=sim_fig is not None),
            fr["bands"],
            fr["json"],
        )

    pair_outputs = [
        top.status,
        top.headline,
        top.card,
        gen.cutoff,
        gen.cutoff_md,
        gen.scale_html,
        trade.sweep_md,
        trade.sweep_plot,
        trade.sweep_tab,
        trade.sweep_png,
        check.train_gallery,
        trade.frontier_md,
        trade.frontier_img,
        gen.steps,
        *trade.frontier_plots,
        trade.similarity_md,
        trade.similarity_plot,
        trade.bands_md,
        trade.frontier_json,
    ]
    top.pair.change(on_pair, top.pair, pair_outputs, api_visibility="private", **heavy)


def _wire_live_sweep(H: Handlers, pair_dd: gr.Dropdown, tab: _TradeoffTab, heavy: dict[str, Any]) -> None:
    """The Trade-off tab's "Recompute live" button."""

    @_gpu
    def ui_live(pair: str, n: Any, pts: Any, st: Any, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        sv = H.live_sweep(pair, n, pts, st, progress=lambda f, msg: progress(f, desc=msg))
        return sv.markdown, sweep_figure(sv.rows, sv.sigma_n, "live"), _df(sv.rows, H.pair(pair))

    tab.live_btn.click(
        ui_live,
        [pair_dd, tab.live_n, tab.live_points, tab.live_steps],
        [tab.live_md, tab.live_plot, tab.live_tab],
        api_visibility="private",
        **heavy,
    )


def _wire_check(H: Handlers, pair_dd: gr.Dropdown, tab: _CheckTab, heavy: dict[str, Any]) -> None:
    """The Check tab: the button, an upload, or a click on a training image."""

    def check_out(res: h.CheckResult, pair: str) -> tuple:
        p = H.pair(pair)
        return h.upscale(res.query), h.check_markdown(res), h.check_items(res, p)

    def ui_check(pair: str, path: str | None) -> tuple:
        return check_out(H.check_image(pair, path), pair)

    def ui_check_train(pair: str, evt: gr.SelectData) -> tuple:
        return check_out(H.check_training_image(pair, evt.index), pair)

    check_outputs = [tab.query_img, tab.check_md, tab.check_gallery]
    tab.check_btn.click(ui_check, [pair_dd, tab.upload], check_outputs, api_visibility="private", **heavy)
    tab.upload.upload(ui_check, [pair_dd, tab.upload], check_outputs, api_visibility="private", **heavy)
    tab.train_gallery.select(ui_check_train, [pair_dd], check_outputs, api_visibility="private", **heavy)


def _wire_api(H: Handlers, heavy: dict[str, Any]) -> None:
    """The named endpoints ``/generate``, ``/neighbours`` and ``/sweep`` (JSON in, JSON out)."""

    @_gpu
    def generate(
        pair: str = "",
        prompt: str = "",
        seed: int = 0,
        n_images: int = 4,
        steps: int = 18,
        guidance: float = 1.0,
        sigma_c: float | None = None,
        mode: str = "handover",
    ) -> dict:
        """Ambient and baseline images from the same seeds with their nearest training images and copy verdicts."""
        return h.result_json(H.generate(pair or None, prompt, seed, n_images, steps, guidance, sigma_c, mode), True)

    def neighbours(pair: str = "", image: str = "", train_position: int | None = None, k: int = 4) -> dict:
        """Nearest training images of a base64 image (or of training image ``train_position``): is it a copy?"""
        if train_position is not None:
            res = H.check_training_image(pair or None, train_position, k)
        else:
            res = H.check_image(pair or None, h.decode_base64_image(image), k)
        return {"threshold": res.threshold, "metric": res.metric, **h.verdict_json(res.verdict)}

    @_gpu
    def sweep(pair: str = "", live: bool = False, n_seeds: int = 16, points: int = 5, steps: int = 18) -> dict:
        """The sigma_c sweep: the precomputed one shipped with the pair, or a live recompute on n_seeds seeds."""
        if not isinstance(live, bool):
            raise InputError(f"live must be true or false, got {live!r}.")
        sv = H.live_sweep(pair or None, n_seeds, points, steps) if live else H.precomputed_sweep(pair or None)
        return {"rows": sv.rows, "sigma_n": sv.sigma_n, "about": sv.markdown}

    gr.api(generate, api_name="generate", **heavy)
    gr.api(neighbours, api_name="neighbours", **heavy)
    gr.api(sweep, api_name="sweep", **heavy)


def compare_view(H: Handlers, res: h.GenerateResult | None, side: str, i: Any) -> tuple[Any, Any, str]:
    """(slider images, difference image, caption) of sample ``i`` of one side of a result against its nearest
    training image by pixel distance (the ratio test's d1 and d2), in the space the index searched."""
    samples = [] if res is None else (res.ambient if side == "ambient" else res.baseline)
    if not isinstance(i, int) or not 0 <= i < len(samples):
        raise InputError("Generate first, then click an image to compare it with its nearest training image.")
    p = H.pair(res.pair)
    s = samples[i]
    train = p.train.images.float().cpu().numpy()
    searched = getattr(s, "searched", None)  # the exact image the index searched, when the result keeps it
    threshold = float(getattr(p.index, "ratio_threshold", cmp.RATIO_THRESHOLD))
    c = cmp.compare(s.image, train, list(p.train.ids), searched=searched, ratio_threshold=threshold)
    who = "Ambient" if side == "ambient" else "Baseline"
    title = f"{who} image {i + 1} (seed {s.seed})"
    md = cmp.caption_markdown(c, title)
    v = s.verdict
    if getattr(v, "primary", "ratio") != "ratio":  # the gallery's mark is the cosine test: say so beside the ratio
        near = v.neighbours[0].id if v.neighbours else "?"
        md += (
            f"\n\nThis pair marks copies by cosine similarity (> {res.threshold:g}): its nearest by that measure, "
            f"training image #{near}, has cosine {float(v.similarity):.3f}, so the gallery says "
            f"**{'COPY' if v.is_copy else 'novel'}**."
        )
    return (c.sample, c.nearest), c.difference, md


def _wire_compare(H: Handlers, top: _Header, tab: _GenerateTab) -> None:
    """Clicking a generated image opens it against its nearest training image; a new request closes the view."""

    def compare_ambient(res: h.GenerateResult | None, evt: gr.SelectData) -> tuple:
        return gr.update(visible=True), *compare_view(H, res, "ambient", evt.index)

    def compare_baseline(res: h.GenerateResult | None, evt: gr.SelectData) -> tuple:
        return gr.update(visible=True), *compare_view(H, res, "baseline", evt.index)

    def close_compare() -> Any:
        return gr.update(visible=False)

    outs = [tab.compare_box, tab.compare_slider, tab.compare_diff, tab.compare_md]
    tab.g_amb.select(compare_ambient, [top.last], outs, api_visibility="private", show_progress="hidden")
    tab.g_base.select(compare_baseline, [top.last], outs, api_visibility="private", show_progress="hidden")
    for trigger in (tab.go.click, tab.prompt.submit, tab.dice.click):
        trigger(close_compare, None, tab.compare_box, queue=False, api_visibility="private", show_progress="hidden")


# ------------------------------------------------------------------------------ the app


def build_app(handlers: Handlers, banner: str = "", warning: str = "", max_concurrency: int = 2) -> gr.Blocks:
    """The whole app as a ``gr.Blocks`` (launch it with ``launch_kwargs()``)."""
    H = handlers
    default = H.registry.default
    first = _first_pair(H)
    heavy = {"concurrency_limit": max_concurrency, "concurrency_id": "models"}
    with gr.Blocks(title="Ambient Explorer") as demo:
        top = _header(H, warning)
        with gr.Tabs():
            gen = _generate_tab(first, banner, H.sampler)
            trade = _tradeoff_tab(H, default, first)
            check = _check_tab(H, default, first)
            _api_tab()
        # the order of the events below is the order of the app's dependencies (their fn_index): keep it
        _wire_cutoff_label(H, top.pair, gen)
        _wire_generate(H, top, gen, heavy)
        _wire_pair_change(H, top, gen, trade, check, heavy)
        _wire_live_sweep(H, top.pair, trade, heavy)
        _wire_check(H, top.pair, check, heavy)
        _wire_api(H, heavy)
        _wire_compare(H, top, gen)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Theme and CSS, passed to ``launch()`` as gradio 6 expects."""
    return {"css": CSS, "theme": gr.themes.Soft(), "ssr_mode": False, "max_file_size": "20mb"}
