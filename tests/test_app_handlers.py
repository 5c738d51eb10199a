"""The app's handlers, called as plain functions on a tiny random pair (no browser, no server)."""

from __future__ import annotations

import base64
import io
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ambient.sampling import sample
from demo import handlers as h
from demo.handlers import Handlers, InputError
from demo.pairs import PairRegistry, load_config
from tests.helpers import Memorizer


@pytest.fixture(scope="module")
def H(tiny):
    """Handlers over the tiny pair whose baseline is replaced by a memorizer (so copies are certain)."""
    handlers = Handlers(PairRegistry.from_path(tiny))
    p = handlers.pair("tiny")
    p.baseline = Memorizer(p.train.images)
    return handlers


@pytest.fixture(scope="module")
def result(H):
    return H.generate("tiny", "", 5, 4, 12, 1.0, None, "handover")


def test_generate_side_by_side_marks_copies_on_the_baseline_side_only(H, result):
    assert [s.seed for s in result.ambient] == [5, 6, 7, 8] == [s.seed for s in result.baseline]
    assert all(s.image.shape == (32, 32, 1) and s.image.dtype == np.uint8 for s in result.ambient + result.baseline)
    assert [bool(s.verdict.is_copy) for s in result.baseline] == [True] * 4
    assert [bool(s.verdict.is_copy) for s in result.ambient] == [False] * 4
    md = h.summary_markdown(result)
    assert "**0 of 4** are copies" in md and "**4 of 4** are copies" in md
    assert "> **0.95**" in md and "cosine similarity of pixels features" in md
    caps = [c for _, c in h.gallery_items(result, "baseline")]
    assert all("COPY" in c for c in caps)
    assert not any("COPY" in c for _, c in h.gallery_items(result, "ambient"))
    im, _ = h.gallery_items(result, "ambient")[0]
    assert im.size == (128, 128)  # 32 px upscaled 4x by nearest neighbour
    a = np.asarray(im)
    assert (a[::4, ::4] == result.ambient[0].image[..., 0]).all() and (a[1::4, 1::4] == a[::4, ::4]).all()


def test_neighbour_panels_show_top_k_training_images_with_similarity(H, result):
    p = H.pair("tiny")
    rows = h.neighbour_rows(result, "baseline", p)
    assert len(rows) == 4 and all(len(r["neighbours"]) == h.DEFAULT_K for r in rows)
    top = rows[0]["neighbours"][0]
    assert top["similarity"] > 0.95 and top["copy"]
    # the neighbour image is the training image the index named
    pos = result.baseline[0].verdict.neighbours[0].position
    assert (top["image"] == h._u8(p.train.images[pos : pos + 1])[0]).all()
    html = h.neighbours_html(rows, "Baseline")
    assert html.count('class="nn-row"') == 4 and html.count("nn-copy") == 4
    assert f"#{top['id']}" in html and f"{top['similarity']:.3f}" in html
    amb = h.neighbours_html(h.neighbour_rows(result, "ambient", p), "Ambient")
    assert "nn-copy" not in amb and amb.count("nn-novel") == 4


def test_result_json_counts_and_images(result):
    j = h.result_json(result, with_images=True)
    assert j["copies"] == {"ambient": 0, "baseline": 4}
    assert j["seeds"] == [5, 6, 7, 8] and j["threshold"] == 0.95
    im = Image.open(io.BytesIO(base64.b64decode(j["baseline"][0]["png_base64"])))
    assert im.size == (32, 32)
    json.dumps(j)  # JSON-ready


