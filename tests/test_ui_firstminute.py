"""The visitor's first minute, without a browser: the headline and card of a pair, the comparison of a generated
sample with its nearest training image, the interactive frontier and the similarity histograms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ambient.research import frontier
from ambient.research.frontier import shipped_runs
from demo import compare as cmp
from demo.handlers import Handlers
from demo.pairs import PairRegistry
from demo.plots import frontier_figure, similarity_figure
from demo.tiny_pair import make_tiny_pair
from tests.helpers import Memorizer

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _pt(kind: str, run: str, step: int | None, rate: float, fd: float, n_train: int = 100) -> dict:
    return {
        "label": kind,
        "kind": kind,
        "study": "s.json",
        "run": run,
        "n_train": n_train,
        "step": step,
        "n": 256,
        "rate_ratio": rate,
        "rate_ratio_ci95": [max(0.0, rate - 0.05), min(1.0, rate + 0.05)],
        "rate_cos_0.95": rate,
        "frechet_distance": fd,
    }


@pytest.fixture(scope="module")
def H(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-first-minute")
    make_tiny_pair(root, n=20)
    cfg = json.loads((root / "pairs.json").read_text())
    cfg["pairs"][0]["summary"] = "Measured on 8 samples a side: the baseline copies 100 %."
    (root / "pairs.json").write_text(json.dumps(cfg))
    tiny_h = Handlers(PairRegistry.from_path(root / "pairs.json"))
    p = tiny_h.pair("tiny")
    p.baseline = Memorizer(p.train.images)  # a baseline that certainly copies
    return tiny_h


# ---------------------------------------------------------------- the first screen


def test_headline_is_the_pairs_summary_and_a_broken_pair_says_why(H):
    from demo.ui import card_markdown, headline_markdown

    assert headline_markdown(H, "tiny") == "Measured on 8 samples a side: the baseline copies 100 %."
    assert "cannot be used" in headline_markdown(H, "nowhere")
    assert card_markdown(H, "nowhere") == ""


def test_every_shipped_pair_has_a_one_line_headline_with_numbers_and_a_card():
    from demo.ui import card_markdown, headline_markdown

    H = Handlers(PairRegistry.from_path(ASSETS / "pairs.json"))
    for name in H.registry.names():
        line = headline_markdown(H, name)
        assert line.startswith("**Measured** ") and "\n" not in line and "%" in line, (name, line)
        status = H.pair_status(name) + card_markdown(H, name)  # what "About this pair" holds
        assert "Files" in status and "Frechet distance" in status, name
    default = headline_markdown(H, H.registry.default)
    # the default pair's headline quotes its measurement at the app's defaults, both ways, as the studies hold it
    import json

    studies = ASSETS / "fmnist-100" / "studies"
    for way in ("empty", "classes"):
        data = json.loads((studies / f"goal_fmnist-100-64-seed1_{way}_n4096.json").read_text())
        assert data["n"] == 4096 and data["pair"] == H.registry.default
        for side in ("baseline", "ambient"):
            assert f"{100 * data[side]['rate_ratio']:.1f} %" in default, (way, side, default)
        gap = data["ambient"]["frechet_distance"] / data["baseline"]["frechet_distance"] - 1
        assert f"{100 * gap:.0f} %" in default.split("Frechet distance", 1)[1]


# ---------------------------------------------------------------- look at the copy


def test_a_copy_opens_against_the_training_image_it_copies(H):
    from demo.ui import compare_view

    res = H.generate("tiny", "", 5, 3, 4)
    p = H.pair("tiny")
    (left, right), diff, md = compare_view(H, res, "baseline", 1)
    assert left.size == right.size == diff.size and left.size[0] >= 4 * p.data_shape[-1]  # shown large
    v = res.baseline[1].verdict
    assert "COPY" in md and f"#{v.neighbours[0].id}" in md  # the same training image the gallery names
    if v.primary != "ratio":  # the tiny pair marks by cosine: the view says which test the gallery's mark is
        assert "marks copies by cosine similarity" in md and "the gallery says **COPY**" in md
    c = cmp.compare(res.baseline[1].image, p.train.images.numpy(), list(p.train.ids))
    assert c.ratio == pytest.approx(float(v.ratio), abs=0.02)  # the view's d1/d2 is the gallery's ratio test
    _, _, md_a = compare_view(H, res, "ambient", 0)
    assert "Ambient image 1" in md_a and ("novel" in md_a) != bool(res.ambient[0].verdict.copy_by_ratio)
    with pytest.raises(ValueError, match="Generate first"):
        compare_view(H, None, "baseline", 0)
    with pytest.raises(ValueError, match="Generate first"):
        compare_view(H, res, "baseline", 3)


# ---------------------------------------------------------------- the trade-off


def test_envelope_is_the_least_copying_baseline_at_each_quality():
    pts = [_pt("baseline", "b1", s, r, fd) for s, r, fd in [(1, 0.0, 20.0), (2, 0.4, 6.0), (3, 0.8, 4.0)]]
    pts += [_pt("baseline", "b2", s, r, fd) for s, r, fd in [(1, 0.1, 10.0), (2, 0.2, 5.0)]]
    pts += [_pt("ambient", "a", 1, 0.05, 5.0), _pt("baseline", "other-N", 1, 0.0, 4.5, n_train=300)]
    env = frontier.envelope(pts, 100, num=20)
    fds = [r["frechet_distance"] for r in env]
    assert fds == sorted(fds) and fds[0] == 4.0 and fds[-1] == 20.0 and {6.0, 5.0, 10.0} <= set(fds)
    at = {r["frechet_distance"]: r["rate_ratio"] for r in env}
    assert at[5.0] == pytest.approx(min(0.2, 0.4 + (5.0 - 6.0) / (4.0 - 6.0) * 0.4))  # b2 beats b1 there
    assert at[20.0] == pytest.approx(0.0) and at[4.0] == pytest.approx(0.8)
    assert frontier.envelope(pts, 300) == []  # one baseline snapshot draws no curve
    assert all(r["rate_ratio"] is not None for r in env)


def test_shipped_runs_of_the_default_pair_come_from_shipped_json():
    runs = shipped_runs(ASSETS / "fmnist-100", "fmnist-100/ambient_up2_s4_seed1", "fmnist-100/baseline_up2_seed1")
    assert runs == {
        "ambient": ("runs/n100_up2p2_ambient_s4_pm-0.5_seed1", 5000),
        "baseline": ("runs/n100_up2p2_baseline_pm-0.5_seed1", 6000),
    }
    assert shipped_runs(ASSETS / "nowhere", "a", "b") == {}


def test_frontier_figure_stresses_the_pairs_runs_and_hovers_with_the_figures():
    data = frontier.read_frontier(ASSETS / "fmnist-100" / "frontier")
    runs = shipped_runs(ASSETS / "fmnist-100", "fmnist-100/ambient_up2_s4_seed1", "fmnist-100/baseline_up2_seed1")
    fig = frontier_figure(data, 100, runs)
    names = [t.name for t in fig.data]
    assert names[0].startswith("baselines' frontier")
    on = [t for t in fig.data if t.visible in (None, True)]
    off = [t for t in fig.data if t.visible == "legendonly"]
    mine = [t for t in on if t.name.startswith("this pair's")]
    assert len(mine) == 2 and all(t.line.width == 3 for t in mine)
    assert off and all(t.opacity < 1 for t in off)  # every other run: faint, off until switched on
    n100 = {(p["run"]) for p in data["points"] if p["n_train"] == 100 and p["kind"] != "reference"}
    assert len(mine) + len(off) == len(n100)  # every run at N = 100 is there, none at N = 300
    star = next(t for t in fig.data if t.name.startswith("shipped Ambient"))
    point = next(p for p in data["points"] if p["run"] == runs["ambient"][0] and p["step"] == 5000)
    hover = star.text[0]
    lo, hi = point["rate_ratio_ci95"]
    for want in ("step 5,000", f"copies {100 * point['rate_ratio']:.1f} %", f"{100 * lo:.1f}-{100 * hi:.1f}",
                 f"Frechet distance {point['frechet_distance']:.2f}", "n100_up2p2_ambient_s4_pm-0.5_seed1"):  # fmt: skip
        assert want in hover, (want, hover)
    assert fig.layout.xaxis.type == "log"


def test_the_tradeoff_parts_of_the_default_pair_keep_the_band_tables_and_data():
    from demo.ui import _frontier_parts

    H = Handlers(PairRegistry.from_path(ASSETS / "pairs.json"))
    parts = _frontier_parts(H.pair(H.registry.default))
    assert len(parts["figs"]) == 2  # N = 100 and N = 300, the pair's own first
    assert any(t.name.startswith("this pair's") for t in parts["figs"][0].data)
    other_n = [t for t in parts["figs"][1].data if t.name.startswith(("baseline:", "Ambient:"))]
    assert other_n and all(t.visible is True and t.opacity < 1 for t in other_n)  # no run of the pair: all faint
    assert not any(t.name.startswith("this pair's") for t in parts["figs"][1].data)
    assert parts["bands"].count("| ratio test |") >= 1 and "| ratio test |" not in parts["md"]
    assert len(parts["json"]["points"]) == len(H.pair(H.registry.default).frontier["points"])


def test_similarity_figure_draws_each_side_and_the_held_out_images_with_the_threshold():
    sim = {
        "n": 4,
        "ratio_threshold": 1 / 3,
        "cosine_threshold": 0.95,
        "baseline": {"ratio": [0.05, 0.1, 0.9, 0.2], "cosine": [0.99, 0.99, 0.9, 0.98]},
        "ambient": {"ratio": [0.7, 0.8, 0.9, 0.2], "cosine": [0.9, 0.93, 0.9, 0.98]},
        "held_out": {"ratio": [0.9, 0.95, 0.97, float("nan")], "cosine": [0.8, 0.85, 0.9, 0.9]},
    }
    fig = similarity_figure(sim)
    hists = [t for t in fig.data if t.type == "histogram"]
    assert len(hists) == 6 and {t.legendgroup for t in hists} == {"baseline", "ambient", "held_out"}
    held = next(t for t in hists if t.legendgroup == "held_out" and t.xaxis == "x")
    assert len(held.x) == 3  # the unknown ratio is left out
    assert [s.x0 for s in fig.layout.shapes] == pytest.approx([1 / 3, 0.95])


def test_the_shipped_similarity_data_when_present_is_per_sample():
    from demo.ui import _similarity

    H = Handlers(PairRegistry.from_path(ASSETS / "pairs.json"))
    p = H.pair(H.registry.default)
    path = ASSETS / Path(p.spec.sweep).parent / "similarity.json"
    if not path.exists():
        pytest.skip("no similarity.json ships with the default pair")
    sim = json.loads(path.read_text())
    for key in ("baseline", "ambient", "held_out"):
        assert len(sim[key]["ratio"]) == len(sim[key]["cosine"]) == sim["n"]
    md, fig = _similarity(p)
    assert fig is not None and f"{sim['n']} samples a side" in md
    k = sum(r < 1 / 3 for r in sim["baseline"]["ratio"])
    assert sim["baseline"]["rate_ratio"] == pytest.approx(k / sim["n"])


def test_generate_keeps_the_tensor_free_result_for_the_state(H):
    """The comparison reads the result kept in the page's State: images as arrays, verdicts with their ratio."""
    res = H.generate("tiny", "", 0, 2, 3)
    s = res.baseline[0]
    assert s.image.dtype.name == "uint8" and not isinstance(s.image, torch.Tensor)
    assert 0 <= float(s.verdict.ratio) < 1 / 3


