"""Checkpoints written by the trainers before the one training loop resume bit for bit.

tests/data/resume/ keeps checkpoints of tiny runs written by ``Trainer`` / ``LatentFinetuner`` as of commit d6eb122,
and what continuing each of them with that code gave (see tests/data/resume/make_fixtures.py): the losses of every
step, a sha256 of every tensor of the continued checkpoint (model, EMA, optimiser) and of the exported weights.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from ambient.latent import FinetuneConfig, finetune
from ambient.training import TrainConfig, train

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parent / "data" / "resume"
_spec = importlib.util.spec_from_file_location("resume_fixtures", DATA / "make_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def check_continuation(run: Path, expected: dict) -> None:
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    got = fx.continued(state)
    assert got["step"] == expected["step"] == fx.END
    assert got["losses"] == [tuple(x) for x in expected["losses"]]
    assert got["optimizer"] == expected["optimizer"]
    assert fx.checkpoint_digests(run / "checkpoint") == expected["checkpoint"]
    for name, digest in expected["export"].items():
        assert fx.digest(run / "model" / name) == digest, name


@pytest.mark.parametrize("case", sorted(fx.PIXEL_CASES))
def test_an_old_pixel_checkpoint_resumes_bit_for_bit(tmp_path, case, capsys):
    expected = json.loads((DATA / case / "expected.json").read_text())
    run = tmp_path / "run"
    shutil.copytree(DATA / case / "checkpoint", run / "checkpoint")
    kw = fx.PIXEL_CASES[case]
    enc = fx.FakeEncoder() if kw["text_model"] else None
    train(TrainConfig(out=str(run), steps=fx.END, **kw), fx.toy_dataset(), enc)
    assert f"resuming from step {fx.STOP} of {run / 'checkpoint'}" in capsys.readouterr().out
    check_continuation(run, expected)


def test_an_old_latent_checkpoint_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    expected = json.loads((DATA / "latent_ambient_ema" / "expected.json").read_text())
    fx.make_latent_workdir(tmp_path)
    shutil.copytree(DATA / "latent_ambient_ema" / "checkpoint", tmp_path / "run" / "checkpoint")
    monkeypatch.chdir(tmp_path)  # the checkpoint names its pipeline and images relative to the run's folder
    finetune(FinetuneConfig(out="run", steps=fx.END, **fx.LATENT_CASE))
    assert f"resuming from step {fx.STOP} of run/checkpoint" in capsys.readouterr().out
    check_continuation(tmp_path / "run", expected)
