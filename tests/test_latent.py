"""Ambient fine-tuning of a latent text-to-image pipeline (ambient.latent, ``python -m ambient finetune``).

Everything runs on a TINY Stable-Diffusion-shaped pipeline built here from configs (random weights, a CLIP
tokenizer made from a 74-token vocabulary written into the test folder), saved with ``save_pretrained``: no hub.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ambient.latent
from ambient.cli import main as cli_main
from ambient.denoiser import DDPMAdapter
from ambient.latent import (
    AMBIENT_JSON,
    CACHE_NAME,
    CHECKPOINT,
    FinetuneConfig,
    LatentDenoiser,
    LatentFinetuner,
    check_pipeline_dir,
    finetune,
    load_image,
    read_ambient_settings,
    read_cache,
    read_captioned_folder,
)
from ambient.losses import edm_loss, fixed_noise, loss_weight
from ambient.training import help_texts
from tests.helpers import CAPTIONS, make_tiny_pipeline, write_images, write_sd15_configs

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    return make_tiny_pipeline(root / "pipe"), write_images(root / "images")


def config(tiny, out: Path, **kw) -> FinetuneConfig:
    pipe, images = tiny
    base = {
        "pretrained": str(pipe),
        "data": str(images),
        "out": str(out),
        "steps": 3,
        "batch": 2,
        "lr": 1e-3,
        "warmup": 1,
        "precision": "fp32",
        "checkpoint_every": 2,
        "progress": False,
        "log_every": 100,
    }
    return FinetuneConfig(**{**base, **kw})


def cli_args(tiny, out: Path, steps: int, *extra: str) -> list[str]:
    pipe, images = tiny
    return [
        "finetune", "--pretrained", str(pipe), "--data", str(images), "--out", str(out), "--steps", str(steps),
        "--batch", "2", "--lr", "1e-3", "--warmup", "1", "--ema", "0.9", "--loss", "ambient", "--sigma-n", "0.5",
        "--precision", "fp32", "--log-every", "100", "--no-progress", *extra,
    ]  # fmt: skip


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


# ---------------------------------------------------------------- the denoiser and the loss weight


def test_latent_denoiser_is_the_ddpm_adapter_mapping_with_token_states(tiny):
    """Same sigma <-> timestep mapping and output conversion as DDPMAdapter: one token of states gives the same x0_hat
    as DDPMAdapter's pooled condition; and EDM's weight on x0_hat is (1 + sigma^2 / sigma_data^2) on the eps MSE."""
    from diffusers import DDPMScheduler

    d = LatentDenoiser.from_pipeline_dir(tiny[0])

    class Plain(torch.nn.Module):  # DDPMAdapter looks for encoder_hidden_states in forward's own code, which
        dtype = torch.float32  # diffusers' decorated UNet2DConditionModel.forward hides

        def forward(self, x, t, encoder_hidden_states=None):
            return d.unet(x, t, encoder_hidden_states=encoder_hidden_states)

    ref = DDPMAdapter.from_scheduler(Plain(), DDPMScheduler.from_pretrained(tiny[0] / "scheduler"))
    assert LatentDenoiser.sigma_to_t is DDPMAdapter.sigma_to_t and torch.equal(d.log_sigmas, ref.log_sigmas)
    assert d.sigma_min == pytest.approx(0.0292, abs=1e-3) and d.sigma_max == pytest.approx(14.61, abs=0.01)
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 1, 16, generator=g)
    sigma = torch.tensor([0.05, 1.0, 9.0])
    with torch.no_grad():
        assert torch.equal(d(x, sigma, cond), ref(x, sigma, cond[:, 0]))
        x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
        cond = torch.randn(3, 12, 16, generator=g)
        loss = edm_loss(d, x0, sigma, noise, cond, sigma_data=1.0)
        xs = x0 + sigma[:, None, None, None] * noise
        eps_hat = (xs - d(xs, sigma, cond)) / sigma[:, None, None, None]
    w = (1 + sigma**2)[:, None, None, None]  # = lambda(sigma) sigma^2 at sigma_data 1 = 1 / alphas_cumprod
    assert torch.allclose(w, loss_weight(sigma, 1.0)[:, None, None, None] * sigma[:, None, None, None] ** 2)
    assert torch.allclose(loss, w * (eps_hat - noise) ** 2, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="token states"):
        d(x, sigma, None)


# ---------------------------------------------------------------- fine-tuning, export, cache


@pytest.mark.parametrize("loss", ["baseline", "ambient"])
def test_finetune_each_loss_and_export_a_loadable_pipeline(tiny, tmp_path, loss):
    from diffusers import StableDiffusionPipeline

    t0 = time.perf_counter()
    path = finetune(config(tiny, tmp_path / "run", loss=loss, sigma_n=0.5 if loss == "ambient" else 0.0))
    assert path == tmp_path / "run" / "model"
    assert time.perf_counter() - t0 < 60
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([CACHE_NAME, CHECKPOINT, "model"])
    assert (path / UNET_WEIGHTS).is_file() and (path / AMBIENT_JSON).is_file() and not list(path.rglob("*.bin"))
    pipe = StableDiffusionPipeline.from_pretrained(path)
    pre = tiny[0]
    tuned, start = load_file(str(path / UNET_WEIGHTS)), load_file(str(pre / UNET_WEIGHTS))
    assert any(not torch.equal(tuned[k], start[k]) for k in start)  # the UNet trained ...
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert_same(load_file(str(path / vae)), load_file(str(pre / vae)))  # ... the rest did not
    s = read_ambient_settings(path)
    assert s["loss"] == loss and s["steps"] == 3 and s["weights"] == "raw"
    assert s["sigma_n"] == (0.5 if loss == "ambient" else None)
    assert s["train_files"] == [f"img_{i}.png" for i in range(6)] and s["train_captions"] == CAPTIONS
    assert s["latent_shape"] == [4, 8, 8] and s["resolution"] == 16 and s["prediction_type"] == "epsilon"
    state = json.loads((tmp_path / "run" / CHECKPOINT / "state.json").read_text())
    assert state["step"] == 3 and state["history"][-1]["images_per_s"] > 0
    out = pipe("a red cat", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


def test_cache_is_written_once_and_reused(tiny, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    out = tmp_path / "run"
    finetune(config(tiny, out, steps=2))
    tensors, meta = read_cache(out / CACHE_NAME)
    assert tensors["latents"].shape == (6, 4, 8, 8)
    assert meta["captions"] == ["", "a blue dog", "a red cat", "green tree 1", "small house"]  # distinct, "" first
    assert tensors["caption_index"].tolist() == [2, 1, 2, 3, 0, 4]
    assert tensors["text"].shape == (5, 12, 16)
    vae = AutoencoderKL.from_pretrained(tiny[0] / "vae")
    with torch.no_grad():
        z = vae.encode(load_image(tiny[1] / "img_3.png", 16)[None]).latent_dist.mode() * vae.config.scaling_factor
    assert torch.allclose(tensors["latents"][3], z[0], atol=1e-6)  # the VAE's mean, scaled: no sampling

    before = (out / CACHE_NAME).read_bytes(), (out / CACHE_NAME).stat().st_mtime_ns

    def no_encoding(*a, **k):
        raise AssertionError("the cache was recomputed")

    monkeypatch.setattr(ambient.latent, "build_cache", no_encoding)
    resumed = LatentFinetuner(config(tiny, out, steps=3))
    assert resumed.step == 2
    resumed.run()  # on the cached latents
    assert ((out / CACHE_NAME).read_bytes(), (out / CACHE_NAME).stat().st_mtime_ns) == before
    assert read_ambient_settings(out / "model")["steps"] == 3

    changed = tmp_path / "changed"
    shutil.copytree(tiny[1], changed)
    (changed / "img_0.txt").write_text("another caption")
    with pytest.raises(ValueError, match="computed from other images, captions"):
        LatentFinetuner(config(tiny, out, data=str(changed)))


def test_ambient_uses_one_fixed_noise_per_image_and_is_the_baseline_below_sigma_n(tiny, tmp_path, monkeypatch):
    sigma_n = 1.0
    amb = LatentFinetuner(config(tiny, tmp_path / "amb", loss="ambient", sigma_n=sigma_n))
    base = LatentFinetuner(config(tiny, tmp_path / "base"))
    seen: dict[int, list[torch.Tensor]] = {}
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = ambient.latent.ambient_loss

    def spy(D, x0, sigma, sn, eta, noise, *rest):
        calls.append((x0.clone(), eta.clone()))
        return real(D, x0, sigma, sn, eta, noise, *rest)

    monkeypatch.setattr(ambient.latent, "ambient_loss", spy)
    below = above = 0
    with torch.no_grad():
        for step in range(24):
            idx, sigma, _, _ = amb.draws(step)
            la, lb = amb.loss_at(step), base.loss_at(step)
            x0, eta = calls[-1]
            assert torch.equal(x0, amb.latents[idx])
            for k, i in enumerate(idx.tolist()):
                if sigma[k] >= sigma_n:  # the high-noise target: image i's one noisy copy
                    seen.setdefault(i, []).append(x0[k] + sigma_n * eta[k])
                    assert torch.equal(eta[k], fixed_noise([i], (4, 8, 8), 0)[0])
            if (sigma < sigma_n).all():
                below += 1
                assert torch.equal(la, lb)  # below sigma_n: exactly the baseline loss on clean latents
            else:
                above += 1
                assert not torch.equal(la, lb)
    assert below and above
    repeated = [i for i, ts in seen.items() if len(ts) > 1]
    assert repeated, "no image was drawn twice above sigma_n"
    for i in repeated:
        assert all(torch.equal(t, seen[i][0]) for t in seen[i])  # the same noisy target in every step
    firsts = [ts[0] for ts in seen.values()]
    assert all(not torch.equal(a, b) for k, a in enumerate(firsts) for b in firsts[k + 1 :])  # one field per image


def test_two_chunks_equal_one_run_bit_for_bit(tiny, tmp_path):
    """Resume in process (model, EMA, AdamW state and step from the checkpoint): the same weights as one run."""
    kw = {"loss": "ambient", "sigma_n": 0.5, "ema": 0.9, "caption_dropout": 0.5}
    finetune(config(tiny, tmp_path / "one", steps=4, **kw))
    finetune(config(tiny, tmp_path / "two", steps=2, **kw))
    assert json.loads((tmp_path / "two" / CHECKPOINT / "state.json").read_text())["step"] == 2
    resumed = LatentFinetuner(config(tiny, tmp_path / "two", steps=4, **kw))
    assert resumed.step == 2  # it resumes, it does not start over
    resumed.run()
    for name in ("unet.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert_same(
            load_file(str(tmp_path / "one" / CHECKPOINT / name)), load_file(str(tmp_path / "two" / CHECKPOINT / name))
        )
    assert_same(
        load_file(str(tmp_path / "one" / "model" / UNET_WEIGHTS)),
        load_file(str(tmp_path / "two" / "model" / UNET_WEIGHTS)),
    )
    assert read_ambient_settings(tmp_path / "two" / "model")["weights"] == "ema"
    with pytest.raises(ValueError, match="sigma_n=0.5, this run has 0.7"):
        LatentFinetuner(config(tiny, tmp_path / "two", steps=5, **{**kw, "sigma_n": 0.7}))


def test_sigkill_a_cli_run_and_resume_to_the_same_weights(tiny, tmp_path, monkeypatch):
    """SIGKILL ``python -m ambient finetune`` once it has a checkpoint; resuming gives an uninterrupted run's weights."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ambient", *cli_args(tiny, out, 100_000, "--checkpoint-every", "1")]
    victim = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120

        def checkpointed() -> int:
            try:  # the folder may be mid-rename: no state.json for an instant
                return json.loads((out / CHECKPOINT / "state.json").read_text())["step"]
            except (OSError, ValueError):
                return 0

        while checkpointed() < 2:
            assert victim.poll() is None, victim.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (out / "model").exists()
    ck = out / CHECKPOINT if (out / CHECKPOINT).is_dir() else out / f".{CHECKPOINT}.old"
    killed_at = json.loads((ck / "state.json").read_text())["step"]
    target = killed_at + 2
    steps_run = []
    real_step = LatentFinetuner.train_step
    monkeypatch.setattr(LatentFinetuner, "train_step", lambda self: steps_run.append(self.step) or real_step(self))
    assert cli_main(cli_args(tiny, out, target)) == 0  # the restart
    assert steps_run == [killed_at, killed_at + 1]  # it resumed, it did not start over
    assert cli_main(cli_args(tiny, tmp_path / "ref", target)) == 0  # the uninterrupted run
    for name in ("unet.safetensors", "ema.safetensors"):
        assert_same(load_file(str(tmp_path / "ref" / CHECKPOINT / name)), load_file(str(out / CHECKPOINT / name)))
    assert_same(load_file(str(tmp_path / "ref" / "model" / UNET_WEIGHTS)), load_file(str(out / "model" / UNET_WEIGHTS)))
    assert read_ambient_settings(out / "model")["steps"] == target
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary or .old folder left