def test_cutoff_ends_same_noise_and_modes(H):
    p = H.pair("tiny")
    # right end = baseline alone: the Ambient gallery then equals the baseline gallery (same seeds, same noise)
    r = H.generate("tiny", "", 11, 2, 6, 1.0, p.sigma_max, "handover")
    assert all((a.image == b.image).all() for a, b in zip(r.ambient, r.baseline, strict=True))
    assert all(t["model"] == "baseline" for t in r.ambient[0].trajectory)
    # left end = Ambient alone: exactly the library's Ambient-only sample
    r = H.generate("tiny", "", 11, 2, 6, 1.0, p.sigma_min, "handover")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=H.bf16):  # the handler samples in bf16 where native
        ref = h._u8(sample(p.ambient, None, [11, 12], p.image_shape, None, 6, sampler=H.sampler))
    assert (np.stack([s.image for s in r.ambient]) == ref).all()
    assert all(t["model"] == "ambient" for t in r.ambient[0].trajectory)
    # in between: Ambient above sigma_c, baseline below
    r = H.generate("tiny", "", 11, 2, 6, 1.0, 1.0, "handover")
    models = [(t["sigma"] >= 1.0, t["model"]) for t in r.ambient[0].trajectory]
    assert all((m == "ambient") == above for above, m in models) and {m for _, m in models} == {"ambient", "baseline"}
    # truncate stops at sigma_c: fewer x0_hat steps, all from the Ambient model
    r = H.generate("tiny", "", 11, 2, 6, 1.0, 1.0, "truncate")
    assert 0 < len(r.ambient[0].trajectory) < 6 and all(t["sigma"] > 1.0 for t in r.ambient[0].trajectory)
    assert len(r.baseline[0].trajectory) == 6


def test_trajectory_and_previews(H):
    seen: dict[str, list[int]] = {"ambient": [], "baseline": []}

    def on_step(side, info):
        assert info["denoised"].shape == (3, 1, 32, 32) and info["total"] == 5
        seen[side].append(info["i"])

    r = H.generate("tiny", "", 100, 3, 5, 1.0, None, "handover", on_step=on_step)
    assert seen == {"ambient": [0, 1, 2, 3, 4], "baseline": [0, 1, 2, 3, 4]}
    traj = r.baseline[0].trajectory
    assert len(traj) == 5 and traj[0]["sigma"] == pytest.approx(80.0)
    assert traj[-1]["similarity"] > 0.95  # the memorizer has locked onto a training image
    fig = __import__("demo.plots", fromlist=["x"]).trajectory_figure(
        r.ambient[0].trajectory, traj, r.sigma_c, r.threshold, 1.0
    )
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].lines) >= 4
    items = h.preview_items(torch.zeros(2, 1, 32, 32), {"i": 0, "total": 5, "sigma": 80.0})
    assert len(items) == 2 and "step 1/5" in items[0][1]


def test_repeated_request_is_served_from_cache(H):
    a = H.generate("tiny", "", 42, 2, 4)
    b = H.generate("tiny", "", 42, 2, 4)
    assert not a.cached and b.cached and (a.ambient[0].image == b.ambient[0].image).all()


