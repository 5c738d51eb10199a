"""A tiny end-to-end run through the CLI: train, sample, index, evaluate (CPU, well under a minute)."""

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ambient.cli import main
from ambient.training import TrainConfig, help_texts

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, timeout=600):
    r = subprocess.run(
        [sys.executable, "-m", "ambient", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_train_sample_index_evaluate(tmp_path):
    t0 = time.perf_counter()
    run = tmp_path / "run"
    common = [
        "--n",
        "64",
        "--steps",
        "200",
        "--batch",
        "16",
        "--block-out-channels",
        "8",
        "16",
        "--no-progress",
        "--checkpoint-every",
        "100",
        "--log-every",
        "100",
    ]
    _cli("train", "--out", str(run / "baseline"), "--loss", "baseline", "--snapshot-every", "100", *common)
    _cli("train", "--out", str(run / "ambient"), "--loss", "ambient", "--sigma-n", "1.0", *common)
    cfg = json.loads((run / "ambient" / "model" / "ambient_config.json").read_text())
    assert cfg["meta"]["loss"] == "ambient" and cfg["meta"]["sigma_n"] == 1.0 and cfg["meta"]["steps"] == 200
    assert len(cfg["meta"]["train_ids"]) == 64

    _cli(
        "sample",
        "--model",
        str(run / "ambient" / "model"),
        "--baseline",
        str(run / "baseline" / "model"),
        "--sigma-c",
        "1.0",
        "--prompt",
        "a photo of a sneaker",
        "--n",
        "4",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "grid.png"),
    )
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[0] > 64

    pair = tmp_path / "pair"
    _cli("index", "--model", str(run / "baseline" / "model"), "--out", str(pair))
    assert (pair / "train.npz").is_file() and (pair / "index" / "meta.json").is_file()

    out = tmp_path / "eval"
    _cli(
        "evaluate",
        "--ambient",
        str(run / "ambient" / "model"),
        "--baseline",
        str(run / "baseline" / "model"),
        "--pair-dir",
        str(pair),
        "--n",
        "24",
        "--sweep-n",
        "8",
        "--sweep-points",
        "3",
        "--steps",
        "3",
        "--out",
        str(out),
    )
    report = json.loads((out / "report.json").read_text())
    for name in ("reference", "baseline", "ambient"):
        assert 0.0 <= report[name]["rate_similarity"]["0.95"] <= 1.0
    fd = {name: report[name]["frechet_distance"] for name in ("reference", "baseline", "ambient")}
    assert fd["reference"] < min(fd["baseline"], fd["ambient"]), fd  # held-out real images beat 200-step samples
    sweep = json.loads((out / "sweep.json").read_text())["sweep"]
    assert len(sweep) >= 4 and sweep[-1]["sigma_c"] is None  # the last point is the baseline alone, said so
    assert sweep[-1]["models"] == "the baseline alone"
    assert (out / "sweep.png").stat().st_size > 1000
    assert time.perf_counter() - t0 < 300  # 53 s measured on an idle 2-core machine

    # copying against training steps: every snapshot scored against the run's own training set
    curve = tmp_path / "curve.json"

    def copy_vs_steps(*extra):
        cmd = [sys.executable, str(ROOT / "scripts" / "copy_vs_steps.py"), str(run / "baseline"), "--n", "6"]
        env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [*cmd, "--steps", "3", "--out", str(curve), *extra], capture_output=True, text=True, timeout=300, env=env
        )

    r = copy_vs_steps("--min-step", "200")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [x["step"] for x in json.loads(curve.read_text())["rows"]] == [None, 200]
    r = copy_vs_steps("--append")  # adds only the snapshot the file lacks
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(curve.read_text())
    rows = report["rows"]
    assert [(x["samples"], x["step"]) for x in rows] == [("held-out", None), ("step_000100", 100), ("step_000200", 200)]
    assert all(x["n_train"] == 64 and x["n"] == 6 and 0 <= x["rate_ratio"] <= 1 for x in rows)
    assert rows[0]["frechet_distance"] < min(rows[1]["frechet_distance"], rows[2]["frechet_distance"]), rows
    assert 0 <= rows[2]["prompt_fidelity"] <= 1
    assert len(report["commands"]) == 2
    r = copy_vs_steps("--append", "--sigma-c", "2")  # rows made with other settings are not mixed
    assert r.returncode != 0 and "other sigma_c" in r.stderr


def _verb_parser(verb, monkeypatch):
    """The parser of ``python -m ambient VERB``, as main() builds it."""
    seen = []
    parse = argparse.ArgumentParser.parse_args

    def spy(self, args=None, namespace=None):
        seen.append(self)
        return parse(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a help text
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    sub = next(a for a in seen[0]._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


def _help_of(parser):
    """Each option's help as ``--help`` prints it, keyed by its first flag."""
    text = " ".join(parser.format_help().split())
    formatter = parser._get_formatter()
    out = {}
    for a in parser._actions:
        if a.option_strings and a.option_strings[0] != "-h":
            assert a.help, f"{a.option_strings[0]} has no help text"
            out[a.option_strings[0]] = shown = formatter._expand_help(a)
            assert " ".join(shown.split()) in text
    return out


def test_every_train_option_has_a_help_text_with_its_default(monkeypatch):
    fields = dataclasses.fields(TrainConfig)
    helps = help_texts(TrainConfig)  # each field carries its help text
    assert all(helps[f.name] for f in fields)  # a new TrainConfig field needs one
    shown = _help_of(_verb_parser("train", monkeypatch))
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        assert shown[flag] == f"{helps[f.name]} (default: {default})", flag


@pytest.mark.parametrize("verb", ["sample", "index", "evaluate", "grid"])
def test_every_option_of_the_other_verbs_has_a_help_text_with_its_default(verb, monkeypatch):
    parser = _verb_parser(verb, monkeypatch)
    shown = _help_of(parser)  # asserts that every option has a help text
    assert shown
    for a in parser._actions:
        if a.option_strings and a.option_strings[0] in shown and not a.required and a.default not in (None, "", ()):
            if a.nargs != 0 or isinstance(a, argparse.BooleanOptionalAction):
                assert f"(default: {a.default})" in shown[a.option_strings[0]], a.option_strings[0]
