"""Denoisers with one face: ``D(x, sigma, cond=None) -> x0_hat`` in EDM's variance-exploding space.

``EDMDenoiser`` wraps a raw network with EDM preconditioning (it owns everything about sigma);
``DDPMAdapter`` presents a diffusers DDPM-style UNet plus its ``alphas_cumprod`` through the same
interface, so any pair of models can go through the same samplers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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


class CondUNet(nn.Module):
    """Raw network F(x, c_noise, cond): a diffusers UNet2DModel plus a projection of the text embedding.

    The text embedding is projected to the UNet's time-embedding width and added to it (diffusers'
    ``class_embed_type="identity"``). A zero vector is the unconditional (empty prompt) input. The
    network knows nothing of sigma beyond the scalar ``c_noise`` it is given.
    """

    def __init__(self, unet_config: dict[str, Any], cond_dim: int = 0, time_scale: float = 250.0):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet_config = dict(unet_config)
        self.cond_dim = int(cond_dim)
        self.time_scale = float(time_scale)
        extra = {"class_embed_type": "identity"} if self.cond_dim else {}
        self.unet = UNet2DModel(**self.unet_config, **extra)
        if self.cond_dim:
            emb_dim = self.unet_config["block_out_channels"][0] * 4
            self.cond_proj = nn.Linear(self.cond_dim, emb_dim)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return {"unet": self.unet_config, "cond_dim": self.cond_dim, "time_scale": self.time_scale}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the UNet to the already scaled input ``x`` at noise embedding ``c_noise``."""
        labels = None
        if self.cond_dim:
            if cond is None:
                cond = x.new_zeros(x.shape[0], self.cond_dim)
            labels = self.cond_proj(cond.to(x.dtype))
        return self.unet(x, c_noise * self.time_scale, class_labels=labels).sample


def _as_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample sigma to shape (B, 1, 1, 1), float32."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def _as_os_error(e: BaseException, where: Path) -> BaseException:
    """safetensors reports a full or read-only disk as ``SafetensorError('... (os error 28)')``: the OSError it is."""
    if not isinstance(e, OSError) and type(e).__name__ == "SafetensorError":
        m = re.search(r"os error (\d+)", str(e))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code), str(where))
    return e


def _atomic_write_dir(target: Path, write: Any) -> None:
    """Write a folder through a temporary sibling and rename it into place; on any error the previous folder
    stays (or is put back) where it was and the temporary one is removed. I/O errors are raised as ``OSError``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        umask = os.umask(0o022)
        os.umask(umask)
        for f in tmp.iterdir():  # mkdtemp makes 0700 and safetensors 0600: use the usual umask modes
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old.exists():
            shutil.rmtree(old)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        old = target.with_name(f".{target.name}.old")
        if old.exists() and not target.exists():
            os.replace(old, target)  # put the previous folder back
        err = _as_os_error(e, target)
        if err is not e:
            raise err from e
        raise


def resolve_model_dir(path_or_id: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id, downloaded (needs internet)."""
    p = Path(path_or_id)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{p} is a file; expected a model folder holding {CONFIG_NAME}")
        return p
    s = str(path_or_id)
    if s.count("/") != 1 or s.startswith((".", "/")):
        raise FileNotFoundError(f"model folder {s!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{s!r} is not a local folder and HF_HUB_OFFLINE=1 forbids a hub download")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(s, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.md"]))
    except Exception as e:  # network errors, unknown repos
        raise FileNotFoundError(f"could not fetch {s!r} from the hub ({type(e).__name__}: {e})") from e


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
        cfg = self.net.unet_config
        return (cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])

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
        """The JSON config written beside the weights."""
        return {"type": "edm", "network": self.net.config(), "sigma_data": self.sigma_data, "meta": self.meta}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json and model.safetensors to ``path`` atomically."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        cfg = self.config()

        def write(tmp: Path) -> None:
            save_file(state, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))

        try:
            _atomic_write_dir(Path(path), write)
        except OSError as e:
            raise OSError(
                e.errno, f"could not save the model to {path} ({e}); any model folder already there is intact"
            ) from e

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EDMDenoiser:
        """A randomly initialised denoiser from a config dict."""
        if cfg.get("type", "edm") != "edm":
            raise ValueError(f"config type {cfg.get('type')!r} is not an EDM denoiser")
        net_cfg = cfg["network"]
        net = CondUNet(net_cfg["unet"], net_cfg.get("cond_dim", 0), net_cfg.get("time_scale", 250.0))
        return cls(net, cfg.get("sigma_data", 0.5), cfg.get("meta"))

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> EDMDenoiser:
        """Load from a folder written by ``save_pretrained`` (or a hub id with the same files)."""
        d = resolve_model_dir(path_or_id)
        cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{d} has no {p.name}; a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
        try:
            model = cls.from_config(cfg)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{cfg_path} is not a valid model config: {e!r}") from e
        try:
            state = load_file(str(w_path))
        except Exception as e:
            raise ValueError(f"{w_path} is not a readable safetensors file: {e}") from e
        try:
            model.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = str(e).splitlines()
            raise ValueError(f"{w_path} does not match {cfg_path}: {' '.join(msg[:3])[:400]}") from e
        return model.eval()


def build_unet(
    cond_dim: int = 0,
    sample_size: int = 32,
    channels: int = 1,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    layers_per_block: int = 1,
    meta: dict[str, Any] | None = None,
    time_scale_shift: str = "default",
    dropout: float = 0.0,
) -> EDMDenoiser:
    """A fresh EDM denoiser around the project's small UNet."""
    cfg = default_unet_config(sample_size, channels, block_out_channels, layers_per_block, time_scale_shift, dropout)
    return EDMDenoiser(CondUNet(cfg, cond_dim), 0.5, meta)


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
        if not (d / "unet").is_dir() or not (d / "scheduler").is_dir():
            raise FileNotFoundError(f"{d} is not a diffusers pipeline folder (needs unet/ and scheduler/)")
        unet = UNet2DModel.from_pretrained(d / "unet", use_safetensors=True)
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
        if cond is not None and "encoder_hidden_states" in self.unet.forward.__code__.co_varnames:
            kwargs["encoder_hidden_states"] = cond[:, None, :]
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
    """Load either an EDM model folder or a diffusers DDPM pipeline folder."""
    d = Path(path_or_id)
    if d.is_dir() and (d / "unet").is_dir():
        return DDPMAdapter.from_pretrained(d)
    return EDMDenoiser.from_pretrained(path_or_id)
