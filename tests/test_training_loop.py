"""The one training loop (ambient.training.TrainingLoop) and the fixes of issue 19 item 6 on its side: one resume rule
that names a changed setting and says where it resumes, settings that carry their help, ``--loss baseline`` with a
``--sigma-n`` refused, captions that are not UTF-8 named by file and line, copies of one base pipeline that stay one
pipeline, ``--pretrained hub:owner/name``, and no "accelerate was not found" notice."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ambient.cli import main as cli_main
from ambient.denoiser import DDPMAdapter, is_model_dir, load_denoiser
from ambient.io import LEGACY_LATENT_SIDECAR, SIDECAR_NAME
from ambient.latent import (
    FinetuneConfig,
    LatentDenoiser,
    check_pipeline_dir,
    component_signature,
    finetune,
    read_ambient_settings,
    read_captioned_folder,
)
from ambient.training import CHECKPOINT, TrainConfig, Trainer, TrainingLoop, help_texts, train
from tests.helpers import write_images

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parent / "data" / "resume"
_spec = importlib.util.spec_from_file_location("resume_fixtures", DATA / "make_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def pixel_cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = {"out": str(tmp_path / "run"), "data": "toy", "n": 12, "steps": 2, "batch": 4, "lr": 1e-3, "warmup": 2}
    base |= {"ema": 0.9, "text_model": None, "block_out_channels": [4, 4], "precision": "fp32"}
    base |= {"checkpoint_every": 2, "log_every": 1, "progress": False}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The resume fixtures' tiny pipeline (``pipe/``) and captioned images (``images/``)."""
    return fx.make_latent_workdir(tmp_path_factory.mktemp("loop"))


def latent_cfg(work: Path, out: Path, **kw) -> FinetuneConfig:
    base = {"pretrained": str(work / "pipe"), "data": str(work / "images"), "out": str(out), "steps": 1, "batch": 2}
    base |= {"lr": 1e-3, "warmup": 1, "precision": "fp32", "progress": False, "log_every": 1}
    return FinetuneConfig(**{**base, **kw})


# ---------------------------------------------------------------- one loop, one config approach


def test_both_tasks_run_in_the_one_loop():
    from ambient.latent import LatentFinetuner

    assert issubclass(Trainer, TrainingLoop) and issubclass(LatentFinetuner, TrainingLoop)
    assert LatentDenoiser.forward is not DDPMAdapter.forward  # only a check of cond, then DDPMAdapter's mapping
    for cls in (TrainConfig, FinetuneConfig):
        helps = help_texts(cls)
        assert all(helps.values()), [k for k, v in helps.items() if not v]
        assert set(cls.RESUME_KEYS) <= {f.name for f in dataclasses.fields(cls)}


def test_a_resumed_pixel_run_says_from_which_step_and_refuses_a_changed_setting(tmp_path, capsys):
    c = pixel_cfg(tmp_path)
    train(c, fx.toy_dataset())
    assert "resuming" not in capsys.readouterr().out
    tr = Trainer(replace(c, steps=4), fx.toy_dataset())
    assert tr.step == 2 and tr.resumed_from == 2
    assert f"resuming from step 2 of {Path(c.out) / CHECKPOINT}" in capsys.readouterr().out
    # the pixel resume used to take these silently; now every setting that matters is checked, and named
    for kw, key in [
        ({"lr": 2e-3}, "lr"),
        ({"warmup": 3}, "warmup"),
        ({"ema": 0.5}, "ema"),
        ({"lr_decay": "cosine"}, "lr_decay"),
    ]:
        with pytest.raises(ValueError, match=f"written with {key}="):
            Trainer(replace(c, steps=4, **kw), fx.toy_dataset())
    # how long, how often and how shown may change
    Trainer(replace(c, steps=5, log_every=3, checkpoint_every=5, precision="bf16"), fx.toy_dataset())


def test_settings_added_later_count_as_what_the_old_checkpoint_used():
    for case in ("pixel_ambient_cosine", "latent_ambient_ema"):
        saved = json.loads((DATA / case / "checkpoint" / "state.json").read_text())["config"]
        new = {f.name for f in dataclasses.fields(TrainConfig if case.startswith("pixel") else FinetuneConfig)}
        assert new - set(saved), case  # the fixtures predate max_grad_norm (pixel), lr_decay (latent) ...
    # ... and test_resume_fixtures.py resumes them bit for bit


