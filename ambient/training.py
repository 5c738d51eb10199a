"""The one training loop: baseline or Ambient loss, Adam(W) + warm-up + learning-rate decay + EMA, bf16 autocast,
atomic resumable checkpoints; and the pixel task it trains (``python -m ambient train``).

The loop (``TrainingLoop``) owns what every run shares: distributed setup (runs unchanged on one process or under
``torchrun --nproc_per_node K``, gloo on CPU, nccl on GPUs), the per-step generators (every draw of a step is a
function of (seed, rank, step) alone, so a killed run resumes exactly), the optimiser, warm-up and the learning-rate
schedule, the EMA, autocast, the loss call, one resume rule, atomic checkpoints, progress and logging. A task
supplies the model, the batches (its loss of a step's draws) and the export: ``PixelTask`` here (the project's
small EDM UNet on pixels), ``ambient.latent.LatentTask`` (the UNet of a diffusers text-to-image pipeline on
latents). ``Trainer`` and ``ambient.latent.LatentFinetuner`` are the loop with each task.

The resume rule: a run whose ``out`` holds a checkpoint continues from it, and refuses, naming it, any changed
setting that matters (those in the config class's ``RESUME_KEYS``); a setting added after a checkpoint was written
counts as that setting's default, which is what the older code used. Settings that only say how long, how often or
how shown (steps, checkpoint_every, snapshot_every, log_every, progress, precision, compile) may change; under a
cosine decay a longer ``steps`` stretches the rest of the schedule from where the run is.

Config fields carry their help text (``field(metadata={"help": ...})``): the command line is built from them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ambient.config import (  # noqa: F401 (re-exported: their home was here)
    LoopConfig,
    TrainConfig,
    check_loss_settings,
    field_default,
    help_texts,
    option,
)
from ambient.data import SYNONYMS, TEMPLATES, ImageDataset, balanced_subset, load_dataset, upsample_pixels
from ambient.denoiser import SIGMA_MAX, build_unet
from ambient.io import atomic_write_dir
from ambient.losses import ambient_loss, edm_loss, fixed_noise, sample_sigmas

CHECKPOINT = "checkpoint"
STATE = "state.json"
EMA_WEIGHTS = "ema.safetensors"
OPTIMIZER_WEIGHTS = "optimizer.safetensors"


def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve the precision setting for a device."""
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()


