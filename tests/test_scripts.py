"""Helpers of the measurement scripts in scripts/ (their end-to-end runs are in test_cli_e2e.py)."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_noisy_copy_ratio_test_flags_reproduced_noisy_copies_only():
    probe = _script("noisy_copy_probe")
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(50, 1, 8, 8, generator=g) * 2 - 1
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=g)
    reproduced = noisy[:20] + 0.01 * torch.randn(20, 1, 8, 8, generator=g)
    fresh = clean[:20] + 0.5 * torch.randn(20, 1, 8, 8, generator=g)  # same images, other noise
    rate, median = probe.ratio_rate(reproduced, noisy)
    assert rate == 1.0 and median < 0.1
    rate, median = probe.ratio_rate(fresh, noisy)
    assert rate < 0.2 and median > 1 / 3


def test_copy_vs_steps_table_lists_every_row():
    cvs = _script("copy_vs_steps")
    row = {
        "run": "runs/b",
        "n_train": 100,
        "rate_ratio": 0.5,
        "rate_similarity": {"0.95": 0.9},
        "frechet_distance": 5.0,
    }
    table = cvs.markdown([{**row, "step": None, "prompt_fidelity": 0.9}, {**row, "step": 5000}])
    lines = table.splitlines()
    assert len(lines) == 4 and "held-out real images" in lines[2]
    assert lines[3] == "| b | 100 | 5000 | 50.0 % | 90.0 % | 5.00 | n/a |"


def test_app_defaults_counts_the_verdicts_the_generate_handler_returns(tiny):
    from demo.handlers import Handlers
    from demo.pairs import PairRegistry
    from tests.helpers import Memorizer

    script = _script("app_defaults")
    H = Handlers(PairRegistry.from_path(tiny))
    p = H.pair("tiny")
    p.baseline = Memorizer(p.train.images)  # replays its training images: every sample a copy
    data = script.measure(p, 16, 7)  # as the Generate button makes them
    assert data["n"] == 16 and data["pair"] == "tiny" and data["cutoff"] == "the Ambient model alone"
    assert data["baseline"]["rate_ratio"] == 1.0 and data["baseline"]["rate_cos_0.95"] == 1.0
    assert data["ambient"]["rate_ratio"] == 0.0  # the untrained network makes no copies
    lo, hi = data["baseline"]["rate_ratio_ci95"]
    assert lo == hi == 1.0 and data["ambient"]["frechet_distance"] > data["baseline"]["frechet_distance"]


def test_app_defaults_with_class_prompts_scores_fidelity_and_says_which_goal_conditions_hold(tiny):
    from demo.handlers import Handlers
    from demo.pairs import PairRegistry
    from tests.helpers import Memorizer

    script = _script("app_defaults")
    H = Handlers(PairRegistry.from_path(tiny))
    p = H.pair("tiny")
    plan = script.request_prompts(p, 14, "classes")
    assert [c for _, c in plan] == [0, 1, 2, 3, 4, 5, -1, 6, 7, 8, 9, 0, 1, -1]  # classes in turn, every 7th empty
    assert plan[0][0] == f"a photo of a {p.train.class_names[0]}" and plan[6] == ("", -1)
    p.baseline = Memorizer(p.train.images)
    data = script.measure(p, 24, 7, prompts="classes", sampler="heun", steps=2)
    assert data["prompts"] == "classes" and data["sampler"] == "heun" and data["steps"] == 2
    for side in ("baseline", "ambient"):
        assert 0.0 <= data[side]["prompt_fidelity"] <= 1.0
        lo, hi = data[side]["frechet_ci95"]
        assert lo <= data[side]["frechet_distance"] <= hi
    g = data["goal"]
    assert g["checks"]["baseline copies at least 50 %"] is True  # the memorizer copies everything
    assert g["checks"]["Ambient copies at most a fifth of that"] is True  # the untrained network copies nothing
    assert g["checks"]["Frechet distance within 10 % of the baseline's"] is False  # but its images are noise
    assert g["met"] is False and g["copy_ratio"] == 0.0


def test_goal_verdict_follows_the_target():
    script = _script("app_defaults")
    side = {"rate_ratio": 0.55, "frechet_distance": 5.0, "frechet_novel": 9.0}
    good = {"baseline": side, "ambient": {"rate_ratio": 0.1, "frechet_distance": 5.4, "frechet_novel": 6.0}}
    assert script.goal(good)["met"] is True
    for change, broken in [
        ("baseline", {"rate_ratio": 0.45}),  # the baseline must copy at least half
        ("ambient", {"rate_ratio": 0.12}),  # more than a fifth of 0.55
        ("ambient", {"frechet_distance": 5.6}),  # 12 % worse
        ("ambient", {"frechet_novel": 9.5}),  # its novel samples worse
    ]:
        data = {k: dict(v) for k, v in good.items()}
        data[change] |= broken
        assert script.goal(data)["met"] is False, broken
    data = {k: dict(v) for k, v in good.items()}
    data["ambient"]["frechet_novel"] = None  # too few novel samples: not known, so not met
    assert script.goal(data)["checks"]["novel samples at least as good"] is None and not script.goal(data)["met"]


def test_fidelity_probe_splits_fidelity_over_copies_and_the_rest(tiny, tmp_path):
    import json

    import numpy as np

    probe = _script("fidelity_probe")
    r = probe.share(np.array([True, False, True, True]), np.array([True, True, False, True]))
    assert r["rate"] == 2 / 3 and r["n"] == 3 and r["ci95"][0] <= 2 / 3 <= r["ci95"][1]
    out = tmp_path / "f.json"
    args = [str(tiny.parent / "tiny"), "--ambient", "ambient", "--baseline", "baseline", "--n", "12", "--steps", "2"]
    assert probe.main([*args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert 0 <= data["classifier_accuracy_on_training_images"] <= 1
    for side in ("baseline", "ambient"):
        d = data[side]
        assert d["prompt_fidelity"]["n"] == 11  # every 11th sample is unconditional (prompt_plan)
        assert d["copies_classifier_right"]["n"] + d["others_classifier_right"]["n"] == 11


# Benchmarks that time the app's own request handler in process: the only files outside demo/ and app.py that may
# import demo (scripts reach the app through app.py, as a visitor does).
APP_MEASUREMENTS = {
    "benchmarks/bench_request.py",
    "benchmarks/bench_flops.py",
}


def _imports_and_path_edits(path: Path) -> tuple[set[str], list[int]]:
    """The top-level packages a file imports, and the lines where it changes sys.path."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    imported: set[str] = set()
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute) and node.attr == "path":
            if isinstance(node.value, ast.Name) and node.value.id == "sys":
                edits.append(node.lineno)
    return imported, edits


