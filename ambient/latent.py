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
    ``LatentDenoiser`` below is ``DDPMAdapter`` itself, requiring what a text-to-image UNet needs: the prompt
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
                              fine-tuned UNet (its EMA where ``ema`` > 0) and ``ambient_config.json`` (the
                              model folder's one sidecar, type "latent"; pipelines exported before it
                              have ``ambient_latent.json``, still read): loss,
                              sigma_n, sigma_data, steps, the training files and captions, the sigma range.

Under ``torchrun --nproc_per_node K`` each process draws batch / K images from (seed, rank, step), rank 0 writes
the cache, checkpoints and the export, and gradients are averaged by DistributedDataParallel, as in ``train``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ambient.config import FinetuneConfig  # noqa: F401 (re-exported: its home was here)
from ambient.denoiser import DDPMAdapter
from ambient.io import (
    LEGACY_LATENT_SIDECAR,
    SIDECAR_NAME,
    SIDECAR_VERSION,
    atomic_write_dir,
    atomic_write_file,
    resolve_folder,
)
from ambient.io import read_json as _read_json
from ambient.losses import ambient_loss, edm_loss, fixed_noise, sample_sigmas
from ambient.training import Task, TrainingLoop, step_generator

CACHE_NAME = "latent_cache.safetensors"
CHECKPOINT = "checkpoint"
MODEL = "model"
AMBIENT_JSON = SIDECAR_NAME  # the one sidecar of a model folder (type "latent" here, "edm" for a pixel model)
LEGACY_JSON = LEGACY_LATENT_SIDECAR  # what pipelines exported before it was one file have (format_version 1)
FORMAT_VERSION = SIDECAR_VERSION
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
    AMBIENT_JSON,
    LEGACY_JSON,
    "*/*.json",
    "*/*.txt",
    "*/diffusion_pytorch_model.safetensors",
    "*/diffusion_pytorch_model-*-of-*.safetensors",
    "*/model.safetensors",
    "*/model-*-of-*.safetensors",
]


RESUME_KEYS = FinetuneConfig.RESUME_KEYS


# ---------------------------------------------------------------- the denoiser


class LatentDenoiser(DDPMAdapter):
    """``DDPMAdapter`` (the one adapter of a diffusers UNet as an EDM denoiser) for a text-to-image UNet: the same
    mapping, with the prompt's token states (B, L, D) required as ``cond``."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised estimate of the clean latent for the VE latent x at noise level sigma, prompt states ``cond``."""
        if cond is None or cond.ndim != 3:
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"a text-to-image UNet needs the prompt's token states (B, L, D) as cond, got {got}")
        return super().forward(x, sigma, cond)

    @classmethod
    def from_pipeline_dir(cls, path: str | os.PathLike) -> LatentDenoiser:
        """The UNet and scheduler of a pipeline folder (a fine-tuned one, or the pretrained one) as a denoiser."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        d = resolve_pipeline_dir(path)
        check_pipeline_dir(d)
        unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet", use_safetensors=True, low_cpu_mem_usage=False)
        return cls.from_scheduler(unet, DDPMScheduler.from_pretrained(d, subfolder="scheduler")).eval()


# ---------------------------------------------------------------- the pipeline folder

ACCELERATE_NOTICE = "`accelerate` was not found"


class _NoAccelerateNotice(logging.Filter):
    """Drops diffusers' multi-line advice to install accelerate (it loads the same way without it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return ACCELERATE_NOTICE not in str(record.msg)


def quiet_accelerate_notice() -> None:
    """Silence diffusers' "accelerate was not found" notice (that one message only) on the loggers that print it."""
    for name in ("diffusers.models.modeling_utils", "diffusers.pipelines.pipeline_utils"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _NoAccelerateNotice) for f in log.filters):
            log.addFilter(_NoAccelerateNotice())


quiet_accelerate_notice()