def learning_rate(cfg: Any, step: int) -> float:
    """The learning rate of a step: linear warm-up to ``cfg.lr``, then constant or a cosine down to 0 at ``steps``."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.lr_decay == "cosine" and step >= cfg.warmup:
        t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    return lr


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of every draw of one step on one process."""
    return (seed * 1_000_003 + rank) * 10_000_019 + step


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator seeded for one step on one process (batches, noise levels, noise, caption dropout)."""
    return torch.Generator().manual_seed(step_seed(seed, rank, step))


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def caption_table(class_names: list[str]) -> list[list[str]]:
    """Every caption (template x synonym) of every class, in a fixed order."""
    return [[t.format(s) for t in TEMPLATES for s in SYNONYMS.get(c, [c])] for c in class_names]


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(p): dict(v) for p, v in meta["state"].items()}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v))  # tuples as lists, as a checkpoint's JSON has them


def resume_conflict(saved: dict[str, Any], cfg: Any) -> tuple[str, Any, Any] | None:
    """The first setting that matters on which a run differs from the config its checkpoint was written with, as
    (name, checkpoint's value, this run's value); None when it may resume. A setting missing from the checkpoint
    (added later) counts as its default; sigma_n counts only for the ambient loss."""
    defaults = {f.name: _plain(field_default(f)) for f in dataclasses.fields(cfg)}
    for k in type(cfg).RESUME_KEYS:
        old, new = saved.get(k, defaults[k]), _plain(getattr(cfg, k))
        if k == "sigma_n" and saved.get("loss", defaults["loss"]) == "baseline" and cfg.loss == "baseline":
            continue
        if old != new:
            return k, old, getattr(cfg, k)
    return None


class Task:
    """What a training task supplies to the loop. Set in ``__init__`` (which gets the loop, for its device, rank
    and world): ``model`` (the denoiser ``D(x, sigma, cond)`` that trains) and ``desc`` (the progress bar's name).
    Class attributes: ``WEIGHTS`` (the checkpoint's file of the raw weights), ``ALWAYS_EMA`` (keep an EMA even
    at ``ema`` 0), ``DECOUPLED`` (AdamW even at weight decay 0)."""

    WEIGHTS: ClassVar[str] = "model.safetensors"
    ALWAYS_EMA: ClassVar[bool] = False
    DECOUPLED: ClassVar[bool] = False
    model: nn.Module
    desc: str = "train"

    def core(self, model: nn.Module) -> nn.Module:
        """The part of ``model`` (or of its EMA copy) whose weights a checkpoint holds."""
        raise NotImplementedError

    def loss(self, net: Callable[..., torch.Tensor], step: int, g: torch.Generator, b: int) -> torch.Tensor:
        """The per-element loss of ``b`` examples drawn from ``g`` (this process's generator of ``step``)."""
        raise NotImplementedError

    def export(self, model: nn.Module, step: int, path: Path) -> Path:
        """Write ``model`` (the EMA where there is one) after ``step`` steps to ``path`` (called on rank 0)."""
        raise NotImplementedError


class TrainingLoop:
    """One run of a task: optimiser, EMA, checkpoints; ``run()`` trains to ``config.steps`` and exports.

    Attributes the task does not have are looked up on the task (``trainer.images``, ``finetuner.latents``)."""

    def __init__(self, config: Any, make_task: Callable[[TrainingLoop], Task]):
        config.validate()
        self.cfg = config
        self.world, self.rank, local = _dist_info()
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        self.bf16 = use_bf16(config.precision, self.device)
        self.out = Path(config.out)
        self.task = make_task(self)
        self.model = self.task.model
        keep_ema = self.task.ALWAYS_EMA or config.ema > 0
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if keep_ema else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        if config.weight_decay or self.task.DECOUPLED:
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay
            )
        else:
            self.opt = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
        self.forward = torch.compile(self.model) if getattr(config, "compile", False) else self.model
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.resumed_from: int | None = None
        self._resume()

    def __getattr__(self, name: str) -> Any:
        task = self.__dict__.get("task")
        if task is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(task, name)

    @property
    def per_rank_batch(self) -> int:
        return max(1, self.cfg.batch // self.world)

    def _log(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    # ---------------------------------------------------------------- checkpoints
    def _resume(self) -> None:
        ck = self.out / CHECKPOINT
        old = self.out / f".{CHECKPOINT}.old"
        if self.rank == 0:  # half-written temporary folders of a killed run are never read: remove them
            for tmp in self.out.glob(f".{CHECKPOINT}.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        if not ck.is_dir() and old.is_dir():
            ck = old  # killed between the two renames: the previous checkpoint is intact
        if not (ck / STATE).is_file():
            return
        state = json.loads((ck / STATE).read_text())
        conflict = resume_conflict(state["config"], self.cfg)
        if conflict is not None:
            k, was, now = conflict
            raise ValueError(
                f"{ck} was written with {k}={was!r}, this run has {now!r}: resume with the same setting, or use "
                "another --out"
            )
        self.task.core(self.model).load_state_dict(load_file(str(ck / self.task.WEIGHTS)))
        if self.ema is not None:
            self.task.core(self.ema).load_state_dict(load_file(str(ck / EMA_WEIGHTS)))
        self.opt.load_state_dict(_unflatten_optimizer(load_file(str(ck / OPTIMIZER_WEIGHTS)), state["optimizer"]))
        self.step = self.resumed_from = int(state["step"])
        self.history = state.get("history", [])
        self._log(f"resuming from step {self.step} of {ck}")

    def save_checkpoint(self) -> None:
        """Write weights, EMA, optimiser and step atomically (temporary folder, then rename)."""
        if self.rank != 0:
            return
        opt_t, opt_meta = _flatten_optimizer(self.opt)

        def tensors(m: nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().contiguous().cpu() for k, v in self.task.core(m).state_dict().items()}

        weights = tensors(self.model)
        ema = tensors(self.ema) if self.ema is not None else None
        state = {"step": self.step, "config": asdict(self.cfg), "optimizer": opt_meta, "history": self.history}

        def write(tmp: Path) -> None:
            save_file(weights, str(tmp / self.task.WEIGHTS))
            if ema is not None:
                save_file(ema, str(tmp / EMA_WEIGHTS))
            save_file(opt_t, str(tmp / OPTIMIZER_WEIGHTS))
            (tmp / STATE).write_text(json.dumps(state))

        try:
            atomic_write_dir(self.out / CHECKPOINT, write)
        except OSError as e:
            raise OSError(
                e.errno, f"could not write a checkpoint at step {self.step} ({e}); the previous checkpoint is intact"
            ) from e

    def export(self, path: Path | None = None) -> Path:
        """Export the EMA model (the raw one where there is no EMA) with the task's writer (default ``out/model``)."""
        path = Path(path or (self.out / "model"))
        if self.rank == 0:
            self.task.export(self.ema if self.ema is not None else self.model, self.step, path)
        return path

    # ---------------------------------------------------------------- training
    def loss_at(self, step: int) -> torch.Tensor:
        """The mean loss of a step's batch (with gradients), from that step's draws alone."""
        net = self.ddp if self.ddp is not None else self.forward
        g = step_generator(self.cfg.seed, self.rank, step)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.task.loss(net, step, g, self.per_rank_batch)
        return loss.mean()

    def train_step(self) -> float:
        """One optimiser step; returns the loss."""
        c = self.cfg
        torch.manual_seed(step_seed(c.seed, self.rank, self.step) + 0xD0)  # dropout masks, if any
        lr = learning_rate(c, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = self.loss_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
        self.opt.step()
        if self.ema is not None:
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                    pe.lerp_(p.detach(), 1 - c.ema)
        self.step += 1
        return float(loss.detach())

    def run(self) -> Path:
        """Train up to ``config.steps`` (resuming where a checkpoint left off); export and return the export's path."""
        c = self.cfg
        bar = None
        if c.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc=f"{self.task.desc} {c.loss}", dynamic_ncols=True)
        t0, n0, run_loss = time.perf_counter(), self.step, []
        while self.step < c.steps:
            loss = self.train_step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {self.step}; lower --lr")
            run_loss.append(loss)
            if self.step % c.log_every == 0 or self.step == c.steps:
                ips = (self.step - n0) * c.batch / max(1e-9, time.perf_counter() - t0)
                self.history.append({"step": self.step, "loss": sum(run_loss) / len(run_loss), "images_per_s": ips})
                run_loss = []
                if bar is not None:
                    bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}", img_s=f"{ips:.1f}")
                else:
                    self._log(f"step {self.step}/{c.steps} loss {self.history[-1]['loss']:.4f} {ips:.1f} img/s")
            if bar is not None:
                bar.update(1)
            if c.snapshot_every and self.step % c.snapshot_every == 0:
                self.export(self.out / "snapshots" / f"step_{self.step:06d}")
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        path = self.export()
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def close(self) -> None:
        """Leave the process group (under torchrun)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------- the pixel task


class PixelTask(Task):
    """The project's small EDM UNet on a (sub)set of images, conditioned on class captions."""

    WEIGHTS = "model.safetensors"
    ALWAYS_EMA = True  # the exported model is always the average (at ema 0, a copy)
    DECOUPLED = False  # Adam, AdamW only with weight decay
    desc = "train"

    def __init__(self, loop: TrainingLoop, dataset: ImageDataset | None = None, text_encoder: Any = None):
        config = self.cfg = loop.cfg
        self.rank, self.world, self.device = loop.rank, loop.world, loop.device
        full = dataset if dataset is not None else load_dataset(config.data, "train", config.image_size)
        self.data = balanced_subset(full, config.n, config.subset_seed) if config.n < len(full) else full
        # upsample > 1: the same content on a finer grid, so a fixed noise field carries upsample^2 times the numbers
        self.images = upsample_pixels(self.data.images, config.upsample).to(self.device)
        shape = tuple(self.images.shape[1:])
        # One fixed noise field per training image, a function of (seed, source id) alone.
        self.eta = fixed_noise(self.data.ids, shape, config.seed).to(self.device)

        self.captions: torch.Tensor | None = None
        cond_dim = 0
        if config.text_model and self.data.labels is not None and self.data.class_names:
            if text_encoder is None:
                from ambient.text import get_text_encoder

                text_encoder = get_text_encoder(config.text_model)
            table = caption_table(self.data.class_names)
            emb = [text_encoder.encode(row) for row in table]
            self.captions = torch.stack(emb).to(self.device)  # (classes, captions, dim)
            cond_dim = self.captions.shape[-1]
            self.labels = self.data.labels.to(self.device)

        meta = {
            "loss": config.loss,
            "sigma_n": config.sigma_n if config.loss == "ambient" else None,
            "regime": config.regime,
            "train_ids": self.data.ids,
            "dataset": self.data.source,
            "class_names": self.data.class_names,
            "text_model": config.text_model if cond_dim else None,
            "seed": config.seed,
            "steps": 0,
            "train_config": asdict(config),
        }
        torch.manual_seed(config.seed)  # the same initial weights on every rank and every rerun
        self.model = build_unet(
            cond_dim,
            shape[1],
            shape[0],
            tuple(config.block_out_channels),
            config.layers_per_block,
            meta,
            config.time_scale_shift,
            config.dropout,
            config.patch,
        ).to(self.device)

    def core(self, model: nn.Module) -> nn.Module:
        return model.net

    def draws(self, g: torch.Generator, b: int) -> tuple[torch.Tensor, ...]:
        """Image indices, noise levels, noise and conditions of ``b`` examples from ``g``."""
        idx = torch.randint(len(self.images), (b,), generator=g)
        lo = self.cfg.sigma_n if self.cfg.regime == "high" else None
        hi = SIGMA_MAX if self.cfg.regime == "high" else None
        sigma = sample_sigmas(b, g, self.cfg.p_mean, self.cfg.p_std, sigma_lo=lo, sigma_hi=hi)
        noise = torch.randn(b, *self.images.shape[1:], generator=g)
        cond = None
        if self.captions is not None:
            k = torch.randint(self.captions.shape[1], (b,), generator=g)
            keep = (torch.rand(b, generator=g) >= self.cfg.caption_dropout).float()[:, None]
            cond = self.captions[self.labels[idx.to(self.device)], k.to(self.device)] * keep.to(self.device)
        dev = self.device
        return idx.to(dev), sigma.to(dev), noise.to(dev), cond

    def _batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """This process's draws of a step."""
        return self.draws(step_generator(self.cfg.seed, self.rank, step), max(1, self.cfg.batch // self.world))

    def loss(self, net: Callable[..., torch.Tensor], step: int, g: torch.Generator, b: int) -> torch.Tensor:
        idx, sigma, noise, cond = self.draws(g, b)
        x0 = self.images[idx]
        if self.cfg.loss == "baseline":
            return edm_loss(net, x0, sigma, noise, cond)
        c = self.cfg
        return ambient_loss(net, x0, sigma, c.sigma_n, self.eta[idx], noise, cond, high_weight=c.high_weight)

    def export(self, model: nn.Module, step: int, path: Path) -> Path:
        model.meta["steps"] = step
        model.save_pretrained(path)
        return path


class Trainer(TrainingLoop):
    """The loop with the pixel task: ``Trainer(config, dataset, text_encoder).run()``."""

    def __init__(self, config: TrainConfig, dataset: ImageDataset | None = None, text_encoder: Any = None):
        super().__init__(config, lambda loop: PixelTask(loop, dataset, text_encoder))


def train(config: TrainConfig, dataset: ImageDataset | None = None, text_encoder: Any = None) -> Path:
    """Train (or resume) a run and return the exported model folder."""
    random.seed(config.seed)
    trainer = Trainer(config, dataset, text_encoder)
    try:
        return trainer.run()
    finally:
        trainer.close()