def test_scripts_and_benchmarks_import_the_installed_package_not_the_checkout():
    files = sorted([*ROOT.glob("scripts/*.py"), *ROOT.glob("benchmarks/*.py")])
    assert len(files) > 10
    problems = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        imported, edits = _imports_and_path_edits(path)
        if edits:
            problems.append(f"{rel} uses sys.path (lines {edits}): import the installed package (pip install -e .)")
        if "demo" in imported and rel not in APP_MEASUREMENTS:
            problems.append(f"{rel} imports demo: the app's package; use the library (ambient)")
    assert not problems, "\n".join(problems)


def test_the_guard_sees_path_edits_and_app_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nsys.path.insert(0, '..')\nfrom demo.handlers import Handlers\nimport ambient.data\n")
    imported, edits = _imports_and_path_edits(bad)
    assert edits == [2] and {"demo", "ambient", "sys"} <= imported
    good = tmp_path / "good.py"
    good.write_text("import sys\nfrom . import x\nprint(sys.argv)\n")
    assert _imports_and_path_edits(good) == ({"sys"}, [])


def test_the_shipped_cards_measured_table_is_the_report_of_that_model():
    import json

    from ambient.cards import measured_card
    from ambient.denoiser import EDMDenoiser

    pair = ROOT / "assets" / "fmnist-100"
    report = json.loads((pair / "eval_up2_s4_seed1" / "report.json").read_text())  # the default pair's
    folders = {side: Path(report["settings"][side]).name for side in ("baseline", "ambient")}
    for name in ("baseline", "ambient"):
        model = EDMDenoiser.from_pretrained(pair / folders[name])
        card = measured_card(name, model, report, "python scripts/ship_pair.py --n 1000")
        row, ref = report[name], report["reference"]
        assert card.startswith(f"# {name}\n") and card.rstrip().endswith(
            "Reproduce: `python scripts/ship_pair.py --n 1000`"
        )
        line = next(x for x in card.splitlines() if x.startswith("| pixel-L2 ratio test"))
        assert (
            line
            == f"| pixel-L2 ratio test d1/d2 < 1/3 | {100 * row['rate_ratio']:.1f} % | {100 * ref['rate_ratio']:.1f} % |"
        )
        assert f"## Measured ({report['settings']['n']} samples" in card
        assert ("plain EDM loss" in card) == (name == "baseline")
    # the generated card of a folder without one: what save_pretrained writes
    card = EDMDenoiser.from_pretrained(pair / folders["ambient"]).model_card(title="ambient")
    assert card.startswith("---\n") and "# ambient\n" in card and "- Loss: ambient, sigma_n = " in card