def resolve_pipeline_dir(
    path_or_id: str | os.PathLike, extra_patterns: tuple[str, ...] = (), what: str = "a diffusers pipeline folder"
) -> Path:
    """A local pipeline folder as is; a hub id (``owner/name`` or ``hub:owner/name``) from the local cache when
    HF_HUB_OFFLINE is set (1/true/yes/on), else downloaded (``ambient.io.resolve_folder``).

    ``extra_patterns`` are files fetched beside ``HUB_PATTERNS`` (which already hold the sidecar JSON).
    """
    return resolve_folder(path_or_id, [*HUB_PATTERNS, *extra_patterns], f"{what} with model_index.json")


def public_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A component's config without the keys that say where it was loaded from (``_name_or_path``): two copies of
    one pipeline at different paths have the same public config."""
    return {k: v for k, v in cfg.items() if k not in ("_name_or_path", "name_or_path")}


def component_signature(folder: str | os.PathLike, comp: str) -> tuple:
    """What identifies a shared component (vae, text_encoder, tokenizer) without hashing gigabytes: its JSON files
    without the load path, its other text files, and its weights' sizes. Copies of one pipeline at different paths
    have the same signature; fine-tuned pipelines exported from them too."""
    d = Path(folder) / comp
    files: list[tuple[str, Any]] = []
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        if p.suffix == ".json":
            try:
                value = _read_json(p)
            except ValueError:
                value = p.read_bytes()
            files.append(
                (p.name, json.dumps(public_config(value), sort_keys=True) if isinstance(value, dict) else value)
            )
        elif p.suffix == ".txt":
            files.append((p.name, p.read_bytes()))
        elif p.suffix == ".safetensors":
            files.append((p.name, p.stat().st_size))
    return tuple(files)


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
        raw = _read_json(d / name / cfg_name)
        out[name] = public_config(raw) if isinstance(raw, dict) else raw
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
    return files, [read_text_file(p.with_suffix(".txt")).strip() for p in images]


def _not_utf8(path: Path, data: bytes, e: UnicodeDecodeError) -> ValueError:
    line = data.count(b"\n", 0, e.start) + 1
    return ValueError(
        f"{path} line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at position {e.start}): save the file "
        "as UTF-8"
    )


def read_text_file(path: Path) -> str:
    """A caption file's text; a file that is not UTF-8 raises ValueError naming the file and the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data, e) from e


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def _read_metadata(root: Path, meta: Path) -> tuple[list[str], list[str]]:
    rows: dict[str, str] = {}
    data = meta.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(meta, data, e) from e
    for n, line in enumerate(text.splitlines(), 1):
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

    vae = AutoencoderKL.from_pretrained(pipe_dir, subfolder="vae", use_safetensors=True, low_cpu_mem_usage=False)
    vae = vae.to(device).eval()
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
    atomic_write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata={"ambient_cache": json.dumps(meta)}))


def read_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The cache's tensors and its metadata (fingerprint, files, distinct captions, resolution, scaling)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["ambient_cache"])
        return load_file(str(path)), meta
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable latent cache ({e}); delete it to have it recomputed") from e


# ---------------------------------------------------------------- fine-tuning