def test_prompt_conditions_the_models_and_is_capped(H):
    a = H.generate("tiny", "a photo of a sneaker", 3, 1, 3)
    b = H.generate("tiny", "a photo of a bag", 3, 1, 3)
    c = H.generate("tiny", "", 3, 1, 3)
    assert not (a.ambient[0].image == b.ambient[0].image).all()
    assert not (a.ambient[0].image == c.ambient[0].image).all()
    long = H.generate("tiny", "sneaker " * 200, 3, 1, 2)
    assert len(long.prompt) <= h.MAX_PROMPT_CHARS and any("cut" in n for n in long.notes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": 123}, "prompt must be text"),
        ({"prompt": ["a"]}, "prompt must be text"),
        ({"seed": -1}, "seed must be from 0"),
        ({"seed": 2**32}, "seed must be from 0"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": "7"}, "seed must be a whole number"),
        ({"seed": float("nan")}, "seed must be a whole number"),
        ({"steps": 0}, "steps must be from 1 to 200"),
        ({"steps": 201}, "steps must be from 1 to 200"),
        ({"n_images": 0}, "number of images must be from 1 to 8"),
        ({"n_images": 9}, "number of images must be from 1 to 8"),
        ({"n_images": True}, "number of images must be a whole number"),
        ({"guidance": -0.5}, "guidance scale must be from 0 to 20"),
        ({"guidance": 21}, "guidance scale must be from 0 to 20"),
        ({"guidance": float("inf")}, "guidance scale must be a finite number"),
        ({"sigma_c": float("nan")}, "sigma_c must be a finite number"),
        ({"sigma_c": float("inf")}, "sigma_c must be a finite number"),
        ({"sigma_c": 1000.0}, "sigma_c must be a finite number from 0.002"),
        ({"sigma_c": 0.0001}, "sigma_c must be a finite number from 0.002"),
        ({"sigma_c": "1"}, "sigma_c must be a number"),
        ({"mode": "sideways"}, "mode must be 'handover' or 'truncate'"),
    ],
)
def test_generate_rejects_bad_input_with_a_clear_message(H, kwargs, message):
    args = {"pair": "tiny", "prompt": "", "seed": 0, "n_images": 1, "steps": 2, "guidance": 1.0, "sigma_c": None}
    with pytest.raises(ValueError, match=message) as e:
        H.generate(**{**args, **kwargs})
    assert isinstance(e.value, InputError)  # a gr.Error too: the UI shows the message


def test_whole_floats_are_accepted_and_mode_spelling(H):
    r = H.generate("tiny", "", 7.0, 1.0, 2.0, 1, None, "hand-over")
    assert r.seed == 7 and r.mode == "handover"


def test_slider_maps_log10_to_sigma_with_clamped_ends(H):
    p = H.pair("tiny")
    lo, hi = h.slider_range(p)
    assert lo <= math.log10(p.sigma_min) and hi >= math.log10(p.sigma_max)
    assert h.sigma_from_slider(lo, p) == p.sigma_min and h.sigma_from_slider(hi, p) == p.sigma_max
    assert h.sigma_from_slider(0.0, p) == pytest.approx(1.0)
    assert "Ambient alone" in h.cutoff_label(p.sigma_min, p) and "baseline alone" in h.cutoff_label(p.sigma_max, p)
    assert "sigma_n = 1" in h.cutoff_label(0.5, p)
    with pytest.raises(ValueError):
        h.sigma_from_slider(float("nan"), p)


def test_unknown_pair_says_which_exist(H):
    with pytest.raises(ValueError, match="no pair of this name.*tiny"):
        H.generate("nope", "", 0, 1, 2)


# ----------------------------------------------------------------------------- uploads