def test_truncate_probe_scores_each_model_at_each_cutoff(tiny, tmp_path):
    import json
    import shutil

    probe = _script("truncate_probe")
    pair = tmp_path / "pair"
    shutil.copytree(tiny.parent / "tiny", pair)
    assert probe.main([str(pair), "3"]) == 0
    data = json.loads((pair / "eval" / "truncate_probe.json").read_text())
    rows = data["rows"]
    assert [(r["model"], r["truncate_at"]) for r in rows] == [
        (m, c) for m in ("ambient", "baseline") for c in probe.CUTOFFS
    ]
    assert all(r["n"] == 3 and 0 <= r["rate_ratio"] <= 1 and r["frechet_distance"] > 0 for r in rows)
    assert data["command"].startswith("python ")


def test_results_table_keeps_the_rows_of_retired_models(tmp_path, monkeypatch, capsys):
    """Evaluation reports stay when their models leave assets/: the table still prints them, marked retired."""
    import json
    import shutil

    shipped = ROOT / "assets" / "fmnist-100"
    pair = tmp_path / "pair"
    for src, dst in (("eval", "eval"), ("eval_high", "eval_high"), ("eval_high_1500", "eval_high_early")):
        (pair / dst).mkdir(parents=True)
        shutil.copy(shipped / src / "report.json", pair / dst / "report.json")
    (pair / "ambient_high").mkdir()
    (pair / "ambient_high" / "ambient_config.json").write_text(json.dumps({"meta": {"steps": 1234}}))
    monkeypatch.setattr("sys.argv", ["results_table.py", str(pair)])
    assert _script("results_table").main() == 0
    rows = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| Ambient")]
    main = json.loads((pair / "eval" / "report.json").read_text())
    assert rows[0].startswith(f"| Ambient, one network, sigma_n = {main['settings']['sigma_n']} (model retired")
    assert rows[1].startswith("| Ambient, high-noise-only (1,234 steps), hand-over at 0.5 |")
    early = json.loads((pair / "eval_high_early" / "report.json").read_text())["ambient"]
    assert rows[2] == (
        "| Ambient, high-noise-only (eval_high_early, model retired from the app), hand-over at 0.5 "
        f"| {100 * early['rate_ratio']:.1f} % | {100 * early['rate_similarity']['0.95']:.1f} % "
        f"| {100 * early['rate_similarity']['0.9']:.1f} % | {early['mean_similarity']:.3f} "
        f"| {early['frechet_distance']:.2f} | {100 * early['prompt_fidelity']:.1f} % |"
    )