# ---------------------------------------------------------------- inputs


def test_metadata_jsonl_gives_the_captions(tmp_path):
    folder = write_images(tmp_path / "meta", ["x", "y", "z"])
    for p in folder.glob("*.txt"):
        p.unlink()
    rows = [{"file_name": "img_2.png", "text": "two"}, {"file_name": "img_0.png", "text": " zero "}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_captioned_folder(folder) == (["img_0.png", "img_2.png"], ["zero", "two"])  # unlisted images: not used
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "img_9.png", "text": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match="line 1: .*img_9.png does not exist"):
        read_captioned_folder(folder)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "img_0.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match='line 1 needs "file_name" and "text"'):
        read_captioned_folder(folder)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "../img_0.png", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="must be a path inside"):
        read_captioned_folder(folder)


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = cli_main(args)
    return rc, capsys.readouterr().err


def test_bad_arguments_give_clear_errors(tiny, tmp_path, capsys, monkeypatch):
    pipe, images = tiny
    args = cli_args(tiny, tmp_path / "run", 2)

    def with_(flag: str, value: str) -> list[str]:
        a = list(args)
        a[a.index(flag) + 1] = value
        return a

    rc, err = run_cli(with_("--data", str(tmp_path / "nowhere")), capsys)
    assert rc == 2 and "image folder" in err and "does not exist" in err
    bare = write_images(tmp_path / "bare", ["a", "b", "c"])
    (bare / "img_1.txt").unlink()
    rc, err = run_cli(with_("--data", str(bare)), capsys)
    assert rc == 2 and "1 of 3 images" in err and "img_1.png" in err and "metadata.jsonl" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = run_cli(with_("--data", str(empty)), capsys)
    assert rc == 2 and "holds no images" in err
    for sn in ("0", "-1"):
        rc, err = run_cli(with_("--sigma-n", sn), capsys)
        assert rc == 2 and "the ambient loss needs --sigma-n > 0" in err
    rc, err = run_cli(with_("--sigma-n", "20"), capsys)
    assert rc == 2 and "outside the scheduler's sigma range" in err
    rc, err = run_cli(with_("--pretrained", str(tmp_path / "no-pipe")), capsys)
    assert rc == 2 and "does not exist" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, err = run_cli(with_("--pretrained", "someone/not-cached-here"), capsys)
    assert rc == 2 and "HF_HUB_OFFLINE=1" in err
    pixel = tmp_path / "pixel"  # a DDPM pixel pipeline: no text encoder
    shutil.copytree(pipe, pixel)
    index = json.loads((pixel / "model_index.json").read_text())
    del index["text_encoder"]
    (pixel / "model_index.json").write_text(json.dumps(index))
    rc, err = run_cli(with_("--pretrained", str(pixel)), capsys)
    assert rc == 2 and "has no text_encoder" in err
    assert not (tmp_path / "run").exists()  # nothing written by a refused run
    with pytest.raises(SystemExit):
        cli_main(["finetune", "--data", str(images), "--out", str(tmp_path / "x")])  # --pretrained is required
    with pytest.raises(ValueError, match="caption_dropout"):
        FinetuneConfig(pretrained="p", data="d", caption_dropout=2).validate()


