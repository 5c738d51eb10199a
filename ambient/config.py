"""The run configs, without torch: ``LoopConfig`` (what the one training loop reads), ``TrainConfig`` (a pixel run)
and ``FinetuneConfig`` (a latent fine-tune), each field with its help text. ``ambient.training`` and
``ambient.latent`` use them; the command line builds its options from them, so ``ambient --help`` needs no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

P_MEAN = -1.2  # EDM's ln(sigma) ~ Normal(P_MEAN, P_STD) of the training noise levels
P_STD = 1.2
SIGMA_MAX = 80.0  # the largest noise level sampled and trained (EDM's)


def option(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its help text (``metadata["help"]``); list defaults become a factory. ``extra`` goes
    into the metadata too (``required=True``: a command-line option without a default; ``none=(...)``: words
    that mean None)."""
    meta = {"help": help, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def help_texts(cls: type) -> dict[str, str]:
    """Every field's help text of a config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def field_default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def check_loss_settings(cfg: Any) -> None:
    """The checks every config shares: loss and sigma_n, schedule, EMA, precision, counts."""
    if cfg.loss not in ("baseline", "ambient"):
        raise ValueError(f"loss must be 'baseline' or 'ambient', not {cfg.loss!r}")
    if cfg.loss == "ambient" and not cfg.sigma_n > 0:
        raise ValueError(f"the ambient loss needs --sigma-n > 0, got {cfg.sigma_n}")
    if cfg.loss == "baseline" and cfg.sigma_n:
        raise ValueError(
            f"--sigma-n {cfg.sigma_n} is the noise level of the Ambient loss's noisy copies; the baseline loss does "
            "not use it: leave --sigma-n at 0, or use --loss ambient"
        )
    if cfg.high_weight not in ("edm", "ambient4"):
        raise ValueError(f"high_weight must be 'edm' or 'ambient4', not {cfg.high_weight!r}")
    if cfg.lr_decay not in ("none", "cosine"):
        raise ValueError(f"lr_decay must be 'none' or 'cosine', not {cfg.lr_decay!r}")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {cfg.precision!r}")
    if not 0 <= cfg.caption_dropout <= 1:
        raise ValueError(f"caption_dropout must be in [0, 1], not {cfg.caption_dropout}")
    if not 0 <= cfg.ema < 1:
        raise ValueError(f"ema must be in [0, 1), not {cfg.ema}")
    if not (cfg.lr > 0 and cfg.p_std > 0):
        raise ValueError("lr and p_std must be positive")
    if cfg.weight_decay < 0 or cfg.max_grad_norm < 0 or cfg.warmup < 0 or cfg.snapshot_every < 0:
        raise ValueError("weight_decay, max_grad_norm, warmup and snapshot_every must be >= 0")
    for name in ("steps", "batch", "checkpoint_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1")


@dataclass
class LoopConfig:
    """What the one training loop reads, with the pixel task's defaults: the loss and its cutoff, the optimiser and
    its schedule, the EMA, the noise levels, precision, checkpoints and logging. ``TrainConfig`` (pixels) and
    ``ambient.latent.FinetuneConfig`` (latent pipelines) extend it with their data and models (and their defaults)."""

    out: str = option(
        "runs/model", "run folder: checkpoint/ (to resume), model/ (the exported EMA model) and snapshots/ go here"
    )
    loss: str = option(
        "baseline", "'baseline' (EDM) or 'ambient' (above sigma_n only fixed noisy copies of the data are seen)"
    )
    sigma_n: float = option(
        0.0, "noise level of the fixed noisy copies; the ambient loss needs it > 0, the baseline loss takes none"
    )
    steps: int = option(1000, "optimiser steps in all; a resumed run continues up to this")
    batch: int = option(64, "images per step (split across processes under torchrun)")
    lr: float = option(2e-4, "peak learning rate")
    warmup: int = option(200, "steps of linear learning-rate warm-up")
    lr_decay: str = option("none", "learning rate after warm-up: 'none' (constant) or 'cosine' (down to 0 at --steps)")
    ema: float = option(
        0.999, "decay of the exponential moving average of the weights (the exported model is the average)"
    )
    seed: int = option(0, "seed of the initial weights, batches, noise levels and each training image's fixed noise")
    caption_dropout: float = option(
        0.1, "probability that a training image's caption is dropped (for classifier-free guidance)"
    )
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW); 0 is plain Adam")
    max_grad_norm: float = option(0.0, "clip the gradient norm to this (0: no clipping)")
    p_mean: float = option(P_MEAN, "mean of ln(sigma) of the training noise levels: ln(sigma) ~ Normal(p_mean, p_std)")
    p_std: float = option(P_STD, "standard deviation of ln(sigma) of the training noise levels")
    high_weight: str = option(
        "edm",
        "loss weight above sigma_n: 'edm' (EDM's) or 'ambient4' (EDM's times sigma^4 / (sigma^2 - sigma_n^2)^2, at most 100)",
    )
    precision: str = option("auto", "'auto' (bf16 where the device has it natively), 'bf16' or 'fp32'")
    checkpoint_every: int = option(250, "write a resumable checkpoint every this many steps (and at the end)")
    snapshot_every: int = option(0, "also export the model to snapshots/step_NNNNNN every this many steps (0: never)")
    log_every: int = option(50, "log the mean loss and images/s every this many steps")
    progress: bool = option(True, "show a progress bar (--no-progress: a log line every --log-every steps)")


@dataclass
class TrainConfig(LoopConfig):
    """Everything a pixel run depends on; written into every checkpoint and exported model."""

    data: str = option(
        "fashion-mnist", "training data: 'fashion-mnist', 'fashion-mnist:FOLDER', a .npz file or an image folder"
    )
    n: int = option(100, "number of training images (a class-balanced subset of the data)")
    subset_seed: int = option(0, "seed of the choice of that subset")
    image_size: int = option(32, "image side in pixels (Fashion-MNIST's 28 are padded to it)")
    upsample: int = option(
        1,
        "train at image_size times this, each pixel repeated (a finer noise grid, the same content); samples are averaged back to image_size for scoring",
    )
    patch: int = option(
        1,
        "side of the network's space-to-depth stem: each patch x patch block of pixels is one input position, so a step at 64 x 64 with patch 2 costs about what one at 32 x 32 costs",
    )
    regime: str = option(
        "all",
        "'all' (one network for every sigma) or 'high' (only sigma >= sigma_n: a high-noise-only Ambient network)",
    )
    text_model: str | None = option(
        "all-MiniLM-L6-v2",
        "sentence encoder of the class captions, or 'none' for an unconditional model",
        none=("none", "", "None"),
    )
    block_out_channels: list[int] = option([32, 64, 64], "channels of the UNet's resolution levels, finest first")
    layers_per_block: int = option(1, "ResNet layers per UNet block")
    time_scale_shift: str = option(
        "default", "'default' (the noise/text embedding is added) or 'scale_shift' (FiLM after GroupNorm)"
    )
    dropout: float = option(0.0, "dropout in the UNet's ResNet blocks, in [0, 1)")
    compile: bool = option(False, "torch.compile the network (pays off on GPUs and long CPU runs)")

    # settings a resumed run must share with its checkpoint (the others say how long, how often, how shown)
    RESUME_KEYS: ClassVar[tuple[str, ...]] = (
        "data", "n", "subset_seed", "image_size", "upsample", "patch", "loss", "sigma_n", "regime", "batch", "lr",
        "warmup", "lr_decay", "ema", "seed", "text_model", "caption_dropout", "block_out_channels", "layers_per_block",
        "time_scale_shift", "dropout", "weight_decay", "max_grad_norm", "p_mean", "p_std", "high_weight",
    )  # fmt: skip

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        check_loss_settings(self)
        if self.regime not in ("all", "high"):
            raise ValueError(f"regime must be 'all' or 'high', not {self.regime!r}")
        if self.regime == "high" and (self.loss != "ambient" or not 0 < self.sigma_n < SIGMA_MAX):
            raise ValueError(
                "regime 'high' trains an Ambient network above sigma_n: use --loss ambient and 0 < sigma_n < 80"
            )
        if self.time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"time_scale_shift must be 'default' or 'scale_shift', not {self.time_scale_shift!r}")
        if not isinstance(self.upsample, int) or self.upsample < 1:
            raise ValueError(f"upsample must be a positive integer, not {self.upsample!r}")
        if not isinstance(self.patch, int) or self.patch < 1 or (self.image_size * self.upsample) % self.patch:
            raise ValueError(
                f"patch must be a positive integer that divides the trained side {self.image_size * self.upsample}, "
                f"not {self.patch!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.n < 1:
            raise ValueError("n must be at least 1")


@dataclass
class FinetuneConfig(LoopConfig):
    """Everything a fine-tuning run depends on; written into every checkpoint and the exported JSON."""

    pretrained: str = option(
        "",
        "diffusers text-to-image pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) or hub id (owner/name or hub:owner/name)",
        required=True,
    )
    data: str = option(
        "",
        "folder of images with captions: a .txt of the same name beside each image, or a metadata.jsonl with file_name and text",
        required=True,
    )
    out: str = option(
        "runs/finetune",
        "run folder: latent_cache.safetensors, checkpoint/ (to resume) and model/ (the exported pipeline)",
    )
    loss: str = option(
        "baseline", "'baseline' (EDM loss on latents) or 'ambient' (above sigma_n only each latent's fixed noisy copy)"
    )
    sigma_n: float = option(
        0.0,
        "noise level (EDM sigma, latent space) of the fixed noisy copies; the ambient loss needs it > 0, the baseline loss takes none",
    )
    steps: int = option(1000, "optimiser steps in all; a resumed run continues up to this")
    batch: int = option(4, "images per step (split across processes under torchrun)")
    lr: float = option(1e-5, "peak learning rate (AdamW)")
    warmup: int = option(100, "steps of linear learning-rate warm-up")
    lr_decay: str = option("none", "learning rate after warm-up: 'none' (constant) or 'cosine' (down to 0 at --steps)")
    weight_decay: float = option(1e-2, "AdamW's decoupled weight decay")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)")
    ema: float = option(
        0.0, "decay of an exponential moving average of the UNet, exported instead of the raw weights (0: none)"
    )
    seed: int = option(0, "seed of the batches, noise levels, caption dropout and each training image's fixed noise")
    resolution: int = option(
        0,
        "image side in pixels (shorter side resized, centre crop); 0: the UNet's sample size times the VAE's downsampling",
    )
    caption_dropout: float = option(
        0.1, "probability that a caption is replaced by the empty prompt (for classifier-free guidance)"
    )
    sigma_data: float = option(
        1.0, "sigma_data of EDM's loss weight in latent space (the VAE's scaling factor gives latents unit std)"
    )
    p_mean: float = option(
        P_MEAN, "mean of ln(sigma) of the training noise levels (truncated to the scheduler's sigma range)"
    )
    p_std: float = option(P_STD, "standard deviation of ln(sigma) of the training noise levels")
    high_weight: str = option(
        "edm",
        "loss weight above sigma_n: 'edm' (EDM's) or 'ambient4' (EDM's times sigma^4 / (sigma^2 - sigma_n^2)^2, at most 100)",
    )
    precision: str = option("auto", "'auto' (bf16 autocast where the device has it natively), 'bf16' or 'fp32'")
    gradient_checkpointing: bool = option(
        False, "recompute UNet activations in the backward pass (less memory, slower)"
    )
    cache_batch: int = option(8, "images per VAE / text-encoder batch while the cache is computed")
    checkpoint_every: int = option(250, "write a resumable checkpoint every this many steps (and at the end)")
    snapshot_every: int = option(
        0, "also export the pipeline to snapshots/step_NNNNNN every this many steps (0: never)"
    )
    log_every: int = option(10, "log the mean loss and images/s every this many steps")
    progress: bool = option(True, "show a progress bar (--no-progress: a log line every --log-every steps)")

    # settings a resumed run must share with its checkpoint (the others say how long, how often, how shown)
    RESUME_KEYS: ClassVar[tuple[str, ...]] = (
        "pretrained", "data", "loss", "sigma_n", "batch", "lr", "warmup", "lr_decay", "weight_decay", "max_grad_norm",
        "ema", "seed", "resolution", "caption_dropout", "sigma_data", "p_mean", "p_std", "high_weight",
    )  # fmt: skip

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings (those that need the pipeline are checked on loading)."""
        if not self.pretrained:
            raise ValueError("--pretrained (a diffusers text-to-image pipeline folder or hub id) is required")
        if not self.data:
            raise ValueError("--data (a folder of images with captions) is required")
        check_loss_settings(self)
        if not self.sigma_data > 0:
            raise ValueError("sigma_data must be positive")
        if self.resolution < 0:
            raise ValueError("resolution must be >= 0")
        if self.cache_batch < 1:
            raise ValueError("cache_batch must be at least 1")
