"""Training loop: steps, EMA, text conditioning, atomic resumable checkpoints, kill/resume, torchrun."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ambient.denoiser
import ambient.training
from ambient.cli import main as cli_main
from ambient.data import ImageDataset, from_uint8
from ambient.denoiser import EDMDenoiser, load_denoiser
from ambient.losses import edm_loss, fixed_noise
from ambient.training import CHECKPOINT, TrainConfig, Trainer, caption_table, train

torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP spin-waits on a busy machine

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


class FakeEncoder:
    """A deterministic stand-in for the sentence encoder: unit vectors seeded by the prompt's CRC."""

    dim = 6

    def __init__(self):
        self.seen = []

    def encode(self, prompts):
        self.seen += list(prompts)
        out = torch.zeros(len(prompts), self.dim)
        for i, p in enumerate(prompts):
            if p:
                v = torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                out[i] = v / v.norm()
        return out


def toy_dataset(n=12, size=8, seed=0):
    u8 = np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return ImageDataset(
        from_uint8(u8), torch.arange(n) % 3, [100 + 7 * i for i in range(n)], ["sneaker", "dress", "bag"], "toy"
    )


def cfg(tmp_path, **kw):
    base = {
        "out": str(tmp_path / "run"),
        "data": "toy",
        "n": 12,
        "steps": 4,
        "batch": 4,
        "lr": 1e-3,
        "warmup": 2,
        "ema": 0.9,
        "text_model": None,
        "block_out_channels": [8, 16],
        "precision": "fp32",
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def weights(path):
    """The network's weights in a training checkpoint (model.safetensors) or a model folder (either layout)."""
    if (Path(path) / "model.safetensors").is_file():
        return load_file(str(Path(path) / "model.safetensors"))
    return {k: v for k, v in EDMDenoiser.from_pretrained(path).net.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- in-process training


def test_steps_ema_export_and_meta(tmp_path):
    enc = FakeEncoder()
    c = cfg(tmp_path, loss="ambient", sigma_n=0.5, text_model="fake-encoder", snapshot_every=2)
    tr = Trainer(c, toy_dataset(), enc)
    # text conditioning: every caption of every class was encoded, and the model takes the vectors
    assert tr.model.cond_dim == FakeEncoder.dim
    assert tr.captions.shape == (3, len(caption_table(["sneaker"])[0]), FakeEncoder.dim)
    assert set(enc.seen) == {p for row in caption_table(["sneaker", "dress", "bag"]) for p in row}
    # one fixed noise field per image, keyed by its source id
    assert torch.equal(tr.eta, fixed_noise(tr.data.ids, (1, 8, 8), c.seed))

    p0 = [p.detach().clone() for p in tr.model.parameters()]
    loss = tr.train_step()
    assert np.isfinite(loss) and tr.step == 1
    p1 = [p.detach().clone() for p in tr.model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(p0, p1, strict=True))
    for e, a, b in zip(tr.ema.parameters(), p0, p1, strict=True):  # EMA: ema <- ema + (1 - d)(p - ema)
        torch.testing.assert_close(e, a + 0.1 * (b - a), rtol=1e-5, atol=1e-7)

    path = tr.run()
    assert path == Path(c.out) / "model"
    m = EDMDenoiser.from_pretrained(path)
    assert m.meta["loss"] == "ambient" and m.meta["sigma_n"] == 0.5 and m.meta["steps"] == 4
    assert m.meta["train_ids"] == [100 + 7 * i for i in range(12)] and m.meta["seed"] == 0
    assert m.meta["text_model"] == "fake-encoder" and m.cond_dim == FakeEncoder.dim
    assert_same_weights(weights(path), {k: v for k, v in tr.ema.net.state_dict().items()})
    state = json.loads((Path(c.out) / CHECKPOINT / "state.json").read_text())
    assert state["step"] == 4 and [h["step"] for h in state["history"]] == [2, 3, 4]  # step 1 ran outside run()
    for s in (2, 4):
        assert EDMDenoiser.from_pretrained(Path(c.out) / "snapshots" / f"step_{s:06d}").meta["steps"] == s
    assert sorted(p.name for p in Path(c.out).iterdir()) == [CHECKPOINT, "model", "snapshots"]


def test_upsampled_training_sees_the_same_content_on_a_finer_noise_grid(tmp_path):
    c = cfg(tmp_path, loss="ambient", sigma_n=0.5, upsample=2, steps=2)
    tr = Trainer(c, toy_dataset())
    assert tr.images.shape[1:] == (1, 16, 16) and tr.model.image_shape == (1, 16, 16)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(tr.images, 2), tr.data.images)
    assert torch.equal(tr.eta, fixed_noise(tr.data.ids, (1, 16, 16), c.seed))  # four times the numbers per image
    m = EDMDenoiser.from_pretrained(tr.run())
    assert m.image_shape == (1, 16, 16) and m.meta["train_config"]["upsample"] == 2
    with pytest.raises(ValueError, match="upsample"):
        cfg(tmp_path, upsample=0).validate()


def test_a_patch_stem_trains_at_the_finer_side_and_exports_a_model_of_that_side(tmp_path):
    c = cfg(tmp_path, upsample=2, patch=2, steps=2)
    tr = Trainer(c, toy_dataset())
    assert tr.model.image_shape == (1, 16, 16)
    assert tr.model.net.unet_config["sample_size"] == 8 and tr.model.net.unet_config["in_channels"] == 4
    m = EDMDenoiser.from_pretrained(tr.run())
    assert m.image_shape == (1, 16, 16) and m.net.patch == 2
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(m(x, 1.0), tr.ema(x, 1.0))  # the exported model is the trained average
    for bad in (0, 3):  # 3 does not divide the trained side 16
        with pytest.raises(ValueError, match="patch"):
            cfg(tmp_path, upsample=2, patch=bad).validate()


def test_training_lowers_the_loss_on_fixed_draws(tmp_path):
    """Not convergence: 40 steps must lower the EDM loss on a fixed set of (image, sigma, noise) draws."""
    tr = Trainer(cfg(tmp_path, steps=40, batch=8, lr=2e-3, warmup=1, checkpoint_every=100), toy_dataset())
    g = torch.Generator().manual_seed(123)
    x0 = tr.images[torch.randint(12, (64,), generator=g)]
    sigma = torch.exp(torch.randn(64, generator=g) * 1.2 - 1.2)
    noise = torch.randn(x0.shape, generator=g)

    def eval_loss():
        with torch.no_grad():
            return float(edm_loss(tr.model, x0, sigma, noise).mean())

    before = eval_loss()
    tr.run()
    assert eval_loss() < 0.9 * before


def test_batches_depend_on_seed_and_step_only(tmp_path):
    a = Trainer(cfg(tmp_path / "a", loss="ambient", sigma_n=0.5), toy_dataset())
    b = Trainer(cfg(tmp_path / "b", loss="ambient", sigma_n=0.5), toy_dataset())
    for x, y in zip(a._batch(7)[:3], b._batch(7)[:3], strict=True):  # idx, sigma, noise (cond: None)
        assert torch.equal(x, y)
    assert not torch.equal(a._batch(7)[2], a._batch(8)[2])
    sig_all = torch.cat([a._batch(s)[1] for s in range(200)])
    assert float(sig_all.min()) < 0.5 < float(sig_all.max())

    high = Trainer(cfg(tmp_path / "h", loss="ambient", sigma_n=0.5, regime="high"), toy_dataset())
    sig_high = torch.cat([high._batch(s)[1] for s in range(200)])
    assert float(sig_high.min()) >= 0.5 and float(sig_high.max()) <= 80.0  # only the high-noise regime


def test_caption_dropout_gives_zero_conditions(tmp_path):
    tr = Trainer(cfg(tmp_path, text_model="fake", caption_dropout=0.5, batch=64), toy_dataset(), FakeEncoder())
    cond = tr._batch(0)[3]
    zero = cond.abs().sum(1) == 0
    assert 10 < int(zero.sum()) < 54  # about half dropped (binomial 64, 0.5: 32 +- 4)
    torch.testing.assert_close(cond[~zero].norm(dim=1), torch.ones(int((~zero).sum())))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"loss": "l1"}, "loss"),
        ({"loss": "ambient", "sigma_n": 0.0}, "sigma-n"),
        ({"regime": "high"}, "regime"),
        ({"regime": "mid"}, "regime"),
        ({"precision": "fp8"}, "precision"),
        ({"steps": 0}, "steps"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"log_every": 0}, "log_every"),
    ],
)
def test_config_validation(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(tmp_path, **kw).validate()


def test_resume_is_exact_in_process(tmp_path):
    full = cfg(tmp_path, out=str(tmp_path / "full"), steps=6, loss="ambient", sigma_n=0.5)
    train(full, toy_dataset())
    part = replace(full, out=str(tmp_path / "part"), steps=3, checkpoint_every=3)
    train(part, toy_dataset())
    tr = Trainer(replace(part, steps=6, block_out_channels=(8, 16)), toy_dataset())  # a tuple resumes too
    assert tr.step == 3
    tr.run()
    for folder in ("model", CHECKPOINT):  # the exported EMA model and the raw weights
        assert_same_weights(weights(tmp_path / "full" / folder), weights(tmp_path / "part" / folder))


def test_resume_with_other_settings_is_refused(tmp_path):
    c = cfg(tmp_path, steps=2, loss="ambient", sigma_n=0.5)
    train(c, toy_dataset())
    for kw, key in [
        ({"loss": "baseline", "sigma_n": 0.0}, "loss"),
        ({"sigma_n": 1.0}, "sigma_n"),
        ({"seed": 1}, "seed"),
        ({"block_out_channels": [16, 16]}, "block_out_channels"),
        ({"upsample": 2}, "upsample"),
        ({"patch": 2}, "patch"),
    ]:
        with pytest.raises(ValueError, match=f"written with {key}="):
            Trainer(replace(c, steps=4, **kw), toy_dataset())
    # through the command line: a clear error and exit status 2
    npz = tmp_path / "toy.npz"
    toy_dataset().save_npz(npz)
    args = ["train", "--out", c.out, "--data", str(npz), "--n", "12", "--text-model", "none"]
    args += ["--block-out-channels", "8", "16", "--batch", "4", "--steps", "4", "--no-progress"]
    args += ["--loss", "ambient", "--sigma-n", "2.0", "--precision", "fp32"]
    assert cli_main(args) == 2


def test_resume_from_old_checkpoint_ignoring_temp_dirs(tmp_path):
    c = cfg(tmp_path, steps=4)
    train(c, toy_dataset())
    out = Path(c.out)
    ref = weights(out / CHECKPOINT)
    # killed between the two renames, with a half-written temporary folder beside it
    os.replace(out / CHECKPOINT, out / f".{CHECKPOINT}.old")
    junk = out / f".{CHECKPOINT}.tmp-abc123"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half")
    tr = Trainer(replace(c, steps=6), toy_dataset())
    assert tr.step == 4
    assert_same_weights({k: v for k, v in tr.model.net.state_dict().items()}, ref)
    tr.run()
    assert json.loads((out / CHECKPOINT / "state.json").read_text())["step"] == 6
    assert not (out / f".{CHECKPOINT}.old").exists()


@pytest.mark.parametrize("how", ["chmod", "fail_during_write", "fail_at_rename"])
def test_unwritable_output_keeps_the_previous_checkpoint(tmp_path, monkeypatch, how):
    c = cfg(tmp_path, steps=2)
    tr = Trainer(c, toy_dataset())
    tr.run()
    out = Path(c.out)
    before = {p.name: p.read_bytes() for p in (out / CHECKPOINT).iterdir()}
    tr.train_step()

    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root ignores folder permissions; the two simulated failures cover this")
        out.chmod(0o555)
    elif how == "fail_during_write":
        real = ambient.training.save_file

        def save_then_fail(tensors, path):
            if path.endswith("ema.safetensors"):
                raise OSError(errno.EROFS, "Read-only file system", path)
            real(tensors, path)

        monkeypatch.setattr(ambient.training, "save_file", save_then_fail)
    else:
        real_replace = os.replace

        def fail_moving_tmp(src, dst):
            if ".tmp-" in str(src):
                raise OSError(errno.EROFS, "Read-only file system", str(dst))
            real_replace(src, dst)

        monkeypatch.setattr(ambient.denoiser.os, "replace", fail_moving_tmp)
    try:
        with pytest.raises(OSError, match="previous checkpoint is intact"):
            tr.save_checkpoint()
    finally:
        out.chmod(0o755)
    after = {p.name: p.read_bytes() for p in (out / CHECKPOINT).iterdir()}
    assert after == before  # the step-2 checkpoint, byte for byte, where it was
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, "model"]  # no temporary or .old left
    monkeypatch.undo()
    assert Trainer(replace(c, steps=4), toy_dataset()).step == 2


