"""Write the resume fixtures of tests/test_resume_fixtures.py: checkpoints of tiny runs and what continuing them gives.

Run once, from the repository root, with the trainer that wrote them (``Trainer`` of ambient/training.py and
``LatentFinetuner`` of ambient/latent.py as of commit d6eb122, before the one training loop):

    .venv/bin/python tests/data/resume/make_fixtures.py

For each case it trains to ``STOP`` steps (the checkpoint kept here), then continues a copy of that checkpoint to
``END`` steps and records the losses of the continued steps and a sha256 of every tensor of the continued
checkpoint (model, EMA, optimiser) and of the exported weights. The test resumes the kept checkpoint with today's
code and requires the same numbers, bit for bit. The cases: a pixel run shaped like the grid's runs (Ambient loss,
captions, upsample 2, patch 2, cosine learning-rate decay), a pixel baseline run with dropout and weight decay,
and a latent fine-tune of a tiny Stable-Diffusion-shaped pipeline (Ambient loss, EMA).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
STOP, END = 3, 6


class FakeEncoder:
    """The sentence encoder's stand-in: unit vectors seeded by the prompt's CRC (as in tests/test_training.py)."""

    dim = 6

    def encode(self, prompts):
        out = torch.zeros(len(prompts), self.dim)
        for i, p in enumerate(prompts):
            if p:
                v = torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                out[i] = v / v.norm()
        return out


def toy_dataset():
    from ambient.data import ImageDataset, from_uint8

    u8 = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    return ImageDataset(
        from_uint8(u8), torch.arange(12) % 3, [100 + 7 * i for i in range(12)], ["sneaker", "dress", "bag"], "toy"
    )


PIXEL_CASES = {
    "pixel_ambient_cosine": {
        "data": "toy",
        "n": 12,
        "loss": "ambient",
        "sigma_n": 0.5,
        "upsample": 2,
        "patch": 2,
        "lr": 1e-3,
        "warmup": 2,
        "lr_decay": "cosine",
        "ema": 0.9,
        "batch": 4,
        "seed": 1,
        "text_model": "fake-encoder",
        "block_out_channels": [4, 4],
        "p_mean": -0.5,
        "precision": "fp32",
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
    },
    "pixel_baseline_dropout": {
        "data": "toy",
        "n": 12,
        "loss": "baseline",
        "lr": 1e-3,
        "warmup": 4,
        "ema": 0.8,
        "batch": 3,
        "seed": 2,
        "text_model": None,
        "block_out_channels": [4, 4],
        "dropout": 0.1,
        "weight_decay": 0.01,
        "precision": "fp32",
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
    },
}

LATENT_CASE = {
    "pretrained": "pipe",  # relative to the run's working folder, as the test lays it out
    "data": "images",
    "loss": "ambient",
    "sigma_n": 0.5,
    "batch": 2,
    "lr": 1e-3,
    "warmup": 2,
    "ema": 0.9,
    "seed": 3,
    "precision": "fp32",
    "checkpoint_every": 2,
    "log_every": 1,
    "progress": False,
}


def small_unet_config() -> dict:
    """A smaller UNet than tests/helpers.py's, so that the kept checkpoint stays small."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import tiny_unet_config

    c = tiny_unet_config()
    c.update(block_out_channels=(4, 4))
    return c


def make_latent_workdir(folder: Path) -> Path:
    """``pipe/`` (the tiny pipeline of tests/helpers.py with a smaller UNet) and ``images/`` in ``folder``."""
    sys.path.insert(0, str(ROOT))
    from diffusers import UNet2DConditionModel

    from tests.helpers import make_tiny_pipeline, write_images

    make_tiny_pipeline(folder / "pipe")
    torch.manual_seed(1)
    UNet2DConditionModel(**small_unet_config()).save_pretrained(folder / "pipe" / "unet", safe_serialization=True)
    write_images(folder / "images")
    return folder


def digest(path: Path) -> str:
    """sha256 over every tensor of a safetensors file: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(path)).items()):
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def checkpoint_digests(ck: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(ck.glob("*.safetensors"))}


def continued(state: dict) -> dict:
    """What the continued run's state.json says beyond the tensors (losses without timings, optimiser meta)."""
    return {
        "step": state["step"],
        "losses": [(h["step"], h["loss"]) for h in state["history"]],
        "optimizer": state["optimizer"],
    }


def pixel_cases() -> None:
    from ambient.training import TrainConfig, Trainer

    for name, kw in PIXEL_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            first = Path(tmp) / "first"
            enc = FakeEncoder() if kw["text_model"] else None
            Trainer(TrainConfig(out=str(first), steps=STOP, **kw), toy_dataset(), enc).run()
            second = Path(tmp) / "second"
            second.mkdir()
            shutil.copytree(first / "checkpoint", second / "checkpoint")
            Trainer(TrainConfig(out=str(second), steps=END, **kw), toy_dataset(), enc).run()
            keep = HERE / name
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(first / "checkpoint", keep / "checkpoint")
            state = json.loads((second / "checkpoint" / "state.json").read_text())
            expected = {
                "config": {**kw, "steps": END},
                "checkpoint": checkpoint_digests(second / "checkpoint"),
                "export": {
                    "unet/diffusion_pytorch_model.safetensors": digest(
                        second / "model" / "unet" / "diffusion_pytorch_model.safetensors"
                    )
                },
                **continued(state),
            }
            (keep / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


def latent_case() -> None:
    from ambient.latent import FinetuneConfig, LatentFinetuner

    with tempfile.TemporaryDirectory() as tmp:
        work = make_latent_workdir(Path(tmp))
        cwd = os.getcwd()
        os.chdir(work)
        try:
            LatentFinetuner(FinetuneConfig(out="first", steps=STOP, **LATENT_CASE)).run()
            Path("second").mkdir()
            shutil.copytree("first/checkpoint", "second/checkpoint")
            LatentFinetuner(FinetuneConfig(out="second", steps=END, **LATENT_CASE)).run()
        finally:
            os.chdir(cwd)
        keep = HERE / "latent_ambient_ema"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(work / "first" / "checkpoint", keep / "checkpoint")
        state = json.loads((work / "second" / "checkpoint" / "state.json").read_text())
        expected = {
            "config": {**LATENT_CASE, "steps": END},
            "checkpoint": checkpoint_digests(work / "second" / "checkpoint"),
            "export": {
                "unet/diffusion_pytorch_model.safetensors": digest(
                    work / "second" / "model" / "unet" / "diffusion_pytorch_model.safetensors"
                )
            },
            **continued(state),
        }
        (keep / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    pixel_cases()
    latent_case()
    print("\n".join(f"{p.relative_to(HERE)} {p.stat().st_size}" for p in sorted(HERE.rglob("*")) if p.is_file()))
