"""Ambient Explorer: Ambient Diffusion vs. baseline EDM, memorization made visible."""

from ambient.cutoff import HandOverDenoiser
from ambient.denoiser import DDPMAdapter, EDMDenoiser, build_unet
from ambient.losses import ambient_loss, edm_loss, fixed_noise
from ambient.sampling import (
    CFGDenoiser,
    initial_noise,
    karras_sigmas,
    sample,
    sample_euler,
    sample_heun,
)

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
