"""Denoisers with one face: ``D(x, sigma, cond=None) -> x0_hat`` in EDM's variance-exploding space.

``EDMDenoiser`` wraps a raw network with EDM preconditioning (it owns everything about sigma);
``DDPMAdapter`` presents a diffusers DDPM-style UNet plus its ``alphas_cumprod`` through the same
interface, so any pair of models can go through the same samplers.

An EDM model folder (``save_pretrained``) is one that diffusers can read::

    ambient_config.json              type "edm", sigma_data, time_scale, cond_dim, text_proj dims, meta (patch)
    unet/config.json                 diffusers' own UNet2DModel config (every constructor argument)
    unet/diffusion_pytorch_model.safetensors
    text_proj.safetensors            the prompt-embedding projection (weight, bias); only when cond_dim > 0
    README.md                        model card with Hub metadata

so ``diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet")`` loads the raw network. Folders in
the older layout (``config.json`` + ``model.safetensors`` with ``unet.`` / ``cond_proj.`` keys) still load;
``scripts/convert_checkpoints.py`` rewrites them in the new one.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ambient.config import SIGMA_MAX
from ambient.io import as_os_error, atomic_write_dir, resolve_folder
from ambient.io import read_json as _read_json

SIGMA_MIN = 0.002
FORMAT_VERSION = 3  # of ambient_config.json; the older layout (config.json + model.safetensors) is version 1
# version 3 adds "patch" (a space-to-depth stem); a folder with patch 1 is still written as version 2, which older code
# reads correctly, while one with patch > 1 is version 3, which older code refuses instead of misreading
CONFIG_NAME = "ambient_config.json"  # EDM and Ambient settings and the training meta
UNET_FOLDER = "unet"
UNET_CONFIG_NAME = f"{UNET_FOLDER}/config.json"  # diffusers' UNet2DModel config
WEIGHTS_NAME = f"{UNET_FOLDER}/diffusion_pytorch_model.safetensors"  # the UNet's weights, diffusers' names
TEXT_PROJ_NAME = "text_proj.safetensors"  # the prompt-embedding projection (only when cond_dim > 0)
CARD_NAME = "README.md"
LEGACY_CONFIG_NAME = "config.json"  # the older layout: one nested config ...
LEGACY_WEIGHTS_NAME = "model.safetensors"  # ... and one file with "unet." and "cond_proj." keys
# what a UNet config must state itself (diffusers would fill in defaults for anything missing)
REQUIRED_UNET_KEYS = (
    "sample_size",
    "in_channels",
    "out_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
)
CARD_TAGS = ("ambient-diffusion", "edm", "memorization")


def default_unet_config(
    sample_size: int = 32,
    channels: int = 1,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    layers_per_block: int = 1,
    time_scale_shift: str = "default",
    dropout: float = 0.0,
) -> dict[str, Any]:
    """The small attention-free diffusers UNet config this project trains (about 1.1M parameters).

    ``time_scale_shift="scale_shift"`` applies the time/text embedding as a scale and shift after the
    second GroupNorm of each block; with "default" it is added before that norm, and with one channel a
    group (32 groups at 32 channels) the norm removes it again at the first level.
    """
    n = len(block_out_channels)
    extra: dict[str, Any] = {}
    if time_scale_shift != "default":
        extra["resnet_time_scale_shift"] = time_scale_shift
    if dropout:
        extra["dropout"] = float(dropout)
    return {
        "sample_size": sample_size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": layers_per_block,
        "down_block_types": ["DownBlock2D"] * n,
        "up_block_types": ["UpBlock2D"] * n,
        "add_attention": False,
        "norm_num_groups": min(32, block_out_channels[0]),
        **extra,
    }


def check_patch(patch: Any, where: str = "") -> int:
    """``patch`` if it is a whole number >= 1 (the side of a space-to-depth stem); else a ValueError naming ``where``."""
    if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1:
        raise ValueError(f"{where}patch must be a whole number >= 1, not {patch!r}")
    return patch


class CondUNet(nn.Module):
    """Raw network F(x, c_noise, cond): a diffusers UNet2DModel plus a projection of the text embedding.

    The text embedding is projected to the UNet's time-embedding width and added to it (diffusers'
    ``class_embed_type="identity"``). A zero vector is the unconditional (empty prompt) input. The
    network knows nothing of sigma beyond the scalar ``c_noise`` it is given.
    """

    def __init__(self, unet_config: dict[str, Any], cond_dim: int = 0, time_scale: float = 250.0, patch: int = 1):
        super().__init__()
        from diffusers import UNet2DModel

        check_patch(patch)
        if unet_config.get("in_channels", 1) % (patch * patch) or unet_config.get("out_channels", 1) % (patch * patch):
            raise ValueError(f"a {patch} x {patch} patch stem needs UNet channels divisible by {patch * patch}")
        self.unet_config = dict(unet_config)
        self.cond_dim = int(cond_dim)
        self.time_scale = float(time_scale)
        # patch > 1: each patch x patch block of pixels is one input position with patch^2 channels (space-to-depth),
        # so the UNet runs at the image side / patch and a step costs about what it costs at that side
        self.patch = patch
        extra = {"class_embed_type": "identity"} if self.cond_dim else {}
        self.unet = UNet2DModel(**self.unet_config, **extra)
        if self.cond_dim:
            emb_dim = self.unet_config["block_out_channels"][0] * 4
            self.cond_proj = nn.Linear(self.cond_dim, emb_dim)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return {"unet": self.unet_config, "cond_dim": self.cond_dim, "time_scale": self.time_scale, "patch": self.patch}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the UNet to the already scaled input ``x`` at noise embedding ``c_noise``."""
        labels = None
        if self.cond_dim:
            if cond is None:
                cond = x.new_zeros(x.shape[0], self.cond_dim)
            labels = self.cond_proj(cond.to(x.dtype))
        if self.patch > 1:
            x = nn.functional.pixel_unshuffle(x, self.patch)
        out = self.unet(x, c_noise * self.time_scale, class_labels=labels).sample
        return nn.functional.pixel_shuffle(out, self.patch) if self.patch > 1 else out


