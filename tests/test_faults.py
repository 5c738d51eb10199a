"""Faults while training and saving: SIGKILL at seeded random points (inside checkpoint writes too), a full disk,
a read-only folder. Nothing is lost: a killed run resumes to exactly the weights of an uninterrupted one, no
checkpoint is ever read half-written, and a failed save leaves the previous checkpoint or model folder intact and
says so.

tests/test_training.py already kills a CLI run once its first checkpoint exists and simulates a read-only folder
during a checkpoint write and at its rename. Added here: a chain of seeded kills at a random training step and at
every stage of a checkpoint write (mid-file, before, between and after the renames), each followed by a check of
what is on disk; a full disk (ENOSPC as safetensors reports it); ``save_pretrained`` on a full or read-only disk;
and the same on a real, tiny tmpfs where this machine lets us mount one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

import ambient.denoiser
import ambient.io
import ambient.training
from ambient.data import ImageDataset, from_uint8, load_npz
from ambient.denoiser import EDMDenoiser, build_unet
from ambient.training import CHECKPOINT, TrainConfig, Trainer

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("AMBIENT_FAULT_SEED", "2025"))  # another seed gives another kill plan
STEPS, EVERY = 24, 2
CK_FILES = {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"}
ENOSPC_MESSAGE = "Error while serializing: I/O error: No space left on device (os error 28)"  # what safetensors says


def toy_npz(path: Path) -> Path:
    u8 = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    ImageDataset(
        from_uint8(u8), torch.arange(12) % 3, [100 + 7 * i for i in range(12)], ["a", "b", "c"], "toy"
    ).save_npz(path)
    return path


def config(out: Path, **kw) -> TrainConfig:
    base = {
        "out": str(out),
        "data": "toy",
        "n": 12,
        "steps": STEPS,
        "batch": 4,
        "lr": 1e-3,
        "warmup": 2,
        "ema": 0.9,
        "loss": "ambient",
        "sigma_n": 0.5,
        "text_model": None,
        "block_out_channels": [8, 16],
        "precision": "fp32",
        "checkpoint_every": EVERY,
        "log_every": 100,
        "progress": False,
    }
    return TrainConfig(**{**base, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """The network's weights in a training checkpoint (model.safetensors) or a model folder (either layout)."""
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    return dict(EDMDenoiser.from_pretrained(folder).net.state_dict())


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- SIGKILL at seeded random points

VICTIM = r"""
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
import safetensors.torch
import ambient.training as T
from ambient.data import load_npz

spec = json.loads(sys.argv[1])
kind, at = spec["kind"], spec["at"]
armed = [False]

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

real_step, real_checkpoint, real_save, real_replace = T.Trainer.train_step, T.Trainer.save_checkpoint, T.save_file, os.replace

def train_step(self):
    if kind == "step" and self.step == at:
        die()
    return real_step(self)

def save_checkpoint(self):
    armed[0] = self.step == at and kind != "step"
    return real_checkpoint(self)

def save_file(tensors, path):
    if armed[0] and kind == "mid-file" and Path(path).name == spec["file"]:
        data = safetensors.torch.save(tensors)
        with open(path, "wb") as f:  # part of the file reaches the disk, then the process dies
            f.write(data[: int(len(data) * spec["fraction"])])
            f.flush()
            os.fsync(f.fileno())
        die()
    return real_save(tensors, path)

def replace(src, dst):
    if armed[0]:
        into_place = Path(dst).name == "checkpoint"
        if kind == "before-rename" or (kind == "between-renames" and into_place):
            die()
        if kind == "after-rename" and into_place:
            real_replace(src, dst)
            die()
    return real_replace(src, dst)

T.Trainer.train_step, T.Trainer.save_checkpoint, T.save_file, os.replace = train_step, save_checkpoint, save_file, replace
T.Trainer(T.TrainConfig(**spec["config"]), load_npz(spec["npz"])).run()
print("finished without being killed", flush=True)
"""

STAGES = ("step", "mid-file", "before-rename", "between-renames", "after-rename")