def test_baseline_with_a_sigma_n_is_refused(tmp_path, work, capsys):
    with pytest.raises(ValueError, match="baseline loss does not use it"):
        pixel_cfg(tmp_path, loss="baseline", sigma_n=1.0).validate()
    with pytest.raises(ValueError, match="baseline loss does not use it"):
        latent_cfg(work, tmp_path / "x", loss="baseline", sigma_n=1.0).validate()
    rc = cli_main(["train", "--out", str(tmp_path / "p"), "--data", "toy", "--loss", "baseline", "--sigma-n", "1.0"])
    assert rc == 2 and "--sigma-n 1.0" in capsys.readouterr().err
    args = [
        "finetune",
        "--pretrained",
        str(work / "pipe"),
        "--data",
        str(work / "images"),
        "--out",
        str(tmp_path / "l"),
    ]
    assert cli_main([*args, "--loss", "baseline", "--sigma-n", "1.0"]) == 2
    assert "baseline loss does not use it" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "l").exists()


# ---------------------------------------------------------------- the latent side's defects


def test_captions_that_are_not_utf8_name_the_file_and_line(tmp_path):
    folder = write_images(tmp_path / "txt", ["a", "b"])
    (folder / "img_1.txt").write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"img_1\.txt line 2 is not UTF-8 text \(byte 0xe9"):
        read_captioned_folder(folder)
    meta = write_images(tmp_path / "jsonl", ["a", "b"])
    lines = ['{"file_name": "img_0.png", "text": "ok"}', '{"file_name": "img_1.png", "text": "caf\xe9"}']
    (meta / "metadata.jsonl").write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(ValueError, match=r"metadata\.jsonl line 2 is not UTF-8"):
        read_captioned_folder(meta)


def test_copies_of_one_base_pipeline_stay_one_pipeline(tmp_path, work):
    copy = shutil.copytree(work / "pipe", tmp_path / "elsewhere" / "pipe-copy")
    a = finetune(latent_cfg(work, tmp_path / "a"))
    b = finetune(replace(latent_cfg(work, tmp_path / "b", loss="ambient", sigma_n=0.5), pretrained=str(copy)))
    for comp in ("vae", "text_encoder", "tokenizer"):
        assert component_signature(a, comp) == component_signature(b, comp), comp
        for p in sorted((a / comp).glob("*.json")):  # the exported files themselves carry no load path
            assert p.read_bytes() == (b / comp / p.name).read_bytes(), p
    assert check_pipeline_dir(a)["unet"] == check_pipeline_dir(b)["unet"]
    assert "_name_or_path" not in json.loads((a / "model_index.json").read_text())
    # folders written before (with diffusers' _name_or_path, a local path) compare by what matters too
    for folder, where in ((a, "/one/place"), (b, "/another/place")):
        cfg = json.loads((folder / "vae" / "config.json").read_text())
        (folder / "vae" / "config.json").write_text(json.dumps({**cfg, "_name_or_path": where}))
    assert component_signature(a, "vae") == component_signature(b, "vae")
    other = json.loads((b / "vae" / "config.json").read_text())
    (b / "vae" / "config.json").write_text(json.dumps({**other, "scaling_factor": 0.5}))
    assert component_signature(a, "vae") != component_signature(b, "vae")


def test_one_sidecar_and_the_older_file_still_reads(tmp_path, work):
    out = finetune(latent_cfg(work, tmp_path / "run"))
    assert (out / SIDECAR_NAME).is_file() and not (out / LEGACY_LATENT_SIDECAR).exists()
    s = read_ambient_settings(out)
    assert s["type"] == "latent" and s["steps"] == 1 and s["weights"] == "raw"
    assert not is_model_dir(out)  # a pipeline with the sidecar is still a pipeline, not an EDM model folder
    assert isinstance(load_denoiser(out), DDPMAdapter)
    old = shutil.copytree(out, tmp_path / "old")
    legacy = {**s, "format_version": 1}
    (old / SIDECAR_NAME).unlink()
    (old / LEGACY_LATENT_SIDECAR).write_text(json.dumps(legacy))
    assert read_ambient_settings(old) == legacy
    (old / LEGACY_LATENT_SIDECAR).unlink()
    with pytest.raises(FileNotFoundError, match="not a pipeline exported"):
        read_ambient_settings(old)


def test_pretrained_accepts_the_hub_form_of_pairs_json(tmp_path, work, monkeypatch):
    from huggingface_hub import constants

    commit = "0" * 40
    base = tmp_path / "cache" / "models--someone--tiny-sd"
    shutil.copytree(work / "pipe", base / "snapshots" / commit)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    out = finetune(replace(latent_cfg(work, tmp_path / "run"), pretrained="hub:someone/tiny-sd"))
    assert read_ambient_settings(out)["pretrained"] == "hub:someone/tiny-sd"


def test_no_accelerate_notice(work):
    from diffusers import UNet2DConditionModel

    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger("diffusers.models.modeling_utils")
    h = Catch()
    log.addHandler(h)
    try:
        LatentDenoiser.from_pipeline_dir(work / "pipe")
        UNet2DConditionModel.from_pretrained(work / "pipe", subfolder="unet")  # as other modules load, by default
    finally:
        log.removeHandler(h)
    assert not [m for m in seen if "accelerate" in m]