def _as_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample sigma to shape (B, 1, 1, 1), float32."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


_as_os_error = as_os_error  # the names other modules imported before ambient.io held them
_atomic_write_dir = atomic_write_dir


def resolve_model_dir(path_or_id: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id (``owner/name`` or ``hub:owner/name``): from the local hub cache
    when HF_HUB_OFFLINE is set (1/true/yes/on), else downloaded (``ambient.io.resolve_folder``)."""
    return resolve_folder(
        path_or_id,
        ["*.json", "*.safetensors", "*.txt", "*.md"],
        f"a model folder holding {CONFIG_NAME} and {UNET_FOLDER}/ (or a diffusers pipeline folder)",
    )


def _layout(d: Path) -> str | None:
    """What a folder holds: "edm" (this layout), "edm-v1" (the older one), "diffusers" (a pipeline), or None."""
    if (d / UNET_FOLDER).is_dir() and (d / "scheduler").is_dir():
        return "diffusers"  # first: a fine-tuned latent pipeline has the sidecar too (type "latent")
    if (d / CONFIG_NAME).is_file():
        return "edm"
    if (d / LEGACY_CONFIG_NAME).is_file():
        return "edm-v1"
    return None


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an EDM model folder, in this layout or the older one (no weights are read; an older
    ``config.json`` counts only when it is an EDM model's, not, say, a classifier's)."""
    d = Path(path)
    layout = _layout(d) if d.is_dir() else None
    if layout != "edm-v1":
        return layout == "edm"
    try:
        cfg = json.loads((d / LEGACY_CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and cfg.get("type", "edm") == "edm" and isinstance(cfg.get("network"), dict)


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of an EDM model folder without loading weights: ``ambient_config.json`` (or the older
    ``config.json``); either way a dict with ``type``, ``sigma_data`` and ``meta``."""
    d = Path(path)
    layout = _layout(d) if d.is_dir() else None
    if layout not in ("edm", "edm-v1"):
        raise FileNotFoundError(f"{d} is not an EDM model folder: it has no {CONFIG_NAME} (nor {LEGACY_CONFIG_NAME})")
    cfg_path = d / (CONFIG_NAME if layout == "edm" else LEGACY_CONFIG_NAME)
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("meta", {}), dict):
        raise ValueError(f"{cfg_path} is not a valid model config: expected a JSON object with a meta object")
    return cfg


class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser D(x, sigma, cond) = c_skip x + c_out F(c_in x, c_noise, cond)."""

    sigma_min = SIGMA_MIN
    sigma_max = SIGMA_MAX

    def __init__(self, net: CondUNet, sigma_data: float = 0.5, meta: dict[str, Any] | None = None):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def cond_dim(self) -> int:
        """Width of the conditioning vector (0: unconditional)."""
        return self.net.cond_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this model makes."""
        cfg, p = self.net.unet_config, self.net.patch
        size = cfg["sample_size"]
        h, w = (size, size) if isinstance(size, int) else (size[0], size[1])
        return (cfg["in_channels"] // (p * p), h * p, w * p)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised estimate x0_hat of x at noise level sigma."""
        s = _as_sigma(sigma, x)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1.0 / (s**2 + sd2).sqrt()
        c_noise = s.flatten().log() / 4
        f = self.net(c_in * x, c_noise, cond)
        return c_skip * x + c_out * f.float()

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (untrained) with ``from_config``: one nested dict."""
        return {"type": "edm", "network": self.net.config(), "sigma_data": self.sigma_data, "meta": self.meta}

    def ambient_config(self) -> dict[str, Any]:
        """What ``ambient_config.json`` holds: the EDM and Ambient settings around the UNet, and ``meta``."""
        proj = None
        if self.cond_dim:
            proj = {"in_features": self.net.cond_proj.in_features, "out_features": self.net.cond_proj.out_features}
        cfg = {
            "type": "edm",
            "format_version": FORMAT_VERSION if self.net.patch > 1 else 2,
            "sigma_data": self.sigma_data,
            "time_scale": self.net.time_scale,
            "cond_dim": self.cond_dim,
            "text_proj": proj,
            "meta": self.meta,
        }
        if self.net.patch > 1:
            cfg["patch"] = self.net.patch
        return cfg

    def model_card(self, body: str | None = None, title: str = "model") -> str:
        """README.md text: Hub metadata front matter over ``body`` (its own front matter merged), or a generated card."""
        from huggingface_hub import ModelCard, ModelCardData

        data = ModelCardData()
        if body is not None and body.startswith("---"):
            try:
                card = ModelCard(body)
            except ValueError as e:
                raise ValueError(f"the model card's metadata front matter is not valid: {e}") from e
            data, body = card.data, card.text
        if body is None:
            body = self._card_body(title)
        dataset = str(self.meta.get("dataset") or self.meta.get("train_config", {}).get("data") or "")
        fashion = dataset.startswith("fashion-mnist")
        tags = [*CARD_TAGS, *(["fashion-mnist"] if fashion else []), *(["text-conditional"] if self.cond_dim else [])]
        data.library_name = "diffusers"
        data.tags = list(dict.fromkeys([*(data.tags or []), *tags]))
        if fashion:
            data.datasets = list(dict.fromkeys([*(data.datasets or []), "fashion_mnist"]))
        data.license = data.license or "mit"
        return f"---\n{data.to_yaml()}\n---\n{body}"

    def _card_body(self, title: str) -> str:
        """A short generated card for a folder that has none (``ambient.cards``, where the cards are written)."""
        from ambient.cards import generated_card

        return generated_card(self, title)

    def save_pretrained(
        self, path: str | os.PathLike, check: Callable[[Path], None] | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """Write the model folder (``unet/``, ``text_proj.safetensors``, ``ambient_config.json``, ``README.md``)
        atomically; a README.md already there keeps its text under refreshed metadata. ``check(tmp)`` runs on the
        written temporary folder before it replaces ``path`` (raise there to keep the old folder). ``dtype``
        (``torch.float16`` or ``torch.bfloat16``) stores the floating-point weights at that precision, half the
        size; loading casts them back to the model's float32 (``scripts/half_weights.py`` measures the change)."""
        if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, not {dtype!r}")
        path = Path(path)
        unet = self.net.unet

        def stored(v: torch.Tensor) -> torch.Tensor:
            v = v.detach().cpu()
            return (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()

        unet_state = {k: stored(v) for k, v in unet.state_dict().items()}
        proj_state = {}
        if self.cond_dim:
            proj_state = {k: stored(v) for k, v in self.net.cond_proj.state_dict().items()}
        cfg = self.ambient_config()

        def write(tmp: Path) -> None:
            old_card = path / CARD_NAME
            card = self.model_card(old_card.read_text() if old_card.is_file() else None, title=path.name)
            unet.save_config(tmp / UNET_FOLDER)
            save_file(unet_state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            if proj_state:
                save_file(proj_state, str(tmp / TEXT_PROJ_NAME), metadata={"format": "pt"})
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
            (tmp / CARD_NAME).write_text(card)
            if check is not None:
                check(tmp)

        try:
            _atomic_write_dir(path, write)
        except OSError as e:
            raise OSError(
                e.errno, f"could not save the model to {path} ({e}); any model folder already there is intact"
            ) from e

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EDMDenoiser:
        """A randomly initialised denoiser from a ``config()`` dict (the nested one of the older layout)."""
        if cfg.get("type", "edm") != "edm":
            raise ValueError(f"config type {cfg.get('type')!r} is not an EDM denoiser")
        net_cfg = cfg["network"]
        net = CondUNet(
            net_cfg["unet"], net_cfg.get("cond_dim", 0), net_cfg.get("time_scale", 250.0), net_cfg.get("patch", 1)
        )
        return cls(net, cfg.get("sigma_data", 0.5), cfg.get("meta"))

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> EDMDenoiser:
        """Load a folder written by ``save_pretrained`` (or a hub id with the same files), in this layout or the
        older one (``config.json`` + ``model.safetensors``)."""
        d = resolve_model_dir(path_or_id)
        layout = _layout(d)
        if layout == "edm":
            return _load_folder(cls, d).eval()
        if layout == "edm-v1":
            return _load_legacy_folder(cls, d).eval()
        if layout == "diffusers":
            raise ValueError(f"{d} is a diffusers pipeline folder (unet/ and scheduler/): load it with load_denoiser")
        pipeline = " (a diffusers pipeline folder needs unet/ and scheduler/)" if (d / UNET_FOLDER).is_dir() else ""
        raise FileNotFoundError(
            f"{d} has no {CONFIG_NAME}; a model folder needs {CONFIG_NAME}, {UNET_CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(or, in the older layout, {LEGACY_CONFIG_NAME} and {LEGACY_WEIGHTS_NAME}){pipeline}"
        )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; anything unreadable is a ValueError naming the file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], w_path: Path, cfg_path: Path) -> None:
    """``load_state_dict(strict=True)``, with a mismatch reported as a ValueError naming both files."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise ValueError(f"{w_path} does not match {cfg_path}: {' '.join(msg[:3])[:400]}") from e


def _edm_settings(cfg: Any, cfg_path: Path) -> tuple[float, int, float, dict[str, Any], int]:
    """sigma_data, cond_dim, time_scale, meta and patch from ``ambient_config.json``, checked."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"{cfg_path} is not a valid model config: expected a JSON object with a type")
    if cfg["type"] != "edm":
        raise ValueError(f"{cfg_path}: config type {cfg.get('type')!r} is not an EDM denoiser")
    version = cfg.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{cfg_path} has format_version {version!r}; this code reads up to {FORMAT_VERSION}")
    try:
        sigma_data, cond_dim, time_scale = float(cfg["sigma_data"]), cfg["cond_dim"], float(cfg["time_scale"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path} is not a valid model config: {e!r}") from e
    if not (math.isfinite(sigma_data) and sigma_data > 0 and math.isfinite(time_scale)):
        raise ValueError(f"{cfg_path}: sigma_data must be a positive number and time_scale finite")
    if not isinstance(cond_dim, int) or isinstance(cond_dim, bool) or cond_dim < 0:
        raise ValueError(f"{cfg_path}: cond_dim must be a whole number >= 0, not {cond_dim!r}")
    meta = cfg.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_path}: meta must be a JSON object")
    return sigma_data, cond_dim, time_scale, meta, check_patch(cfg.get("patch", 1), f"{cfg_path}: ")


def _unet_args(raw: Any, cond_dim: int, path: Path) -> dict[str, Any]:
    """UNet2DModel constructor arguments from diffusers' config.json, checked (nothing left to defaults)."""
    import inspect

    from diffusers import UNet2DModel

    if not isinstance(raw, dict) or raw.get("_class_name") != "UNet2DModel":
        got = raw.get("_class_name") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path} is not a diffusers UNet2DModel config (_class_name {got!r})")
    args = {k: v for k, v in raw.items() if not k.startswith("_")}
    missing = [k for k in REQUIRED_UNET_KEYS if k not in args]
    if missing:
        raise ValueError(f"{path} does not state {missing}; diffusers would silently use defaults")
    known = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"{path} has arguments this diffusers' UNet2DModel does not take: {unknown}")
    embed = args.pop("class_embed_type", None)
    if embed != ("identity" if cond_dim else None):
        raise ValueError(
            f"{path} has class_embed_type {embed!r}, but cond_dim is {cond_dim}: a text-conditional model needs "
            '"identity", an unconditional one null'
        )
    return args


def _load_folder(cls: type[EDMDenoiser], d: Path) -> EDMDenoiser:
    """Load the layout with ``unet/`` (diffusers' own files), ``text_proj.safetensors`` and ``ambient_config.json``."""
    cfg_path, unet_cfg_path = d / CONFIG_NAME, d / UNET_CONFIG_NAME
    w_path, p_path = d / WEIGHTS_NAME, d / TEXT_PROJ_NAME
    for p in (unet_cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{d} has no {p.relative_to(d)}; a model folder needs {CONFIG_NAME}, {UNET_CONFIG_NAME} and {WEIGHTS_NAME}"
            )
    cfg = _read_json(cfg_path)
    sigma_data, cond_dim, time_scale, meta, patch = _edm_settings(cfg, cfg_path)
    if cond_dim and not p_path.is_file():
        raise FileNotFoundError(f"{d} has no {TEXT_PROJ_NAME}; {cfg_path.name} says cond_dim = {cond_dim}")
    if not cond_dim and p_path.exists():
        raise ValueError(f"{d} has a {TEXT_PROJ_NAME}, but {cfg_path.name} says cond_dim = 0")
    args = _unet_args(_read_json(unet_cfg_path), cond_dim, unet_cfg_path)
    try:
        net = CondUNet(args, cond_dim, time_scale, patch)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"{unet_cfg_path} is not a valid UNet2DModel config: {e!r}") from e
    if cond_dim:
        proj = cfg.get("text_proj")
        want = {"in_features": net.cond_proj.in_features, "out_features": net.cond_proj.out_features}
        if proj is not None and (not isinstance(proj, dict) or {k: proj.get(k) for k in want} != want):
            raise ValueError(f"{cfg_path}: text_proj {proj} does not fit cond_dim and the UNet ({want})")
    _load_state(net.unet, _read_weights(w_path), w_path, unet_cfg_path)
    if cond_dim:
        _load_state(net.cond_proj, _read_weights(p_path), p_path, cfg_path)
    return cls(net, sigma_data, meta)


