"""Baseline or Ambient fine-tuning of a latent text-to-image diffusers pipeline (Stable Diffusion class).

``python -m ambient finetune --pretrained PIPELINE --data IMAGES --out RUN --loss baseline|ambient --sigma-n S``
fine-tunes the ``UNet2DConditionModel`` of a pipeline with an ``AutoencoderKL``, a CLIP text model and tokenizer
and a DDPM-style scheduler (one with ``alphas_cumprod``) on a folder of captioned images. Only the UNet trains.

The VP / epsilon parametrisation seen in EDM's sigma (the mapping of ``ambient.denoiser.DDPMAdapter``)
    The scheduler's forward process is x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps with a_t = alphas_cumprod[t].
    Divided by sqrt(a_t) it is EDM's variance-exploding sample x = z0 + sigma eps with
    sigma_t = sqrt((1 - a_t) / a_t), so a_t = 1 / (1 + sigma^2). The denoiser D(x, sigma) feeds the UNet
    x_t = x / sqrt(1 + sigma^2) at the fractional timestep t(sigma) found by interpolating log sigma over the
    scheduler's table (``DDPMAdapter.sigma_to_t``), and turns its output into the implied clean latent:
    D = x - sigma eps_hat (epsilon prediction), D = sqrt(a) x_t - sqrt(1 - a) v_hat (v prediction).
    ``LatentDenoiser`` below is ``DDPMAdapter`` with the one change a text-to-image UNet needs: the prompt
    condition is the text encoder's sequence of token states (B, L, D), passed as ``encoder_hidden_states``.

The loss and its weight
    Both losses are the project's own (``ambient.losses``) applied to latents z0 = scaling_factor * E(image)
    (minus ``shift_factor`` first where the VAE has one), with EDM's weight on the implied clean estimate:
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 times ||D(x, sigma) - z0||^2 (baseline and
    Ambient below sigma_n), and times ||x_tn_hat - x_tn||^2 above sigma_n (``high_weight="edm"``, the reference
    code's choice; "ambient4" is offered as in ``train``). sigma_data defaults to 1, not the 0.5 of pixels in
    [-1, 1]: the VAE's scaling factor is chosen to give latents unit standard deviation (so sigma_n is in latent
    units too: twice a pixel-space sigma_n for the same signal-to-noise ratio). Since D - z0 = -sigma (eps_hat - eps), the baseline loss is
    (1 + sigma^2 / sigma_data^2) ||eps_hat - eps||^2: with sigma_data = 1 the usual epsilon loss of diffusers'
    fine-tuning scripts weighted by 1 / a_t. Training noise levels follow EDM, not the uniform timesteps of
    DDPM: ln sigma ~ Normal(p_mean, p_std) truncated to the scheduler's range [sigma_0, sigma_{T-1}] (about
    [0.029, 14.6] for Stable Diffusion 1.x; drawn by inverse CDF, so no mass piles up at the ends).
    Ambient: training image i (its index in the sorted training file list) gets ONE fixed noise field
    eta_i = ``fixed_noise([i], latent_shape, seed)`` on its latent; above sigma_n the network sees and is scored
    against x_tn = z0 + sigma_n eta_i only, below it the clean latent. sigma_n must lie inside the scheduler's range.

Run folder
    latent_cache.safetensors  latents (N, C, h, w), the text encoder's states of each distinct caption (the
                              empty one first: the unconditional input), each image's caption index, and a
                              fingerprint of data and encoders; computed once (latent_dist's mean, no sampling),
                              reused on every resume, refused if the data or the encoders changed.
    checkpoint/               UNet, EMA, AdamW state, step: written atomically, resumed exactly after a kill
                              (every draw is a function of (seed, rank, step)); bit for bit on the CPU, on a GPU
                              as far as its kernels are deterministic.
    model/                    the exported diffusers pipeline (``pipe.save_pretrained``, safetensors) with the
                              fine-tuned UNet (its EMA where ``ema`` > 0) and ``ambient_latent.json``: loss,
                              sigma_n, sigma_data, steps, the training files and captions, the sigma range.

Under ``torchrun --nproc_per_node K`` each process draws batch / K images from (seed, rank, step), rank 0 writes
the cache, checkpoints and the export, and gradients are averaged by DistributedDataParallel, as in ``train``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ambient.denoiser import DDPMAdapter, _as_sigma, _atomic_write_dir
from ambient.losses import P_MEAN, P_STD, ambient_loss, edm_loss, fixed_noise, sample_sigmas
from ambient.training import _dist_info, _flatten_optimizer, _unflatten_optimizer, use_bf16

CACHE_NAME = "latent_cache.safetensors"
CHECKPOINT = "checkpoint"
MODEL = "model"
AMBIENT_JSON = "ambient_latent.json"  # not ambient_config.json: that name marks a pixel EDM model folder
FORMAT_VERSION = 1
CACHE_VERSION = 1
METADATA_NAME = "metadata.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# the pipeline components fine-tuning needs, and the classes it accepts for each
COMPONENTS = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any scheduler whose config gives alphas_cumprod (DDPM, DDIM, PNDM, ...)
}
HUB_PATTERNS = [  # what a hub download fetches: each component's config and safetensors weights, nothing else
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/diffusion_pytorch_model.safetensors",
    "*/diffusion_pytorch_model-*-of-*.safetensors",
    "*/model.safetensors",
    "*/model-*-of-*.safetensors",
]

# One line per FinetuneConfig field: the help of ``python -m ambient finetune``'s options. No bare percent signs.
FINETUNE_HELP: dict[str, str] = {
    "pretrained": "diffusers text-to-image pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) or "
    "hub id",
    "data": "folder of images with captions: a .txt of the same name beside each image, or a metadata.jsonl with "
    "file_name and text",
    "out": "run folder: latent_cache.safetensors, checkpoint/ (to resume) and model/ (the exported pipeline)",
    "loss": "'baseline' (EDM loss on latents) or 'ambient' (above sigma_n only each latent's fixed noisy copy)",
    "sigma_n": "noise level (EDM sigma, latent space) of the fixed noisy copies; the ambient loss needs it > 0",
    "steps": "optimiser steps in all; a resumed run continues up to this",
    "batch": "images per step (split across processes under torchrun)",
    "lr": "peak learning rate (AdamW)",
    "warmup": "steps of linear learning-rate warm-up",
    "weight_decay": "AdamW's decoupled weight decay",
    "max_grad_norm": "clip the gradient norm to this (0: no clipping)",
    "ema": "decay of an exponential moving average of the UNet, exported instead of the raw weights (0: none)",
    "seed": "seed of the batches, noise levels, caption dropout and each training image's fixed noise",
    "resolution": "image side in pixels (shorter side resized, centre crop); 0: the UNet's sample size times the "
    "VAE's downsampling",
    "caption_dropout": "probability that a caption is replaced by the empty prompt (for classifier-free guidance)",
    "sigma_data": "sigma_data of EDM's loss weight in latent space (the VAE's scaling factor gives latents unit std)",
    "p_mean": "mean of ln(sigma) of the training noise levels (truncated to the scheduler's sigma range)",
    "p_std": "standard deviation of ln(sigma) of the training noise levels",
    "high_weight": "loss weight above sigma_n: 'edm' (EDM's) or 'ambient4' (EDM's times sigma^4 / (sigma^2 - "
    "sigma_n^2)^2, at most 100)",
    "precision": "'auto' (bf16 autocast where the device has it natively), 'bf16' or 'fp32'",
    "gradient_checkpointing": "recompute UNet activations in the backward pass (less memory, slower)",
    "cache_batch": "images per VAE / text-encoder batch while the cache is computed",
    "checkpoint_every": "write a resumable checkpoint every this many steps (and at the end)",
    "log_every": "log the mean loss and images/s every this many steps",
    "progress": "show a progress bar (--no-progress: a log line every --log-every steps)",
}


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on; written into every checkpoint and the exported JSON."""

    pretrained: str = ""
    data: str = ""
    out: str = "runs/finetune"
    loss: str = "baseline"  # baseline | ambient
    sigma_n: float = 0.0
    steps: int = 1000
    batch: int = 4
    lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    ema: float = 0.0
    seed: int = 0
    resolution: int = 0
    caption_dropout: float = 0.1
    sigma_data: float = 1.0
    p_mean: float = P_MEAN
    p_std: float = P_STD
    high_weight: str = "edm"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    cache_batch: int = 8
    checkpoint_every: int = 250
    log_every: int = 10
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings (those that need the pipeline are checked on loading)."""
        if not self.pretrained:
            raise ValueError("--pretrained (a diffusers text-to-image pipeline folder or hub id) is required")
        if not self.data:
            raise ValueError("--data (a folder of images with captions) is required")
        if self.loss not in ("baseline", "ambient"):
            raise ValueError(f"loss must be 'baseline' or 'ambient', not {self.loss!r}")
        if self.loss == "ambient" and not self.sigma_n > 0:
            raise ValueError(f"the ambient loss needs --sigma-n > 0, got {self.sigma_n}")
        if self.high_weight not in ("edm", "ambient4"):
            raise ValueError(f"high_weight must be 'edm' or 'ambient4', not {self.high_weight!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if not 0 <= self.caption_dropout <= 1:
            raise ValueError(f"caption_dropout must be in [0, 1], not {self.caption_dropout}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), not {self.ema}")
        if not (self.sigma_data > 0 and self.p_std > 0 and self.lr > 0):
            raise ValueError("sigma_data, p_std and lr must be positive")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.warmup < 0 or self.resolution < 0:
            raise ValueError("weight_decay, max_grad_norm, warmup and resolution must be >= 0")
        for name in ("steps", "batch", "cache_batch", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


# settings a resumed run must share with its checkpoint (the others only say how long, how often, how shown)
RESUME_KEYS = (
    "pretrained",
    "data",
    "loss",
    "sigma_n",
    "batch",
    "lr",
    "warmup",
    "weight_decay",
    "max_grad_norm",
    "ema",
    "seed",
    "resolution",
    "caption_dropout",
    "sigma_data",
    "p_mean",
    "p_std",
    "high_weight",
)


# ---------------------------------------------------------------- the denoiser


class LatentDenoiser(DDPMAdapter):
    """A diffusers ``UNet2DConditionModel`` (epsilon, v or sample prediction) seen as an EDM denoiser on latents.

    ``DDPMAdapter``'s sigma <-> timestep mapping; the condition is the text encoder's token states (B, L, D).
    """

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised estimate of the clean latent for the VE latent x at noise level sigma, prompt states ``cond``."""
        if cond is None or cond.ndim != 3:
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"a text-to-image UNet needs the prompt's token states (B, L, D) as cond, got {got}")
        s = _as_sigma(sigma, x)
        a = 1.0 / (1.0 + s**2)
        x_in = x * a.sqrt()
        t = self.sigma_to_t(s.flatten())
        dtype = self.unet.dtype
        out = self.unet(x_in.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.float()
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            return a.sqrt() * x_in - (1 - a).sqrt() * out
        return out

    @classmethod
    def from_pipeline_dir(cls, path: str | os.PathLike) -> LatentDenoiser:
        """The UNet and scheduler of a pipeline folder (a fine-tuned one, or the pretrained one) as a denoiser."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        d = resolve_pipeline_dir(path)
        check_pipeline_dir(d)
        unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet", use_safetensors=True)
        return cls.from_scheduler(unet, DDPMScheduler.from_pretrained(d, subfolder="scheduler")).eval()


# ---------------------------------------------------------------- the pipeline folder


def resolve_pipeline_dir(
    path_or_id: str | os.PathLike, extra_patterns: tuple[str, ...] = (), what: str = "a diffusers pipeline folder"
) -> Path:
    """A local pipeline folder as is; a hub id from the local cache, or downloaded when HF_HUB_OFFLINE is not set.

    ``extra_patterns`` are files fetched beside ``HUB_PATTERNS`` (a fine-tuned pair's ``ambient_latent.json``).
    """
    p = Path(path_or_id)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{p} is a file; expected {what} with model_index.json")
        return p
    s = str(path_or_id)
    if s.count("/") != 1 or s.startswith((".", "/")):
        raise FileNotFoundError(f"pipeline folder {s!r} does not exist")
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(s, allow_patterns=[*HUB_PATTERNS, *extra_patterns], local_files_only=offline))
    except (OSError, ValueError) as e:  # not cached while offline, network errors, unknown repos, bad ids
        why = "it is not in the local hub cache and HF_HUB_OFFLINE=1 forbids a download" if offline else str(e)
        raise FileNotFoundError(f"{s!r} is not a local folder and could not be fetched from the hub: {why}") from e


def check_pipeline_dir(d: str | os.PathLike) -> dict[str, Any]:
    """Check a fine-tunable text-to-image pipeline folder without reading weights; return its component configs."""
    d = Path(d)
    index_path = d / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{d} has no model_index.json; expected a diffusers text-to-image pipeline folder")
    index = _read_json(index_path)
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} is not a JSON object")
    out: dict[str, Any] = {"model_index": index}
    for name, classes in COMPONENTS.items():
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise ValueError(
                f"{d} has no {name} in model_index.json: fine-tuning needs a text-to-image pipeline with "
                f"{', '.join(COMPONENTS)} (Stable Diffusion 1.x / 2.x class)"
            )
        if classes is not None and entry[1] not in classes:
            raise ValueError(f"{d}: {name} is a {entry[1]}; this fine-tuning supports {' or '.join(classes)}")
        if not (d / name).is_dir():
            raise FileNotFoundError(f"{d} has no {name}/ folder (model_index.json lists it)")
        if name == "tokenizer":
            continue
        cfg_name = "scheduler_config.json" if name == "scheduler" else "config.json"
        if not (d / name / cfg_name).is_file():
            raise FileNotFoundError(f"{d} has no {name}/{cfg_name}")
        out[name] = _read_json(d / name / cfg_name)
    unet, vae, text = out["unet"], out["vae"], out["text_encoder"]
    if unet.get("addition_embed_type") is not None:
        raise ValueError(
            f"{d}: the UNet needs added conditions ({unet['addition_embed_type']!r}, an SDXL-class model); this "
            "fine-tuning supports UNets conditioned on the text encoder's token states alone"
        )
    if unet.get("in_channels") != vae.get("latent_channels"):
        raise ValueError(
            f"{d}: the UNet takes {unet.get('in_channels')} channels, the VAE makes {vae.get('latent_channels')}"
        )
    if unet.get("cross_attention_dim") != text.get("hidden_size"):
        raise ValueError(
            f"{d}: the UNet attends to {unet.get('cross_attention_dim')}-d states, the text encoder makes "
            f"{text.get('hidden_size')}-d ones"
        )
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def vae_factor(vae_config: dict[str, Any]) -> int:
    """The VAE's downsampling factor (8 for Stable Diffusion's)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


# ---------------------------------------------------------------- the captioned image folder


def read_captioned_folder(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Sorted relative image paths and captions, from ``metadata.jsonl`` if present, else from a ``.txt`` each."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    meta = root / METADATA_NAME
    if meta.is_file():
        return _read_metadata(root, meta)
    images = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _hidden(p, root)
    )
    if not images:
        raise ValueError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    missing = [p.relative_to(root).as_posix() for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(images)} images in {root} have no caption, e.g. {missing[:3]}: write a .txt "
            f"of the same name beside each image, or a {METADATA_NAME} with one "
            '{"file_name": ..., "text": ...} per line'
        )
    files = [p.relative_to(root).as_posix() for p in images]
    return files, [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in images]


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def _read_metadata(root: Path, meta: Path) -> tuple[list[str], list[str]]:
    rows: dict[str, str] = {}
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta} line {n} is not JSON: {e}") from e
        if not (isinstance(row, dict) and isinstance(row.get("file_name"), str) and isinstance(row.get("text"), str)):
            raise ValueError(f'{meta} line {n} needs "file_name" and "text" strings, got {line[:200]!r}')
        name = Path(row["file_name"]).as_posix()
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{meta} line {n}: file_name {name!r} must be a path inside {root}")
        if not (root / name).is_file():
            raise FileNotFoundError(f"{meta} line {n}: {root / name} does not exist")
        if name in rows:
            raise ValueError(f"{meta} line {n}: {name} is listed twice")
        rows[name] = row["text"].strip()
    if not rows:
        raise ValueError(f"{meta} lists no images")
    files = sorted(rows)
    return files, [rows[f] for f in files]


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """An image file as a (3, R, R) tensor in [-1, 1]: shorter side resized to R, centre crop."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path} is not an image that can be read ({e})") from e
    scale = resolution / min(im.size)
    w, h = max(resolution, round(im.width * scale)), max(resolution, round(im.height * scale))
    im = im.resize((w, h), Image.BICUBIC)
    left, top = (w - resolution) // 2, (h - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float() / 127.5 - 1.0


# ---------------------------------------------------------------- the cache


def data_fingerprint(root: Path, files: list[str], captions: list[str], pipe_dir: Path, resolution: int) -> str:
    """sha256 of image bytes, captions, resolution, encoder configs and weight sizes, and the tokenizer's files."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "resolution": resolution, "captions": captions}).encode())
    for f in files:
        h.update(f.encode() + b"\0")
        digest = hashlib.sha256()
        with open(root / f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
        h.update(digest.digest())
    for comp in ("vae", "text_encoder", "tokenizer"):
        for p in sorted((pipe_dir / comp).iterdir()):
            if p.suffix in (".json", ".txt"):
                h.update(p.name.encode() + p.read_bytes())
            elif p.is_file():
                h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()


@torch.no_grad()
def build_cache(
    path: Path,
    root: Path,
    files: list[str],
    captions: list[str],
    pipe_dir: Path,
    resolution: int,
    fingerprint: str,
    device: torch.device,
    batch: int = 8,
    progress: bool = False,
) -> None:
    """Encode every image (VAE mean, scaled) and every distinct caption once; write them atomically to ``path``."""
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel

    vae = AutoencoderKL.from_pretrained(pipe_dir, subfolder="vae", use_safetensors=True).to(device).eval()
    text_encoder = CLIPTextModel.from_pretrained(pipe_dir, subfolder="text_encoder").to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(pipe_dir / "tokenizer")
    scale = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="encode images", dynamic_ncols=True)
    latents = []
    for i in range(0, len(files), batch):
        x = torch.stack([load_image(root / f, resolution) for f in files[i : i + batch]]).to(device)
        z = vae.encode(x).latent_dist.mode()
        if shift is not None:
            z = z - float(shift)
        latents.append((z * scale).float().cpu())
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    distinct = [""] + sorted(set(captions) - {""})  # the empty prompt first: the unconditional input
    states = []
    for i in range(0, len(distinct), batch):
        ids = tokenizer(
            distinct[i : i + batch],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        states.append(text_encoder(ids.to(device))[0].float().cpu())
    where = {c: k for k, c in enumerate(distinct)}
    tensors = {
        "latents": torch.cat(latents).contiguous(),
        "text": torch.cat(states).contiguous(),
        "caption_index": torch.tensor([where[c] for c in captions], dtype=torch.int64),
    }
    meta = {"version": CACHE_VERSION, "fingerprint": fingerprint, "files": files, "captions": distinct}
    meta.update({"resolution": resolution, "scaling_factor": scale, "shift_factor": shift})
    del vae, text_encoder
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"ambient_cache": json.dumps(meta)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The cache's tensors and its metadata (fingerprint, files, distinct captions, resolution, scaling)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["ambient_cache"])
        return load_file(str(path)), meta
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable latent cache ({e}); delete it to have it recomputed") from e


# ---------------------------------------------------------------- fine-tuning


class LatentFinetuner:
    """One fine-tuning run: UNet, EMA, optimiser, cached latents and captions; ``run()`` trains to ``steps``."""

    def __init__(self, config: FinetuneConfig):
        config.validate()
        self.cfg = config
        self.world, self.rank, local = _dist_info()
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        self.bf16 = use_bf16(config.precision, self.device)
        self.out = Path(config.out)

        self.pipe_dir = resolve_pipeline_dir(config.pretrained)
        self.configs = check_pipeline_dir(self.pipe_dir)
        self.data_root = Path(config.data)
        self.files, self.captions = read_captioned_folder(self.data_root)
        factor = vae_factor(self.configs["vae"])
        sample = self.configs["unet"].get("sample_size") or 64
        sample = sample if isinstance(sample, int) else sample[0]
        self.resolution = config.resolution or sample * factor
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE's factor {factor}")

        from diffusers import DDPMScheduler, UNet2DConditionModel

        scheduler = DDPMScheduler.from_pretrained(self.pipe_dir, subfolder="scheduler")
        unet = UNet2DConditionModel.from_pretrained(self.pipe_dir, subfolder="unet", use_safetensors=True)
        self.model = LatentDenoiser.from_scheduler(unet, scheduler).to(self.device)
        self.model.unet.train()
        if config.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
        self.sigma_min, self.sigma_max = self.model.sigma_min, self.model.sigma_max
        if config.loss == "ambient" and not self.sigma_min < config.sigma_n < self.sigma_max:
            raise ValueError(
                f"sigma_n {config.sigma_n:g} is outside the scheduler's sigma range "
                f"({self.sigma_min:.4g}, {self.sigma_max:.4g}): no training step would fall on one side of it"
            )

        self._load_cache()
        self.latent_shape = tuple(self.latents.shape[1:])

        self.ema = copy.deepcopy(self.model.unet).eval().requires_grad_(False) if config.ema else None
        params = [p for p in self.model.unet.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay
        )
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._resume()

    # ---------------------------------------------------------------- cache
    def _load_cache(self) -> None:
        path = self.out / CACHE_NAME
        fp = data_fingerprint(self.data_root, self.files, self.captions, self.pipe_dir, self.resolution)
        if self.rank == 0 and not path.is_file():
            build_cache(
                path,
                self.data_root,
                self.files,
                self.captions,
                self.pipe_dir,
                self.resolution,
                fp,
                self.device,
                self.cfg.cache_batch,
                self.cfg.progress,
            )
        if self.world > 1:
            torch.distributed.barrier()
        tensors, meta = read_cache(path)
        if meta.get("fingerprint") != fp or meta.get("files") != self.files:
            raise ValueError(
                f"{path} was computed from other images, captions, resolution or encoders than this run's: use "
                "another --out, or delete the cache (and the checkpoint) to start over"
            )
        self.cache_meta = meta
        self.latents = tensors["latents"]
        self.text = tensors["text"]
        self.caption_index = tensors["caption_index"]

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
        for k in RESUME_KEYS:
            if saved.get(k) != json.loads(json.dumps(getattr(self.cfg, k))):
                raise ValueError(f"{ck} was written with {k}={saved.get(k)!r}, this run has {getattr(self.cfg, k)!r}")
        self.model.unet.load_state_dict(load_file(str(ck / "unet.safetensors")))
        if self.ema is not None:
            self.ema.load_state_dict(load_file(str(ck / "ema.safetensors")))
        self.opt.load_state_dict(_unflatten_optimizer(load_file(str(ck / "optimizer.safetensors")), state["optimizer"]))
        self.step = int(state["step"])
        self.history = state.get("history", [])

    def save_checkpoint(self) -> None:
        """Write UNet, EMA, optimiser and step atomically (temporary folder, then rename)."""
        if self.rank != 0:
            return
        opt_t, opt_meta = _flatten_optimizer(self.opt)
        unet_sd = {k: v.detach().contiguous().cpu() for k, v in self.model.unet.state_dict().items()}
        ema_sd = None
        if self.ema is not None:
            ema_sd = {k: v.detach().contiguous().cpu() for k, v in self.ema.state_dict().items()}
        state = {"step": self.step, "config": asdict(self.cfg), "optimizer": opt_meta, "history": self.history}

        def write(tmp: Path) -> None:
            save_file(unet_sd, str(tmp / "unet.safetensors"))
            if ema_sd is not None:
                save_file(ema_sd, str(tmp / "ema.safetensors"))
            save_file(opt_t, str(tmp / "optimizer.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state))

        try:
            _atomic_write_dir(self.out / CHECKPOINT, write)
        except OSError as e:
            raise OSError(
                e.errno, f"could not write a checkpoint at step {self.step} ({e}); the previous checkpoint is intact"
            ) from e

    def ambient_settings(self) -> dict[str, Any]:
        """What ``ambient_latent.json`` records: the loss and its settings, the steps and the training set."""
        c = self.cfg
        return {
            "format_version": FORMAT_VERSION,
            "type": "latent",
            "loss": c.loss,
            "sigma_n": c.sigma_n if c.loss == "ambient" else None,
            "high_weight": c.high_weight if c.loss == "ambient" else None,
            "sigma_data": c.sigma_data,
            "p_mean": c.p_mean,
            "p_std": c.p_std,
            "steps": self.step,
            "seed": c.seed,
            "weights": "ema" if self.ema is not None else "raw",
            "pretrained": c.pretrained,
            "prediction_type": self.model.prediction_type,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "resolution": self.resolution,
            "latent_shape": list(self.latent_shape),
            "data": c.data,
            "train_files": self.files,
            "train_captions": self.captions,
            "sigma_mapping": "sigma = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]); the UNet sees "
            "x / sqrt(1 + sigma^2) at the t whose log sigma interpolates the scheduler's table",
            "train_config": asdict(c),
        }

    def export(self, path: Path | None = None) -> Path:
        """Atomically save the pipeline with the fine-tuned UNet and ``ambient_latent.json`` (default ``out/model``)."""
        path = Path(path or (self.out / MODEL))
        if self.rank != 0:
            return path
        from diffusers import DiffusionPipeline

        unet = self.ema if self.ema is not None else self.model.unet
        pipe = DiffusionPipeline.from_pretrained(self.pipe_dir, unet=unet, use_safetensors=True)
        settings = self.ambient_settings()

        def write(tmp: Path) -> None:
            pipe.save_pretrained(tmp, safe_serialization=True)
            (tmp / AMBIENT_JSON).write_text(json.dumps(settings, indent=2) + "\n")

        try:
            _atomic_write_dir(path, write)
        except OSError as e:
            raise OSError(
                e.errno, f"could not save the pipeline to {path} ({e}); any folder already there is intact"
            ) from e
        return path

    # ---------------------------------------------------------------- training
    def draws(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This process's draws of a step: image indices, noise levels, noise, and which captions are kept."""
        g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.rank) * 10_000_019 + step)
        b = max(1, self.cfg.batch // self.world)
        idx = torch.randint(len(self.files), (b,), generator=g)
        sigma = sample_sigmas(b, g, self.cfg.p_mean, self.cfg.p_std, sigma_lo=self.sigma_min, sigma_hi=self.sigma_max)
        noise = torch.randn(b, *self.latent_shape, generator=g)
        keep = torch.rand(b, generator=g) >= self.cfg.caption_dropout
        return idx, sigma, noise, keep

    def loss_at(self, step: int) -> torch.Tensor:
        """The mean loss of a step's batch (with gradients), from that step's draws alone."""
        idx, sigma, noise, keep = self.draws(step)
        dev = self.device
        x0 = self.latents[idx].to(dev)
        cond = self.text[torch.where(keep, self.caption_index[idx], 0)].to(dev)
        net = self.ddp if self.ddp is not None else self.model
        c = self.cfg
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            if c.loss == "baseline":
                loss = edm_loss(net, x0, sigma.to(dev), noise.to(dev), cond, c.sigma_data)
            else:
                eta = fixed_noise(idx, self.latent_shape, c.seed).to(dev)  # image i's one noise field
                loss = ambient_loss(
                    net, x0, sigma.to(dev), c.sigma_n, eta, noise.to(dev), cond, c.sigma_data, c.high_weight
                )
        return loss.mean()

    def train_step(self) -> float:
        """One optimiser step; returns the loss."""
        c = self.cfg
        torch.manual_seed((c.seed * 1_000_003 + self.rank) * 10_000_019 + self.step + 0xD0)  # dropout, if any
        lr = c.lr * min(1.0, (self.step + 1) / max(1, c.warmup))
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = self.loss_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.unet.parameters(), c.max_grad_norm)
        self.opt.step()
        if self.ema is not None:
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.model.unet.parameters(), strict=True):
                    pe.lerp_(p.detach(), 1 - c.ema)
        self.step += 1
        return float(loss.detach())

    def run(self) -> Path:
        """Train up to ``steps`` (resuming where a checkpoint left off); export and return the pipeline folder."""
        c = self.cfg
        bar = None
        if c.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc=f"finetune {c.loss}", dynamic_ncols=True)
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
                elif self.rank == 0:
                    print(f"step {self.step}/{c.steps} loss {self.history[-1]['loss']:.4f} {ips:.1f} img/s", flush=True)
            if bar is not None:
                bar.update(1)
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        path = self.export()
        if self.world > 1:
            torch.distributed.barrier()
        return path


def finetune(config: FinetuneConfig) -> Path:
    """Fine-tune (or resume) a run and return the exported pipeline folder."""
    try:
        return LatentFinetuner(config).run()
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def read_ambient_settings(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``ambient_latent.json`` of an exported pipeline folder."""
    path = Path(folder) / AMBIENT_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {AMBIENT_JSON}: not a pipeline exported by `ambient finetune`")
    cfg = _read_json(path)
    if not isinstance(cfg, dict) or cfg.get("type") != "latent":
        raise ValueError(f"{path} is not an Ambient latent fine-tuning record")
    if not isinstance(cfg.get("format_version"), int) or cfg["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {cfg.get('format_version')!r}; this code reads up to {FORMAT_VERSION}"
        )
    return cfg