# ---------------------------------------------------------------- subprocesses: kill/resume, torchrun


def sub_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli_args(out, npz, steps):
    """The command line of a tiny Ambient run on the 12 images of ``npz``."""
    return [
        "train", "--out", str(out), "--data", str(npz), "--n", "12", "--text-model", "none",
        "--block-out-channels", "8", "16", "--batch", "4", "--steps", str(steps), "--lr", "1e-3",
        "--warmup", "5", "--ema", "0.9", "--loss", "ambient", "--sigma-n", "0.5", "--precision", "fp32",
        "--checkpoint-every", "3", "--log-every", "10", "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def toy_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    toy_dataset().save_npz(path)
    return path


@pytest.fixture(scope="module")
def torchrun_job(tmp_path_factory, toy_npz):
    """A 6-step run under ``torchrun --standalone --nproc_per_node 2`` (gloo on CPU), started in the background.

    The kill test asks for it too, so that the start-up of its processes overlaps that test's.
    """
    if not (VENV_BIN / "torchrun").exists():
        yield None
        return
    folder = tmp_path_factory.mktemp("ddp")
    # "--" ends torchrun's own options: without it, its parser reads "--n" as an ambiguous prefix of them
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "ambient", "--"]
    cmd += cli_args(folder / "run", toy_npz, 6)
    log = open(folder / "log.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=folder, env=sub_env(), stdout=log, stderr=subprocess.STDOUT)
    yield proc, folder
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def test_sigkill_and_resume_matches_an_uninterrupted_run(tmp_path, toy_npz, torchrun_job):
    """SIGKILL a CLI run once a checkpoint exists, restart it: the exported EMA weights equal an uninterrupted run's.

    Every step's randomness is a function of (seed, rank, step) and the checkpoint holds model, EMA and
    Adam state, so the comparison is exact (torch.equal), not merely close. The uninterrupted reference
    runs the same command line in this process (ambient.cli.main, one thread like the subprocesses).
    """
    steps = 60
    cmd = [sys.executable, "-m", "ambient"]
    out = tmp_path / "killed"
    victim = subprocess.Popen([*cmd, *cli_args(out, toy_npz, steps)], cwd=tmp_path, env=sub_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any((out / d / "state.json").is_file() for d in (CHECKPOINT, f".{CHECKPOINT}.old")):
            assert victim.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.002)
        assert victim.poll() is None, "the run finished before it could be killed"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL

    # what a kill leaves: a complete checkpoint (or its .old twin), temporary folders at most, no model
    names = {p.name for p in out.iterdir()}
    assert names - {CHECKPOINT, f".{CHECKPOINT}.old"} <= {n for n in names if n.startswith(f".{CHECKPOINT}.tmp-")}
    ck = out / CHECKPOINT if (out / CHECKPOINT).is_dir() else out / f".{CHECKPOINT}.old"
    files = {p.name for p in ck.iterdir()}
    assert files == {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"}
    killed_at = json.loads((ck / "state.json").read_text())["step"]
    assert 0 < killed_at < steps and killed_at % 3 == 0

    restart = subprocess.Popen([*cmd, *cli_args(out, toy_npz, steps)], cwd=tmp_path, env=sub_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert cli_main(cli_args(tmp_path / "ref", toy_npz, steps)) == 0  # meanwhile, the uninterrupted run
    log, _ = restart.communicate(timeout=300)
    assert restart.returncode == 0, log
    logged = [int(line.split()[1].split("/")[0]) for line in log.splitlines() if line.startswith("step ")]
    assert logged[0] > killed_at and logged[-1] == steps  # it resumed, it did not start over

    for folder in ("model", CHECKPOINT):  # the exported EMA model and the raw weights
        assert_same_weights(weights(tmp_path / "ref" / folder), weights(out / folder))
    m = load_denoiser(out / "model")
    assert m.meta["steps"] == steps and m.meta["loss"] == "ambient"
    assert {p.name for p in out.iterdir()} - {n for n in names if n.startswith(".")} == {CHECKPOINT, "model"}


def test_torchrun_two_processes_gloo(torchrun_job):
    if torchrun_job is None:
        pytest.skip("torchrun not installed")
    proc, folder = torchrun_job
    rc = proc.wait(timeout=300)
    assert rc == 0, (folder / "log.txt").read_text()[-4000:]
    out = folder / "run"
    m = load_denoiser(out / "model")
    assert m.meta["steps"] == 6 and m.meta["train_ids"] == [100 + 7 * i for i in range(12)]
    assert json.loads((out / CHECKPOINT / "state.json").read_text())["step"] == 6
    with torch.no_grad():
        assert torch.isfinite(m(torch.zeros(2, 1, 8, 8), 1.0)).all()
    torch.manual_seed(0)  # the same seed's untrained network: training moved the weights
    untrained = ambient.denoiser.build_unet(0, 8, 1, (8, 16))
    w = weights(out / "model")
    assert any(not torch.equal(w[k], v) for k, v in untrained.net.state_dict().items())
