"""``python -m ambient grid``: a grid file trains and scores its runs, resumes, and records failures."""

from __future__ import annotations

import json

import pytest

from ambient.research.grid import load_grid, run_grid, train_command
from ambient.training import TrainConfig


def _grid(tmp_path, runs, **defaults):
    spec = {
        "name": "g",
        "runs_dir": str(tmp_path / "runs"),
        "studies_dir": str(tmp_path / "studies"),
        "defaults": {"n": 20, "steps": 4, "snapshot_every": 2, "checkpoint_every": 2, "block_out_channels": [16, 16]}
        | defaults,
        "eval": {"n": 6, "steps": 3},
        "runs": runs,
    }
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    return path


def test_load_grid_rejects_unknown_settings_and_duplicate_names(tmp_path):
    with pytest.raises(ValueError, match="unknown training settings"):
        load_grid(_grid(tmp_path, [{"name": "a", "train": {"lossy": 1}}]))
    with pytest.raises(ValueError, match="unknown eval settings"):
        load_grid(_grid(tmp_path, [{"name": "a", "eval": {"sigma": 1}}]))
    with pytest.raises(ValueError, match="names must differ"):
        load_grid(_grid(tmp_path, [{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ValueError, match="sigma-n"):
        load_grid(_grid(tmp_path, [{"name": "a", "train": {"loss": "ambient"}}]))


def test_train_command_round_trips_through_the_cli_parser():
    import argparse

    from ambient.cli import _add_train

    cfg = TrainConfig(out="x", loss="ambient", sigma_n=0.5, regime="high", dropout=0.1, text_model=None)
    parser = argparse.ArgumentParser()
    _add_train(parser.add_subparsers(dest="command"))
    args = parser.parse_args(train_command(cfg)[3:])
    assert args.dropout == 0.1 and args.regime == "high" and args.sigma_n == 0.5 and args.text_model == "none"
    assert args.block_out_channels == [32, 64, 64] and args.compile is False


@pytest.mark.slow
def test_grid_trains_scores_resumes_and_records_a_failed_run(tmp_path):
    runs = [
        {"name": "base", "train": {"loss": "baseline"}},
        {
            "name": "high",
            "train": {"loss": "ambient", "sigma_n": 0.5, "regime": "high", "dropout": 0.1},
            "eval": {"baseline": "base", "sigma_c": 0.5},
        },  # fmt: skip
        {"name": "broken", "train": {"loss": "baseline", "data": str(tmp_path / "missing.npz")}},
    ]
    path = _grid(tmp_path, runs, text_model=None)
    import torch

    threads = torch.get_num_threads()
    outs = run_grid(path, jobs=2)
    assert torch.get_num_threads() == threads  # the caller's thread count is left as it was
    studies = {p.stem: json.loads(p.read_text()) for p in outs}
    assert studies["base"]["status"] == "ok" and studies["high"]["status"] == "ok"
    assert [r["step"] for r in studies["high"]["rows"]] == [None, 2, 4]  # held-out reference, then snapshots
    assert studies["high"]["config"]["dropout"] == 0.1 and studies["high"]["eval"]["sigma_c"] == 0.5
    assert studies["high"]["commits"] and all(lo <= r["rate_ratio"] <= hi for r in studies["high"]["rows"]
                                              for lo, hi in [r["rate_ratio_ci95"]])  # fmt: skip
    assert studies["broken"]["status"] == "failed" and "train.log" in studies["broken"]["error"]
    # Started again, nothing is retrained or rescored: the rows are unchanged.
    again = {p.stem: json.loads(p.read_text()) for p in run_grid(path, jobs=1, only=["high"])}
    assert again["high"]["rows"] == studies["high"]["rows"]


def test_an_upsampled_run_is_scored_at_its_data_size(tmp_path):
    path = _grid(tmp_path, [{"name": "up", "train": {"loss": "baseline", "upsample": 2}}], text_model=None, steps=2)
    (out,) = run_grid(path, jobs=1, threads=1)
    study = json.loads(out.read_text())
    assert study["status"] == "ok" and study["config"]["upsample"] == 2
    assert [r["step"] for r in study["rows"]] == [None, 2]
    assert all(r["n_training"] == 20 and r["frechet_distance"] > 0 for r in study["rows"])


def test_a_patch_stem_run_is_scored_from_min_step_at_its_data_size(tmp_path):
    runs = [
        {"name": "p", "train": {"loss": "ambient", "sigma_n": 1.0, "upsample": 2, "patch": 2}, "eval": {"min_step": 4}}
    ]
    (out,) = run_grid(_grid(tmp_path, runs, text_model=None), jobs=1, threads=1)
    study = json.loads(out.read_text())
    assert study["status"] == "ok" and study["config"]["patch"] == 2 and study["eval"]["min_step"] == 4
    assert [r["step"] for r in study["rows"]] == [None, 4]  # the snapshot at step 2 is not scored
    assert all(r["n_training"] == 20 and r["frechet_distance"] > 0 for r in study["rows"])


def test_a_run_scored_before_its_training_ends_is_recorded_as_unfinished(tmp_path):
    path = _grid(tmp_path, [{"name": "b", "train": {"loss": "baseline"}}], text_model=None, steps=2)
    run_grid(path, jobs=1, threads=1, evaluate=False)  # trained to 2 steps
    spec = json.loads(path.read_text())
    spec["defaults"]["steps"] = 4  # the grid now asks for more than was trained
    path.write_text(json.dumps(spec))
    (out,) = run_grid(path, jobs=1, threads=1, train=False)
    study = json.loads(out.read_text())
    assert study["status"] == "unfinished" and study["trained_to"] == 2 and "step 2 of 4" in study["note"]
    assert [r["step"] for r in study["rows"]] == [None, 2]


def test_recorded_commands_can_be_run_again_by_a_shell():
    import shlex

    from ambient.research.studies import command_line

    argv = ["scripts/band_probe.py", "--config", "all baseline=baseline@0", "--title", "it's 64 x 64"]
    assert shlex.split(command_line(argv)) == ["python", *argv]


def test_eval_prompts_empty_scores_unconditional_samples_as_the_app_default(tmp_path):
    with pytest.raises(ValueError, match="eval prompts must be one of"):
        load_grid(_grid(tmp_path, [{"name": "a", "eval": {"prompts": "none"}}]))
    runs = [{"name": "c", "train": {"loss": "baseline"}}, {"name": "u", "train": {"loss": "baseline"}}]
    path = _grid(tmp_path, runs, steps=2)  # text-conditional (the default text model)
    run_grid(path, jobs=1, threads=1, only=["c"])
    spec = json.loads(path.read_text())
    spec["runs"][1]["train"]["seed"] = 0
    spec["runs"][1]["eval"] = {"prompts": "empty"}
    path.write_text(json.dumps(spec))
    (out,) = run_grid(path, jobs=1, threads=1, only=["u"])
    empty, classes = json.loads(out.read_text()), json.loads((out.parent / "c.json").read_text())
    assert empty["eval"]["prompts"] == "empty" and "prompts" not in classes["eval"]  # older studies keep theirs
    assert "prompt_fidelity" in classes["rows"][1] and "prompt_fidelity" not in empty["rows"][1]  # no class asked
    # The same weights (same seed and data), other conditioning: other samples, so other scores.
    assert empty["rows"][1]["frechet_distance"] != classes["rows"][1]["frechet_distance"]


def test_scoring_without_training_skips_a_run_never_started_instead_of_recording_it_failed(tmp_path, capsys):
    runs = [{"name": "b", "train": {"loss": "baseline"}}, {"name": "later", "train": {"loss": "baseline", "seed": 3}}]
    path = _grid(tmp_path, runs, text_model=None, steps=2)
    run_grid(path, jobs=1, threads=1, only=["b"], evaluate=False)  # only "b" has been trained
    outs = run_grid(path, jobs=1, threads=1, train=False)
    assert [p.stem for p in outs] == ["b"] and json.loads(outs[0].read_text())["status"] == "ok"
    assert not (tmp_path / "studies" / "g" / "later.json").exists()
    assert "later: not trained yet" in capsys.readouterr().out
    # A run whose folder exists but holds nothing to score is still recorded as failed, with its reason.
    (tmp_path / "runs" / "later").mkdir(parents=True)
    outs = run_grid(path, jobs=1, threads=1, train=False, only=["later"])
    assert json.loads(outs[0].read_text())["status"] == "failed"