def _png(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_check_training_image_is_a_copy_of_itself(H):
    res = H.check_training_image("tiny", 3)
    p = H.pair("tiny")
    assert res.verdict.is_copy and res.verdict.neighbours[0].position == 3
    assert res.verdict.neighbours[0].similarity == pytest.approx(1.0, abs=1e-4)
    md = h.check_markdown(res)
    assert md.startswith("### COPY") and f"#{p.train.ids[3]}" in md and "0.95" in md
    items = h.check_items(res, p)
    assert len(items) == h.DEFAULT_K and items[0][1].startswith(f"train #{p.train.ids[3]}: 1.000")


def test_uploaded_training_image_is_found(H, tmp_path):
    p = H.pair("tiny")
    u8 = h._u8(p.train.images[5:6])[0][..., 0]
    path = tmp_path / "q.png"
    Image.fromarray(u8).resize((96, 96), Image.NEAREST).save(path)  # bigger, same picture
    res = H.check_image("tiny", str(path))
    assert res.verdict.neighbours[0].position == 5 and res.verdict.is_copy
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    res = H.check_image("tiny", _png(Image.fromarray(noise)))
    assert not res.verdict.is_copy and h.check_markdown(res).startswith("### Not a copy")


def test_upload_conversions():
    shape = (1, 32, 32)
    # RGBA: transparent pixels become black background, opaque white stays white
    rgba = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    rgba.paste((255, 255, 255, 255), (8, 8, 24, 24))
    x = h.image_to_model_input(_png(rgba), shape)
    assert x.shape == (1, 1, 32, 32) and x[0, 0, 0, 0] == -1 and x[0, 0, 16, 16] == 1
    # 16-bit: scaled by its range, not clipped to white
    a16 = np.full((32, 32), 32768, dtype=np.uint16)
    x = h.image_to_model_input(_png(Image.fromarray(a16)), shape)
    assert -0.1 < float(x.mean()) < 0.1
    # one pixel: a flat 32x32 image
    x = h.image_to_model_input(_png(Image.new("L", (1, 1), 200)), shape)
    assert x.shape == (1, 1, 32, 32) and torch.allclose(x, torch.full_like(x, 200 / 127.5 - 1))
    # aspect kept: a wide white image is padded with black above and below
    x = h.image_to_model_input(_png(Image.new("RGB", (64, 32), (255, 255, 255))), shape)
    assert (x[0, 0, 0] == -1).all() and (x[0, 0, 16] == 1).all() and (x[0, 0, 31] == -1).all()
    # RGB JPEG to grey, and to a 3-channel model
    jpg = _png(Image.new("RGB", (40, 40), (255, 0, 0)), "JPEG")
    assert h.image_to_model_input(jpg, shape).shape == (1, 1, 32, 32)
    assert h.image_to_model_input(jpg, (3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"this is not an image at all", "not an image"),
        (lambda: _png(Image.new("L", (64, 64), 128))[:60], "truncated or corrupt|not an image"),
        (lambda: _png(Image.new("1", (5000, 4000))), "5000x4000"),
        (lambda: b"", "not an image"),
    ],
)
def test_bad_uploads_are_refused_clearly(H, make, message):
    with pytest.raises(ValueError, match=message):
        H.check_image("tiny", make())


def test_missing_upload_and_base64(H):
    with pytest.raises(ValueError, match="Upload an image"):
        H.check_image("tiny", None)
    with pytest.raises(ValueError, match="base64"):
        h.decode_base64_image("%%%not base64%%%")
    data = _png(Image.new("L", (8, 8), 9))
    assert h.decode_base64_image("data:image/png;base64," + base64.b64encode(data).decode()) == data


# ----------------------------------------------------------------------------- the trade-off


def test_precomputed_sweep_is_read_from_the_config(tiny, tmp_path):
    cfg = json.loads(tiny.read_text())
    rows = [
        {"sigma_c": 0.002, "rate_similarity": {"0.9": 0.1, "0.95": 0.05}, "rate_ratio": 0.0, "mean_similarity": 0.8},
        {"sigma_c": 1.0, "rate_similarity": {"0.9": 0.3, "0.95": 0.2}, "rate_ratio": 0.1, "mean_similarity": 0.9},
        {
            "sigma_c": 80.8,
            "rate_similarity": {"0.9": 0.9, "0.95": 0.8},
            "rate_ratio": 0.6,
            "mean_similarity": 0.97,
            "frechet_distance": 12.5,
        },
    ]
    (tmp_path / "sweep.json").write_text(json.dumps({"sweep": rows, "sigma_n": 1.0, "sweep_n": 64}))
    Image.new("RGB", (40, 20), "white").save(tmp_path / "sweep.png")
    base = tiny.parent
    entry = {**cfg["pairs"][0], "sweep": "sweep.json", "sweep_plot": "sweep.png"}
    for k in ("ambient", "baseline", "train_data", "index"):
        entry[k] = str(base / entry[k])
    (tmp_path / "pairs.json").write_text(json.dumps({"pairs": [entry]}))
    H2 = Handlers(PairRegistry(load_config(tmp_path / "pairs.json"), [base]))
    sv = H2.precomputed_sweep("tiny")
    assert sv.rows == rows and sv.sigma_n == 1.0 and sv.plot is not None and "sweep n: 64" in sv.markdown
    headers, data = h.sweep_table(sv.rows, 0.002, 80.0)
    assert headers[:4] == ["sigma_c", "models", "copies, cos > 0.95 (%)", "copies, cos > 0.9 (%)"]
    assert data[0][1] == "Ambient alone" and data[1][1] == "hand-over" and data[2][1] == "baseline alone"
    assert data[2][2] == 80.0 and data[2][-1] == 12.5 and data[0][-1] is None