class LatentTask(Task):
    """The UNet of a text-to-image pipeline on cached latents and caption states (``TrainingLoop``'s latent task)."""

    WEIGHTS = "unet.safetensors"
    ALWAYS_EMA = False  # an EMA only where ``ema`` > 0
    DECOUPLED = True  # AdamW, whatever the weight decay
    desc = "finetune"

    def __init__(self, loop: TrainingLoop):
        config = self.cfg = loop.cfg
        self.rank, self.world, self.device, self.out = loop.rank, loop.world, loop.device, loop.out
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
        unet = UNet2DConditionModel.from_pretrained(
            self.pipe_dir, subfolder="unet", use_safetensors=True, low_cpu_mem_usage=False
        )
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

    # ---------------------------------------------------------------- the task
    def core(self, model: nn.Module) -> nn.Module:
        return model.unet

    def _draws(self, g: torch.Generator, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.files), (b,), generator=g)
        sigma = sample_sigmas(b, g, self.cfg.p_mean, self.cfg.p_std, sigma_lo=self.sigma_min, sigma_hi=self.sigma_max)
        noise = torch.randn(b, *self.latent_shape, generator=g)
        keep = torch.rand(b, generator=g) >= self.cfg.caption_dropout
        return idx, sigma, noise, keep

    def draws(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This process's draws of a step: image indices, noise levels, noise, and which captions are kept."""
        return self._draws(step_generator(self.cfg.seed, self.rank, step), max(1, self.cfg.batch // self.world))

    def loss(self, net: Any, step: int, g: torch.Generator, b: int) -> torch.Tensor:
        idx, sigma, noise, keep = self._draws(g, b)
        dev = self.device
        x0 = self.latents[idx].to(dev)
        cond = self.text[torch.where(keep, self.caption_index[idx], 0)].to(dev)
        c = self.cfg
        if c.loss == "baseline":
            return edm_loss(net, x0, sigma.to(dev), noise.to(dev), cond, c.sigma_data)
        eta = fixed_noise(idx, self.latent_shape, c.seed).to(dev)  # image i's one noise field
        return ambient_loss(net, x0, sigma.to(dev), c.sigma_n, eta, noise.to(dev), cond, c.sigma_data, c.high_weight)

    # ---------------------------------------------------------------- export
    def ambient_settings(self, step: int) -> dict[str, Any]:
        """What the sidecar (``ambient_config.json``, type "latent") records: the loss and its settings, the steps
        and the training set."""
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
            "steps": step,
            "seed": c.seed,
            "weights": "ema" if c.ema > 0 else "raw",
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

    def export(self, model: nn.Module, step: int, path: Path) -> Path:
        """Atomically save the pipeline with ``model``'s UNet and the sidecar JSON."""
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(
            self.pipe_dir, unet=model.unet, use_safetensors=True, low_cpu_mem_usage=False
        )
        settings = self.ambient_settings(step)

        def write(tmp: Path) -> None:
            pipe.save_pretrained(tmp, safe_serialization=True)
            _drop_load_paths(tmp)
            (tmp / AMBIENT_JSON).write_text(json.dumps(settings, indent=2) + "\n")

        try:
            atomic_write_dir(path, write)
        except OSError as e:
            raise OSError(
                e.errno, f"could not save the pipeline to {path} ({e}); any folder already there is intact"
            ) from e
        return path


def _drop_load_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` (where each component was loaded from: a local path) from a saved pipeline's JSON
    files, so that pipelines fine-tuned from copies of one base pipeline have the same configs, and no local path
    is published with a pipeline."""
    for p in [folder / "model_index.json", *sorted(folder.glob("*/*.json"))]:
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and "_name_or_path" in cfg:
            del cfg["_name_or_path"]
            p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


class LatentFinetuner(TrainingLoop):
    """The loop with the latent task: ``LatentFinetuner(config).run()`` fine-tunes to ``steps`` and exports."""

    def __init__(self, config: FinetuneConfig):
        super().__init__(config, LatentTask)

    def ambient_settings(self) -> dict[str, Any]:
        """What the exported sidecar records after the steps run so far."""
        return self.task.ambient_settings(self.step)


def finetune(config: FinetuneConfig) -> Path:
    """Fine-tune (or resume) a run and return the exported pipeline folder."""
    try:
        return LatentFinetuner(config).run()
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def read_ambient_settings(folder: str | os.PathLike) -> dict[str, Any]:
    """The latent record of an exported pipeline folder: its ``ambient_config.json`` (type "latent"), or the
    ``ambient_latent.json`` of pipelines exported before the sidecar was one file."""
    folder = Path(folder)
    path = folder / AMBIENT_JSON
    if not path.is_file():
        path = folder / LEGACY_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {AMBIENT_JSON} (nor the older {LEGACY_JSON}): not a pipeline exported by "
            "`ambient finetune`"
        )
    cfg = _read_json(path)
    if not isinstance(cfg, dict) or cfg.get("type") != "latent":
        raise ValueError(f"{path} is not an Ambient latent fine-tuning record")
    if not isinstance(cfg.get("format_version"), int) or cfg["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {cfg.get('format_version')!r}; this code reads up to {FORMAT_VERSION}"
        )
    return cfg