def _load_legacy_folder(cls: type[EDMDenoiser], d: Path) -> EDMDenoiser:
    """Load the older layout: ``config.json`` (nested) and ``model.safetensors`` (``unet.`` / ``cond_proj.`` keys)."""
    cfg_path, w_path = d / LEGACY_CONFIG_NAME, d / LEGACY_WEIGHTS_NAME
    if not w_path.is_file():
        raise FileNotFoundError(
            f"{d} has no {LEGACY_WEIGHTS_NAME}; a model folder in the older layout needs {LEGACY_CONFIG_NAME} and "
            f"{LEGACY_WEIGHTS_NAME}"
        )
    cfg = _read_json(cfg_path)
    try:
        model = cls.from_config(cfg)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{cfg_path} is not a valid model config: {e!r}") from e
    _load_state(model.net, _read_weights(w_path), w_path, cfg_path)
    return model


def build_unet(
    cond_dim: int = 0,
    sample_size: int = 32,
    channels: int = 1,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    layers_per_block: int = 1,
    meta: dict[str, Any] | None = None,
    time_scale_shift: str = "default",
    dropout: float = 0.0,
    patch: int = 1,
) -> EDMDenoiser:
    """A fresh EDM denoiser around the project's small UNet (``patch`` > 1: a space-to-depth stem of that side)."""
    if sample_size % patch:
        raise ValueError(f"the image side {sample_size} is not a multiple of the patch side {patch}")
    cfg = default_unet_config(
        sample_size // patch, channels * patch * patch, block_out_channels, layers_per_block, time_scale_shift, dropout
    )
    return EDMDenoiser(CondUNet(cfg, cond_dim, patch=patch), 0.5, meta)