def kill_plan(seed: int) -> list[dict]:
    """One kill per stage, in a seeded random order, at seeded random, increasing checkpoints."""
    rng = random.Random(seed)
    stages = list(STAGES)
    rng.shuffle(stages)
    checkpoints = sorted(rng.sample(range(2, STEPS // EVERY), len(stages)))  # a checkpoint exists before the first
    plan, resume = [], 0
    for stage, ck in zip(stages, checkpoints, strict=True):
        step = ck * EVERY
        if stage == "step":  # killed in the middle of an interval: resumes from the checkpoint before it
            at = rng.randrange(max(resume + 1, step - EVERY + 1), step)
            resume = at // EVERY * EVERY
        else:
            at = step
            resume = step if stage == "after-rename" else step - EVERY
        kill = {"kind": stage, "at": at, "expect": resume}
        if stage == "mid-file":
            kill |= {"file": rng.choice(sorted(CK_FILES - {"state.json"})), "fraction": round(rng.uniform(0.1, 0.9), 2)}
        plan.append(kill)
    return plan


def check_what_a_kill_left(out: Path, expect: int) -> None:
    """Only complete checkpoints are where resuming looks; anything half-written is in a temporary folder."""
    names = {p.name for p in out.iterdir()} if out.exists() else set()
    tmp = {n for n in names if n.startswith(f".{CHECKPOINT}.tmp-")}
    assert names - tmp <= {CHECKPOINT, f".{CHECKPOINT}.old"}, names
    ck = out / CHECKPOINT if (out / CHECKPOINT).is_dir() else out / f".{CHECKPOINT}.old"
    if expect == 0:
        assert not (ck / "state.json").exists()
        return
    assert {p.name for p in ck.iterdir()} == CK_FILES
    for name in CK_FILES - {"state.json"}:
        assert load_file(str(ck / name))  # complete: safetensors checks the header against the file size
    assert json.loads((ck / "state.json").read_text())["step"] == expect
    for other in (out / CHECKPOINT, out / f".{CHECKPOINT}.old"):  # a second copy, if any, is complete too
        if other.is_dir() and other != ck:
            assert {p.name for p in other.iterdir()} == CK_FILES


def test_seeded_kills_at_random_steps_and_inside_checkpoint_writes_lose_nothing(tmp_path):
    npz = toy_npz(tmp_path / "toy.npz")
    out = tmp_path / "killed"
    cfg = config(out)
    plan = kill_plan(SEED)
    print(f"\nkill plan (seed {SEED}): {plan}")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    spec = {"config": cfg.__dict__, "npz": str(npz)}
    for kill in plan:
        run = subprocess.run(
            [sys.executable, "-c", VICTIM, json.dumps({**spec, **kill})],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == -signal.SIGKILL, (kill, run.returncode, run.stdout[-2000:], run.stderr[-2000:])
        check_what_a_kill_left(out, kill["expect"])
    if plan[-1]["kind"] == "mid-file":
        assert list(out.glob(f".{CHECKPOINT}.tmp-*"))  # the half-written file is there, in a temporary folder

    data = load_npz(npz)
    resumed = Trainer(cfg, data)
    assert resumed.step == plan[-1]["expect"]
    assert not list(out.glob(f".{CHECKPOINT}.tmp-*"))  # resuming cleared the dead run's temporary folders
    resumed.run()
    reference = config(tmp_path / "reference")
    Trainer(reference, data).run()
    for folder in ("model", CHECKPOINT):  # the exported EMA model and the raw weights, bit for bit
        assert_same_weights(weights(Path(reference.out) / folder), weights(out / folder))
    assert {p.name for p in out.iterdir()} == {CHECKPOINT, "model"}


def test_the_kill_plan_is_seeded_and_covers_every_stage():
    assert kill_plan(SEED) == kill_plan(SEED)
    for seed in range(20):
        plan = kill_plan(seed)
        assert sorted(k["kind"] for k in plan) == sorted(STAGES)
        ats = [k["at"] for k in plan]
        assert ats == sorted(ats) and all(0 < a < STEPS for a in ats)
        for before, after in zip(plan, plan[1:], strict=False):
            assert after["at"] > before["expect"]  # each kill happens after the previous resume point


# ----------------------------------------------------------------------------- full disk, read-only folder (simulated)


def enospc_half_way(tensors, path, *args, **kwargs):
    """safetensors' save_file on a disk that fills up half-way through the file."""
    data = safetensors_bytes(tensors)
    Path(path).write_bytes(data[: len(data) // 2])
    raise SafetensorError(ENOSPC_MESSAGE)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    """safetensors reports ENOSPC as SafetensorError, not OSError: the message must still say what was kept."""
    tr = Trainer(config(tmp_path / "run", steps=2), load_npz(toy_npz(tmp_path / "toy.npz")))
    tr.run()
    out = Path(tr.cfg.out)
    before = snapshot(out / CHECKPOINT)
    tr.train_step()
    monkeypatch.setattr(ambient.training, "save_file", enospc_half_way)
    with pytest.raises(OSError, match="could not write a checkpoint at step 3 .*previous checkpoint is intact") as e:
        tr.save_checkpoint()
    assert e.value.errno == errno.ENOSPC and "No space left on device" in str(e.value)
    assert snapshot(out / CHECKPOINT) == before
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, "model"]
    monkeypatch.undo()
    assert Trainer(config(tmp_path / "run", steps=4), load_npz(tmp_path / "toy.npz")).step == 2


@pytest.mark.parametrize("how", ["full-disk-mid-file", "read-only-folder", "fail-at-rename"])
def test_save_pretrained_that_fails_keeps_the_previous_model_folder(tmp_path, monkeypatch, how):
    torch.manual_seed(0)
    old_model = build_unet(0, 8, 1, (8, 16), meta={"version": 1})
    folder = tmp_path / "model"
    old_model.save_pretrained(folder)
    before = snapshot(folder)
    torch.manual_seed(1)
    new_model = build_unet(0, 8, 1, (8, 16), meta={"version": 2})
    if how == "full-disk-mid-file":
        monkeypatch.setattr(ambient.denoiser, "save_file", enospc_half_way)
        code = errno.ENOSPC
    elif how == "read-only-folder":

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

        monkeypatch.setattr(ambient.io.tempfile, "mkdtemp", read_only)
        code = errno.EROFS
    else:
        real = os.replace

        def fail_moving_tmp(src, dst):
            if ".tmp-" in str(src):
                raise OSError(errno.EROFS, "Read-only file system", str(dst))
            real(src, dst)

        monkeypatch.setattr(ambient.denoiser.os, "replace", fail_moving_tmp)
        code = errno.EROFS
    with pytest.raises(
        OSError, match=f"could not save the model to {folder} .*any model folder already there is intact"
    ) as e:
        new_model.save_pretrained(folder)
    monkeypatch.undo()
    assert e.value.errno == code
    assert snapshot(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert EDMDenoiser.from_pretrained(folder).meta == {"version": 1}


# ----------------------------------------------------------------------------- the same on a real tiny tmpfs


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    path.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command; the simulated failures above cover this")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the simulated failures above cover this")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros until the disk is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_a_real_full_and_read_only_disk_keeps_checkpoint_and_model(tmp_path):
    npz = toy_npz(tmp_path / "toy.npz")
    with tiny_tmpfs(tmp_path / "disk") as disk:
        cfg = config(disk / "run", steps=2)
        tr = Trainer(cfg, load_npz(npz))
        tr.run()
        out = Path(cfg.out)
        kept = {name: snapshot(out / name) for name in (CHECKPOINT, "model")}
        tr.train_step()

        fill(disk / "filler")
        with pytest.raises(OSError, match="step 3 .*No space left on device.*previous checkpoint is intact") as e:
            tr.save_checkpoint()
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError, match="No space left on device.*any model folder already there is intact") as e:
            tr.export()
        assert e.value.errno == errno.ENOSPC
        assert {name: snapshot(out / name) for name in kept} == kept
        assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, "model"]
        (disk / "filler").unlink()

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(OSError, match="Read-only file system.*previous checkpoint is intact") as e:
            tr.save_checkpoint()
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError, match="Read-only file system.*any model folder already there is intact") as e:
            tr.export()
        assert e.value.errno == errno.EROFS
        assert {name: snapshot(out / name) for name in kept} == kept
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)

        assert Trainer(replace(cfg, steps=4), load_npz(npz)).step == 2  # the kept checkpoint resumes
        tr.save_checkpoint()  # with room again, saving works
        assert json.loads((out / CHECKPOINT / "state.json").read_text())["step"] == 3