def test_missing_sweep_is_said_plainly(H):
    sv = H.precomputed_sweep("tiny")
    assert sv.rows == [] and "No precomputed sweep" in sv.markdown


def test_live_sweep_runs_the_library_and_reports_progress(H):
    calls = []
    sv = H.live_sweep("tiny", 2, 2, 2, progress=lambda f, msg: calls.append(f))
    # two log-spaced cutoffs (the ends), sigma_n, and the explicit baseline-alone row (sigma_c null in JSON)
    sigma_cs = [r["sigma_c"] for r in sv.rows]
    assert len(sigma_cs) == 4 and sigma_cs[:3] == pytest.approx([0.002, 1.0, 80.0]) and sigma_cs[3] is None
    assert [r["models"] for r in sv.rows][::3] == ["Ambient for sigma >= 0.002, baseline below", "the baseline alone"]
    assert sv.rows[-1]["rate_similarity"]["0.95"] == 1.0  # baseline alone = the memorizer: all copies
    assert sv.rows[0]["rate_similarity"]["0.95"] == 0.0  # Ambient alone: none
    assert calls and calls[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="number of seeds"):
        H.live_sweep("tiny", 0)


def test_device_banner_names_the_device_and_its_threads(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cpu = h.device_banner("cpu")
    assert "**CPU**" in cpu and "16 cores" in cpu and "1 torch thread)" in cpu and "GPU" not in cpu
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert "4 torch threads)" in h.device_banner("cpu")
    assert h.device_banner("cuda") == h.device_banner("cpu")  # asked for a GPU that is not there: says CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "H200 <NVL>")
    gpu = h.device_banner("cuda")
    assert "**GPU**" in gpu and "H200 &lt;NVL&gt;" in gpu and "CPU" not in gpu  # the name is escaped
    assert "**CPU**" in h.device_banner("cpu")


def test_a_pair_can_mark_copies_by_the_ratio_test(tiny, tmp_path):
    cfg = json.loads(tiny.read_text())
    entry = cfg["pairs"][0]
    for key in ("ambient", "baseline", "train_data", "index"):
        entry[key] = str(tiny.parent / entry[key])
    bad = {**entry, "name": "bad", "copy_test": "cosine"}
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"default": "tiny", "pairs": [{**entry, "copy_test": "ratio"}, bad]}))
    reg = PairRegistry.from_path(path, allowed_dirs=[tiny.parent])
    assert 'copy_test" must be one of' in str(reg.error("bad"))
    H2 = Handlers(reg)
    p = H2.pair("tiny")
    p.baseline = Memorizer(p.train.images)
    r = H2.generate("tiny", "", 5, 3, 12, 1.0, None, "handover")
    assert all(h.sample_caption(s).startswith("COPY r=0.0") for s in r.baseline)
    assert all(h.sample_caption(s).startswith("novel r=") for s in r.ambient)  # noise is no near-exact copy
    md = h.summary_markdown(r)
    assert "**3 of 3** are copies (cosine > 0.95: 3 of 3)" in md and "ratio test of Gu et al." in md
    assert h.result_json(r)["baseline"][0]["copy_test"] == "ratio"
    check = h.check_markdown(H2.check_training_image("tiny", 2))
    assert check.startswith("### COPY: training image") and "d1/d2 = 0.000 < 1/3" in check