def test_full_size_stable_diffusion_structure_is_accepted(tmp_path):
    """SD-1.5's component configs (no weights): checked, resolution 512 = 64 x 8, and the UNet built on the meta
    device maps to the scheduler's sigma range [0.0292, 14.6]."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    d = write_sd15_configs(tmp_path / "sd15")
    cfg = check_pipeline_dir(d)
    assert ambient.latent.vae_factor(cfg["vae"]) == 8 and cfg["unet"]["sample_size"] * 8 == 512
    with torch.device("meta"):
        net = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d / "unet"))
    den = LatentDenoiser.from_scheduler(net, DDPMScheduler.from_pretrained(d / "scheduler"))
    assert den.sigma_min == pytest.approx(0.0292, abs=1e-3) and den.sigma_max == pytest.approx(14.61, abs=0.01)
    assert sum(p.numel() for p in net.parameters()) > 800_000_000

    unet = json.loads((d / "unet/config.json").read_text())
    unet["addition_embed_type"] = "text_time"  # an SDXL-class UNet: refused
    (d / "unet/config.json").write_text(json.dumps(unet))
    with pytest.raises(ValueError, match="SDXL-class"):
        check_pipeline_dir(d)
    unet.pop("addition_embed_type")
    unet["cross_attention_dim"] = 1024
    (d / "unet/config.json").write_text(json.dumps(unet))
    with pytest.raises(ValueError, match="attends to 1024-d states"):
        check_pipeline_dir(d)


def test_every_finetune_option_has_a_help_text(capsys):
    helps = help_texts(FinetuneConfig)  # each field carries its help text
    assert all(helps[f.name] for f in fields(FinetuneConfig))
    with pytest.raises(SystemExit):
        cli_main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(FinetuneConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert " ".join(helps[f.name].split()) in text
    assert "(default: 0.0)" in text and asdict(FinetuneConfig())["sigma_data"] == 1.0


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tiny, tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo on CPU): rank 0 writes the cache, both train, one pipeline is exported."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "run"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ambient", "--", *cli_args(tiny, out, 3)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    s = read_ambient_settings(out / "model")
    assert s["steps"] == 3 and s["train_files"] == [f"img_{i}.png" for i in range(6)]
    assert json.loads((out / CHECKPOINT / "state.json").read_text())["step"] == 3
    tuned, start = load_file(str(out / "model" / UNET_WEIGHTS)), load_file(str(tiny[0] / UNET_WEIGHTS))
    assert any(not torch.equal(tuned[k], start[k]) for k in start)
