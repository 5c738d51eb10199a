"""Ambient Explorer: Ambient Diffusion vs. baseline EDM, memorization made visible.

The names below are imported on first use, so that ``import ambient`` (and ``ambient --help``) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ambient.cutoff import HandOverDenoiser
    from ambient.denoiser import DDPMAdapter, EDMDenoiser, build_unet
    from ambient.losses import ambient_loss, edm_loss, fixed_noise
    from ambient.sampling import CFGDenoiser, initial_noise, karras_sigmas, sample, sample_euler, sample_heun

# public name -> the module that defines it
_EXPORTS = {
    "CFGDenoiser": "ambient.sampling",
    "DDPMAdapter": "ambient.denoiser",
    "EDMDenoiser": "ambient.denoiser",
    "HandOverDenoiser": "ambient.cutoff",
    "ambient_loss": "ambient.losses",
    "build_unet": "ambient.denoiser",
    "edm_loss": "ambient.losses",
    "fixed_noise": "ambient.losses",
    "initial_noise": "ambient.sampling",
    "karras_sigmas": "ambient.sampling",
    "sample": "ambient.sampling",
    "sample_euler": "ambient.sampling",
    "sample_heun": "ambient.sampling",
}
__all__ = [
    "CFGDenoiser",
    "DDPMAdapter",
    "EDMDenoiser",
    "HandOverDenoiser",
    "ambient_loss",
    "build_unet",
    "edm_loss",
    "fixed_noise",
    "initial_noise",
    "karras_sigmas",
    "sample",
    "sample_euler",
    "sample_heun",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ambient' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazily imported ones included."""
    return sorted({*globals(), *_EXPORTS})