def test_half_weights_measures_then_halves_only_what_passes_and_leaves_halved_folders_alone(tiny, tmp_path, capsys):
    import json
    import os
    import shutil

    hw = _script("half_weights")
    root = tmp_path / "pairs"
    shutil.copytree(tiny.parent, root)
    cfg = root / "pairs.json"
    folders = [root / "tiny" / "ambient", root / "tiny" / "baseline"]
    before = {f: (f / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size for f in folders}

    # a tolerance nothing meets: measured and recorded, nothing rewritten
    strict = hw.MAX_SHARE_OF_BF16
    hw.MAX_SHARE_OF_BF16 = -1.0
    try:
        assert (
            hw.main(["--config", str(cfg), "--pairs", "tiny", "--n", "3", "--out", str(tmp_path / "a.json"), "--write"])
            == 0
        )
    finally:
        hw.MAX_SHARE_OF_BF16 = strict
    a = json.loads((tmp_path / "a.json").read_text())
    side = a["pairs"]["tiny"]["ambient"]
    assert side["within_tolerance"] is False and a["written"] == [] and len(a["kept"]) == 2
    assert 0 < side["mean_abs_grey_float16_storage"] and 0 <= side["verdicts_agree_float16_storage_under_bf16"] <= 1
    assert all(hw.stored_dtypes(f) == {"F32"} for f in folders)

    # the real tolerance: the untrained pair passes, its folders are rewritten in float16, half the size
    assert (
        hw.main(["--config", str(cfg), "--pairs", "tiny", "--n", "3", "--out", str(tmp_path / "b.json"), "--write"])
        == 0
    )
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["pairs"]["tiny"]["baseline"]["share_of_bf16"] <= hw.MAX_SHARE_OF_BF16 and len(b["written"]) == 2
    for f in folders:
        assert hw.stored_dtypes(f) == {"F16"}
        assert (f / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < 0.55 * before[f]

    # a second run finds them halved: nothing measured against a float32 reference that is gone, nothing written
    assert hw.main(["--config", str(cfg), "--pairs", "tiny", "--n", "3", "--out", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert "already stored in float16" in c["pairs"]["tiny"]["skipped"] and c["written"] == []

    # a new Ambient model beside the halved baseline: measured, written, and the study keeps the earlier rewrites
    shutil.copytree(tiny.parent / "tiny" / "ambient", root / "tiny" / "ambient_new")
    spec = json.loads(cfg.read_text())
    first = next(p for p in spec["pairs"] if p["name"] == "tiny")
    spec["pairs"].append({**first, "name": "tiny-new", "ambient": "tiny/ambient_new"})
    cfg.write_text(json.dumps(spec))
    assert hw.main(["--config", str(cfg), "--n", "3", "--out", str(tmp_path / "b.json"), "--write"]) == 0
    b2 = json.loads((tmp_path / "b.json").read_text())
    assert set(b2["pairs"]) == {"tiny", "tiny-new"} and b2["pairs"]["tiny"] == b["pairs"]["tiny"]
    assert b2["pairs"]["tiny-new"]["baseline"]["mean_abs_grey_float16_storage"] == 0  # halving a half changes nothing
    assert b2["written"] == [*b["written"], os.path.relpath(root / "tiny" / "ambient_new")]
    assert hw.stored_dtypes(root / "tiny" / "ambient_new") == {"F16"} and b2["history"][0]["command"] == b["command"]
    with pytest.raises(SystemExit):
        hw.main(["--config", str(cfg), "--pairs", "nope", "--out", str(tmp_path / "d.json")])
    assert "no pair named ['nope']" in capsys.readouterr().err


def test_class_balance_counts_the_shipped_classifier_labels_of_real_images():
    from ambient.data import load_npz
    from ambient.memorization.classifier import load_default_classifier

    cb = _script("class_balance")
    train = load_npz(ROOT / "assets" / "fmnist-100" / "train.npz")
    h = cb.class_histogram(train.images, load_default_classifier())
    assert sum(h) == len(train.images) and len(h) == 10
    labels = torch.bincount(torch.as_tensor(train.labels), minlength=10).tolist()
    assert sum(abs(a - b) for a, b in zip(h, labels, strict=True)) <= 0.2 * len(train.images)  # a 90 %+ classifier
    one = cb.class_histogram(train.images[torch.as_tensor(train.labels) == 7], load_default_classifier())
    assert max(one) == one[7]  # sneakers are mostly called sneakers
