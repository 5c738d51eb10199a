"""The quality-memorization frontier: bootstrap intervals, the baseline's early-stopping curve, shipped data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ambient.memorization.metrics import bootstrap_rate_ci
from ambient.research import frontier

PAIR = Path(__file__).resolve().parents[1] / "assets" / "fmnist-100"


def test_bootstrap_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p, n, trials = 0.3, 256, 300
    hits = rng.binomial(n, p, size=trials)
    covered = sum(lo <= p <= hi for lo, hi in (bootstrap_rate_ci(int(k), n, n_boot=2000, seed=1) for k in hits))
    # 95 % nominal; with 300 trials a binomial 99.9 % band around 0.95 is about [0.91, 0.98]
    assert 0.90 <= covered / trials <= 0.99


def test_bootstrap_interval_is_fixed_by_its_seed_and_narrows_with_n():
    assert bootstrap_rate_ci(50, 100) == bootstrap_rate_ci(50, 100)
    lo1, hi1 = bootstrap_rate_ci(50, 100)
    lo2, hi2 = bootstrap_rate_ci(500, 1000)
    assert lo1 < 0.5 < hi1 and hi2 - lo2 < (hi1 - lo1) / 2
    assert bootstrap_rate_ci(0, 64) == (0.0, 0.0)
    with pytest.raises(ValueError):
        bootstrap_rate_ci(5, 4)


def _pt(label, kind, step, rate, fd, n_train=100, run="r"):
    return {
        "label": label,
        "kind": kind,
        "run": run,
        "step": step,
        "n_train": n_train,
        "n": 256,
        "rate_ratio": rate,
        "rate_ratio_ci95": list(bootstrap_rate_ci(round(rate * 256), 256)),
        "frechet_distance": fd,
    }


def test_baseline_frontier_interpolates_between_snapshots_and_judges_variants():
    base = [
        _pt("baseline", "baseline", s, r, fd, run="b") for s, r, fd in ((1, 0.0, 20.0), (2, 0.2, 10.0), (3, 0.6, 5.0))
    ]
    assert frontier.baseline_rate_at(base, 7.5, 100) == pytest.approx(0.4)
    assert frontier.baseline_rate_at(base, 30.0, 100) is None  # outside the baseline's range: undecided
    assert frontier.baseline_rate_at(base, 7.5, 300) is None  # another N has its own frontier
    good = _pt("amb", "ambient", 5, 0.1, 7.5, run="a")
    bad = _pt("amb", "ambient", 5, 0.8, 7.5, run="a")
    same = _pt("amb", "ambient", 5, 0.41, 7.5, run="a")
    verdicts = {round(c["rate_ratio"], 2): c["vs_frontier"] for c in frontier.compare([*base, good, bad, same])}
    assert verdicts == {0.1: "below", 0.8: "above", 0.41: "on"}


def test_shipped_studies_load_as_frontier_points_with_intervals():
    points, failed = frontier.load_points([PAIR / "studies"])
    assert all("error" in f or (f["status"] == "unfinished" and f["trained_to"] > 0) for f in failed)
    kinds = {p["kind"] for p in points}
    assert {"baseline", "ambient", "reference"} <= kinds
    for p in points:
        lo, hi = p["rate_ratio_ci95"]
        assert lo <= p["rate_ratio"] <= hi
        assert p["frechet_distance"] > 0
    assert {p["n_train"] for p in points if p["kind"] == "baseline"} >= {100, 300}


def test_shipped_frontier_json_and_plot_agree_with_the_studies():
    data = frontier.read_frontier(PAIR / "frontier")
    points, _ = frontier.load_points([PAIR / "studies"])
    assert len(data["points"]) == len(points)
    assert (PAIR / "frontier" / data["plots"]["100"]).is_file()
    labels = [m["label"] for m in data["marks"]]
    shipped = {"baseline_up2_seed1", "ambient (eval_up2_s4_seed1)", "baseline_up2", "ambient (eval_up2_s4)"}
    assert {f"shipped {x}" for x in shipped} <= set(labels), labels
    # a model whose folder left assets/ is marked retired, never shipped
    for m in data["marks"]:
        folder = m["label"].split(" ", 1)[1]
        folder = folder if m["side"] == "baseline" else None
        if folder:
            assert m["label"].startswith("shipped" if (PAIR / folder).is_dir() else "retired"), m["label"]
    md = frontier.summary(data)
    assert f"{len(points)} scored snapshots" in md
    # the second way of scoring has its own frontier: the empty-prompt studies, none of the class-prompted ones
    empty, _ = frontier.load_points([PAIR / "studies"], prompts="empty")
    assert len(data["empty_prompt"]["points"]) == len(empty) > 0
    assert not {p["study"] for p in empty if p["study"]} & {p["study"] for p in points if p["study"]}
    assert (PAIR / "frontier" / data["empty_prompt"]["plots"]["100"]).is_file()
    assert {c["label"] for c in data["empty_prompt"]["ambient_vs_frontier"]} <= {p["label"] for p in empty}


def test_read_frontier_rejects_a_file_without_points(tmp_path):
    (tmp_path / "frontier.json").write_text(json.dumps({"points": []}))
    with pytest.raises(ValueError, match="no frontier points"):
        frontier.read_frontier(tmp_path)


def test_describe_config_names_what_differs():
    cfg = {"loss": "ambient", "regime": "high", "sigma_n": 0.5, "dropout": 0.1, "time_scale_shift": "scale_shift"}
    label = frontier.describe_config(cfg, {"baseline": "b", "sigma_c": 0.5})
    assert label == "Ambient high-noise-only, sigma_n 0.5, scale-shift cond., dropout 0.1, hand-over at 0.5"
    assert frontier.describe_config({"loss": "baseline"}) == "baseline"
    up = frontier.describe_config({"loss": "baseline", "upsample": 2, "image_size": 32})
    assert up == "baseline, trained at 2x the pixels per side (scored at 32)"
    stem = frontier.describe_config({"loss": "baseline", "upsample": 2, "patch": 2, "image_size": 32})
    assert stem == up + ", 2x2 patch stem"


def test_the_summary_names_the_best_quality_snapshot_below_the_frontier():
    base = [
        _pt("baseline", "baseline", s, r, fd, run="b") for s, r, fd in [(2, 0.0, 20.0), (4, 0.4, 6.0), (6, 0.8, 4.0)]
    ]
    rough = _pt("amb", "ambient", 2, 0.0, 7.0, run="a")  # the largest gap, at a quality no one would ship
    good = _pt("amb", "ambient", 6, 0.5, 5.0, run="a")
    data = {"points": [*base, rough, good], "ambient_vs_frontier": frontier.compare([*base, rough, good])}
    assert [c["vs_frontier"] for c in data["ambient_vs_frontier"]] == ["below", "below"]
    md = frontier.summary(data)
    assert "2 of 2 comparable" in md and "at step 6, 50.0 % copies against 60.0 %" in md


def test_band_table_names_the_owner_of_every_band():
    row = {"rate_ratio": 0.1, "rate_similarity": {"0.95": 0.5}, "frechet_distance": 7.0}
    bands = {
        "settings": {"n": 8},
        "rows": [
            {**row, "bands": [{"sigma_lo": 0.0, "model": "base"}]},
            {
                **row,
                "bands": [
                    {"sigma_lo": 2.0, "model": "amb"},
                    {"sigma_lo": 1.0, "model": "early"},
                    {"sigma_lo": 0.0, "model": "base"},
                ],
            },  # fmt: skip
        ],
    }
    table = frontier.band_table(bands).splitlines()
    assert table[2] == "| sigma >= 2 | 1 <= sigma < 2 | 0 <= sigma < 1 | ratio test | cos > 0.95 | Frechet distance |"
    assert table[4].startswith("| base | base | base |") and table[5].startswith("| amb | early | base | 10.0 %")
    # several probes (one per pair) each get their table, under their title
    data = {"points": [], "bands": [{**bands, "title": "32 x 32"}, {**bands, "title": "64 x 64"}]}
    md = frontier.summary(data)
    assert md.count("| ratio test |") == 2 and md.index("(32 x 32, 8 samples") < md.index("(64 x 64, 8 samples")


def test_a_failed_run_without_rows_is_still_listed(tmp_path):
    study = {"status": "failed", "error": "RuntimeError: stopped", "config": {"loss": "baseline"}, "rows": []}
    (tmp_path / "run.json").write_text(json.dumps(study))
    points, failed = frontier.load_points([tmp_path])
    assert points == [] and [f["error"] for f in failed] == ["RuntimeError: stopped"]
    row = {"run": "runs/b", "n_train": 100, "step": 2000, "n": 8, "rate_ratio": 0.25, "frechet_distance": 9.0}
    row["rate_similarity"] = {"0.95": 0.5}
    unfinished = {"status": "unfinished", "trained_to": 2500, "config": {"loss": "baseline"}, "rows": [row]}
    (tmp_path / "b.json").write_text(json.dumps(unfinished))
    points, failed = frontier.load_points([tmp_path])
    assert [(p["step"], p["kind"]) for p in points] == [(2000, "baseline")]  # its snapshots count as points
    assert sorted(f["status"] for f in failed) == ["failed", "unfinished"]


def test_prompted_and_unconditional_studies_never_share_a_frontier(tmp_path):
    def study(prompts, fd):
        row = {"run": "runs/b", "n_train": 100, "step": 2000, "n": 8, "rate_ratio": 0.25, "frechet_distance": fd}
        row["rate_similarity"] = {"0.95": 0.5}
        ev = {"n": 8} | ({"prompts": prompts} if prompts else {})
        return {"status": "ok", "config": {"loss": "baseline"}, "eval": ev, "rows": [row]}

    (tmp_path / "old.json").write_text(json.dumps(study(None, 3.0)))  # scored before the setting: prompted
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "b.json").write_text(json.dumps(study("empty", 6.0)))
    assert [p["frechet_distance"] for p in frontier.load_points([tmp_path])[0]] == [3.0]
    assert [p["frechet_distance"] for p in frontier.load_points([tmp_path], prompts="empty")[0]] == [6.0]
    with pytest.raises(ValueError, match="prompts must be one of"):
        frontier.load_points([tmp_path], prompts="uncond")