class DDPMAdapter(nn.Module):
    """A diffusers DDPM-style UNet (epsilon, v or sample prediction) seen as an EDM denoiser.

    A VP sample x_t = sqrt(a) x0 + sqrt(1 - a) eps is the VE sample x = x0 + sigma eps scaled by
    sqrt(a), with sigma = sqrt((1 - a) / a). The adapter maps sigma to a (fractional) training
    timestep by interpolating log sigma over the scheduler's table.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, not {prediction_type!r}")
        self.unet = unet
        self.prediction_type = prediction_type
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.register_buffer("log_sigmas", (((1 - ac) / ac).sqrt()).log().float(), persistent=False)
        self.sigma_min = float(self.log_sigmas[0].exp())
        self.sigma_max = float(self.log_sigmas[-1].exp())
        self.cond_dim = 0

    @classmethod
    def from_scheduler(cls, unet: nn.Module, scheduler: Any) -> DDPMAdapter:
        """Wrap a UNet with a diffusers scheduler that has ``alphas_cumprod``."""
        return cls(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> DDPMAdapter:
        """Load a diffusers pipeline folder (``unet/`` and ``scheduler/``) or hub id."""
        from diffusers import DDPMScheduler, UNet2DModel

        d = Path(path_or_id)
        if not d.exists():
            d = resolve_model_dir(path_or_id)
        if _layout(d) in ("edm", "edm-v1"):
            raise ValueError(f"{d} is an EDM model folder ({CONFIG_NAME}): load it with EDMDenoiser.from_pretrained")
        if not (d / "unet").is_dir() or not (d / "scheduler").is_dir():
            raise FileNotFoundError(f"{d} is not a diffusers pipeline folder (needs unet/ and scheduler/)")
        unet_class = UNet2DModel
        unet_cfg = _read_json(d / "unet" / "config.json") if (d / "unet" / "config.json").is_file() else {}
        if isinstance(unet_cfg, dict) and unet_cfg.get("_class_name") == "UNet2DConditionModel":
            from diffusers import UNet2DConditionModel as unet_class  # a text-to-image pipeline's UNet
        unet = unet_class.from_pretrained(d / "unet", use_safetensors=True, low_cpu_mem_usage=False)
        sched = DDPMScheduler.from_pretrained(d / "scheduler")
        return cls.from_scheduler(unet, sched).eval()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this model makes."""
        c = self.unet.config
        size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
        return (c.in_channels, size, size)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose sigma equals ``sigma`` (clamped to the table)."""
        ls = sigma.float().log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        idx = torch.searchsorted(self.log_sigmas, ls).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        w = ((ls - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1).float() + w

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised estimate x0_hat of the VE sample x at noise level sigma."""
        s = _as_sigma(sigma, x)
        a = 1.0 / (1.0 + s**2)
        x_in = x * a.sqrt()
        t = self.sigma_to_t(s.flatten())
        kwargs = {}
        if cond is not None:
            # the signature, not __code__: diffusers wraps forward in decorators whose code has other names
            if "encoder_hidden_states" not in inspect.signature(self.unet.forward).parameters:
                raise ValueError(
                    f"this {type(self.unet).__name__} is unconditional and cannot take a prompt embedding (cond): "
                    "pass cond=None"
                )
            # token states (B, L, D) as they are (a text-to-image UNet); one vector (B, D) as a sequence of one
            states = cond if cond.ndim == 3 else cond[:, None, :]
            kwargs["encoder_hidden_states"] = states.to(self.unet.dtype)
        out = self.unet(x_in.to(self.unet.dtype), t, **kwargs).sample.float()
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            return a.sqrt() * x_in - (1 - a).sqrt() * out
        return out


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def load_denoiser(path_or_id: str | os.PathLike) -> nn.Module:
    """Load an EDM model folder (``ambient_config.json``, or the older ``config.json``) or a diffusers DDPM
    pipeline folder (``unet/`` and ``scheduler/``), local or a hub id."""
    d = resolve_model_dir(path_or_id)
    if _layout(d) == "diffusers":
        return DDPMAdapter.from_pretrained(d)
    return EDMDenoiser.from_pretrained(d)
