"""Training loop: baseline or Ambient loss, Adam + warm-up + EMA, bf16 autocast, atomic resumable checkpoints.

Runs unchanged on one process or under ``torchrun --nproc_per_node K`` (gloo on CPU, nccl on GPUs).
Every step's randomness is derived from (seed, rank, step) alone, so a killed run resumes exactly.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ambient.data import SYNONYMS, TEMPLATES, ImageDataset, balanced_subset, load_dataset, upsample_pixels
from ambient.denoiser import SIGMA_MAX, _atomic_write_dir, build_unet
from ambient.losses import ambient_loss, edm_loss, fixed_noise, sample_sigmas

CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    """Everything a run depends on; written into every checkpoint and exported model."""

    out: str = "runs/model"
    data: str = "fashion-mnist"
    n: int = 100
    subset_seed: int = 0
    image_size: int = 32
    upsample: int = 1  # train at image_size * upsample, each pixel repeated (scored back at image_size)
    patch: int = 1  # the network's space-to-depth stem: patch x patch pixels are one input position
    loss: str = "baseline"  # baseline | ambient
    sigma_n: float = 0.0
    regime: str = "all"  # all | high (only sigma >= sigma_n: a high-noise-only Ambient network)
    steps: int = 1000
    batch: int = 64
    lr: float = 2e-4
    warmup: int = 200
    lr_decay: str = "none"  # none | cosine (from the peak after warm-up down to 0 at `steps`)
    ema: float = 0.999
    seed: int = 0
    text_model: str | None = "all-MiniLM-L6-v2"
    caption_dropout: float = 0.1
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    time_scale_shift: str = "default"  # default | scale_shift (FiLM after the norm: the embedding survives GroupNorm)
    dropout: float = 0.0
    weight_decay: float = 0.0  # decoupled (AdamW); 0 = plain Adam
    p_mean: float = -1.2  # ln(sigma) ~ Normal(p_mean, p_std) for training noise levels
    p_std: float = 1.2
    high_weight: str = "edm"  # edm | ambient4: extra sigma^4 / (sigma^2 - sigma_n^2)^2 above sigma_n (clamped)
    compile: bool = False  # torch.compile the network (pays off on GPUs and long CPU runs)
    precision: str = "auto"  # auto | bf16 | fp32
    checkpoint_every: int = 250
    snapshot_every: int = 0
    log_every: int = 50
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        if self.loss not in ("baseline", "ambient"):
            raise ValueError(f"loss must be 'baseline' or 'ambient', not {self.loss!r}")
        if self.loss == "ambient" and not self.sigma_n > 0:
            raise ValueError("the ambient loss needs --sigma-n > 0")
        if self.regime not in ("all", "high"):
            raise ValueError(f"regime must be 'all' or 'high', not {self.regime!r}")
        if self.regime == "high" and (self.loss != "ambient" or not 0 < self.sigma_n < SIGMA_MAX):
            raise ValueError(
                "regime 'high' trains an Ambient network above sigma_n: use --loss ambient and 0 < sigma_n < 80"
            )
        if self.time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"time_scale_shift must be 'default' or 'scale_shift', not {self.time_scale_shift!r}")
        if self.high_weight not in ("edm", "ambient4"):
            raise ValueError(f"high_weight must be 'edm' or 'ambient4', not {self.high_weight!r}")
        if not isinstance(self.upsample, int) or self.upsample < 1:
            raise ValueError(f"upsample must be a positive integer, not {self.upsample!r}")
        if not isinstance(self.patch, int) or self.patch < 1 or (self.image_size * self.upsample) % self.patch:
            raise ValueError(
                f"patch must be a positive integer that divides the trained side {self.image_size * self.upsample}, "
                f"not {self.patch!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.weight_decay < 0 or self.p_std <= 0:
            raise ValueError("weight_decay must be >= 0 and p_std > 0")
        if self.lr_decay not in ("none", "cosine"):
            raise ValueError(f"lr_decay must be 'none' or 'cosine', not {self.lr_decay!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        for name in ("steps", "batch", "n", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


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


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of a step: linear warm-up to ``cfg.lr``, then constant or a cosine down to 0 at ``steps``."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.lr_decay == "cosine" and step >= cfg.warmup:
        t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    return lr


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


class Trainer:
    """Holds model, EMA, optimiser and data of one run; ``run()`` trains to ``config.steps``."""

    def __init__(self, config: TrainConfig, dataset: ImageDataset | None = None, text_encoder: Any = None):
        config.validate()
        self.cfg = config
        self.world, self.rank, local = _dist_info()
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        self.bf16 = use_bf16(config.precision, self.device)
        self.out = Path(config.out)

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
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if config.weight_decay:
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay
            )
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._resume()

    # ---------------------------------------------------------------- checkpoints
    def _resume(self) -> None:
        ck = self.out / CHECKPOINT
        old = self.out / f".{CHECKPOINT}.old"
        if self.rank == 0:  # half-written temporary folders of a killed run are never read: remove them
            for tmp in self.out.glob(f".{CHECKPOINT}.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        if not ck.is_dir() and old.is_dir():
            ck = old  # killed between the two renames: the previous checkpoint is intact
        if not (ck / "state.json").is_file():
            return
        state = json.loads((ck / "state.json").read_text())
        saved = state["config"]
        keys = ("loss", "sigma_n", "regime", "n", "subset_seed", "seed", "batch", "block_out_channels")
        later = (
            "time_scale_shift",
            "dropout",
            "weight_decay",
            "p_mean",
            "p_std",
            "high_weight",
            "upsample",
            "patch",
            "lr_decay",
        )
        defaults = TrainConfig()
        for k in (*keys, "layers_per_block", "text_model", "data", "image_size", *later):
            # settings added after a checkpoint was written default to what that checkpoint used
            old = saved.get(k, json.loads(json.dumps(getattr(defaults, k))))
            if old != json.loads(json.dumps(getattr(self.cfg, k))):
                raise ValueError(f"{ck} was written with {k}={old!r}, this run has {getattr(self.cfg, k)!r}")
        self.model.net.load_state_dict(load_file(str(ck / "model.safetensors")))
        self.ema.net.load_state_dict(load_file(str(ck / "ema.safetensors")))
        self.opt.load_state_dict(_unflatten_optimizer(load_file(str(ck / "optimizer.safetensors")), state["optimizer"]))
        self.step = int(state["step"])
        self.history = state.get("history", [])

    def save_checkpoint(self) -> None:
        """Write model, EMA, optimiser and step atomically (temporary folder, then rename)."""
        if self.rank != 0:
            return
        opt_t, opt_meta = _flatten_optimizer(self.opt)
        model_sd = {k: v.detach().contiguous().cpu() for k, v in self.model.net.state_dict().items()}
        ema_sd = {k: v.detach().contiguous().cpu() for k, v in self.ema.net.state_dict().items()}
        state = {"step": self.step, "config": asdict(self.cfg), "optimizer": opt_meta, "history": self.history}

        def write(tmp: Path) -> None:
            save_file(model_sd, str(tmp / "model.safetensors"))
            save_file(ema_sd, str(tmp / "ema.safetensors"))
            save_file(opt_t, str(tmp / "optimizer.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state))

        try:
            _atomic_write_dir(self.out / CHECKPOINT, write)
        except OSError as e:
            raise OSError(
                e.errno, f"could not write a checkpoint at step {self.step} ({e}); the previous checkpoint is intact"
            ) from e

    def export(self, path: Path | None = None) -> Path:
        """Save the EMA model with ``save_pretrained`` (default: ``out/model``)."""
        path = path or (self.out / "model")
        if self.rank == 0:
            self.ema.meta["steps"] = self.step
            self.ema.save_pretrained(path)
        return path

    # ---------------------------------------------------------------- training
    def _batch(self, step: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.rank) * 10_000_019 + step)
        b = max(1, self.cfg.batch // self.world)
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

    def train_step(self) -> float:
        """One optimiser step; returns the loss."""
        idx, sigma, noise, cond = self._batch(self.step)
        x0 = self.images[idx]
        net = self.ddp if self.ddp is not None else self.forward
        if self.cfg.dropout:  # dropout masks from (seed, rank, step) alone, so a resumed run is exact
            torch.manual_seed((self.cfg.seed * 1_000_003 + self.rank) * 10_000_019 + self.step + 0xD0)
        lr = learning_rate(self.cfg, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.cfg.loss == "baseline":
                loss = edm_loss(net, x0, sigma, noise, cond)
            else:
                loss = ambient_loss(
                    net, x0, sigma, self.cfg.sigma_n, self.eta[idx], noise, cond, high_weight=self.cfg.high_weight
                )
        loss = loss.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            d = self.cfg.ema
            for pe, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                pe.lerp_(p.detach(), 1 - d)
        self.step += 1
        return float(loss.detach())

    def run(self) -> Path:
        """Train up to ``config.steps`` (resuming where a checkpoint left off); export and return the model path."""
        cfg = self.cfg
        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.loss}", dynamic_ncols=True)
        t0, n0, run_loss = time.perf_counter(), self.step, []
        while self.step < cfg.steps:
            loss = self.train_step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {self.step}; lower --lr")
            run_loss.append(loss)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                ips = (self.step - n0) * cfg.batch / max(1e-9, time.perf_counter() - t0)
                self.history.append({"step": self.step, "loss": sum(run_loss) / len(run_loss), "images_per_s": ips})
                run_loss = []
                if bar is not None:
                    bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}", img_s=f"{ips:.0f}")
                elif self.rank == 0:
                    h = self.history[-1]
                    print(f"step {self.step}/{cfg.steps} loss {h['loss']:.4f} {ips:.0f} img/s", flush=True)
            if bar is not None:
                bar.update(1)
            if cfg.snapshot_every and self.step % cfg.snapshot_every == 0:
                self.export(self.out / "snapshots" / f"step_{self.step:06d}")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        path = self.export()
        if self.world > 1:
            torch.distributed.barrier()
        return path


def train(config: TrainConfig, dataset: ImageDataset | None = None, text_encoder: Any = None) -> Path:
    """Train (or resume) a run and return the exported model folder."""
    random.seed(config.seed)
    trainer = Trainer(config, dataset, text_encoder)
    try:
        return trainer.run()
    finally:
        if trainer.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