# ---------------------------------------------------------------- latent pairs: decoded images

from tests.test_latent_pair import handlers, lat  # noqa: E402, F401  (fixtures: a tiny latent pair)


def test_a_latent_pairs_decoded_sample_opens_against_its_nearest_training_image(handlers):  # noqa: F811
    from demo.ui import compare_view

    res = handlers.generate("latent", "a red cat", 7, 2, 3)
    p = handlers.pair("latent")
    for side, samples in (("ambient", res.ambient), ("baseline", res.baseline)):
        (left, right), diff, md = compare_view(handlers, res, side, 1)
        assert left.size == right.size == diff.size and "d1 =" in md and "d2 =" in md
        assert left.size[1] >= p.train.images.shape[-1]  # at least the training images' size, never smaller
        ratio = float(md.split("d1/d2 = ")[1].split(" ")[0])
        assert ratio == pytest.approx(float(samples[1].verdict.ratio), abs=0.05)  # the gallery's ratio test


def test_similarity_script_scores_each_sample_and_held_out_images_alike(H):
    """scripts/similarity.py at the app's defaults: per-sample ratio and cosine, held-out images beside them,
    and the novel samples' Frechet distance (none for a baseline that copies everything)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "similarity", Path(__file__).resolve().parents[1] / "scripts" / "similarity.py"
    )
    sim_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim_mod)
    try:
        out = sim_mod.measure(H.pair("tiny"), 8, 100, sampler=H.sampler, bf16=H.bf16)
    except FileNotFoundError as e:  # the held-out images are Fashion-MNIST's test split
        pytest.skip(str(e))
    for key in ("ambient", "baseline", "held_out"):
        assert len(out[key]["ratio"]) == len(out[key]["cosine"]) == 8
    base = out["baseline"]
    assert all(r < 1 / 3 for r in base["ratio"]) and base["rate_ratio"] == 1.0  # the memorizer copies
    assert base["novel_n"] == 0 and base["novel_frechet_distance"] is None
    assert out["ambient"]["novel_n"] == sum(r >= 1 / 3 for r in out["ambient"]["ratio"])
    assert json.loads(json.dumps(out)) == out  # plain JSON
    assert len(similarity_figure(out).data) == 6  # two histograms for each side and for the held-out images
