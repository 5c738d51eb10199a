"""Samplers as plain functions over a denoiser ``D(x, sigma, cond)`` and an explicit tensor of sigmas.

The noise cutoff ``sigma_c`` comes in two modes: *hand-over* (``HandOverDenoiser``: the Ambient
model for sigma >= sigma_c, the baseline below) and *truncate* (``truncate_sigmas``: stop at
sigma_c and return the Ambient model's one-step estimate ``D(x, sigma_c)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ambient.denoiser import SIGMA_MAX, SIGMA_MIN

Callback = Callable[[dict[str, Any]], None]


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule: n decreasing sigmas from sigma_max to sigma_min, then a final 0."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of steps must be a positive integer, got {n!r}")
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    if n == 1:
        sig = torch.tensor([sigma_max], dtype=torch.float64)
    return torch.cat([sig, sig.new_zeros(1)]).float()


def truncate_sigmas(sigmas: torch.Tensor, sigma_c: float) -> torch.Tensor:
    """The schedule cut at sigma_c: every sigma above it, then sigma_c itself (no final 0)."""
    _check_cutoff(sigma_c)
    keep = sigmas[sigmas > sigma_c]
    if len(keep) == 0:
        return sigmas.new_tensor([float(sigmas[0])])
    return torch.cat([keep, keep.new_tensor([sigma_c])])


def _check_cutoff(sigma_c: float) -> None:
    if not isinstance(sigma_c, int | float) or isinstance(sigma_c, bool) or math.isnan(sigma_c) or sigma_c < 0:
        raise ValueError(f"cutoff sigma_c must be a non-negative number, got {sigma_c!r}")


def initial_noise(seeds: Sequence[int], shape: Sequence[int], sigma: float = SIGMA_MAX) -> torch.Tensor:
    """sigma * N(0, I) with one generator per seed: the same seed gives the same start in any batch."""
    out = torch.empty(len(seeds), *shape)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s) % 2**64)
        out[i] = torch.randn(*shape, generator=g)
    return out * sigma


class HandOverDenoiser(nn.Module):
    """Routes each call by sigma: ``high`` for sigma >= sigma_c, ``low`` below."""

    def __init__(self, high: Callable[..., torch.Tensor], low: Callable[..., torch.Tensor], sigma_c: float):
        super().__init__()
        _check_cutoff(sigma_c)
        self.high, self.low, self.sigma_c = high, low, float(sigma_c)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Call the model that owns this sigma."""
        s = float(torch.as_tensor(sigma).flatten()[0])
        return (self.high if s >= self.sigma_c else self.low)(x, sigma, cond)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance: D_u + scale * (D_c - D_u), batched in one call; scale 1 = conditional only."""

    def __init__(self, inner: Callable[..., torch.Tensor], scale: float):
        super().__init__()
        if not math.isfinite(scale) or not 0 <= scale <= 20:
            raise ValueError(f"guidance scale must be in [0, 20], got {scale!r}")
        self.inner, self.scale = inner, float(scale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Guided estimate; falls back to one call when there is no condition or scale is 1."""
        if cond is None or self.scale == 1.0 or not bool(cond.abs().sum() > 0):
            return self.inner(x, sigma, cond)
        uncond = torch.zeros_like(cond)
        s = torch.as_tensor(sigma)
        s2 = torch.cat([s.expand(len(x)), s.expand(len(x))]) if s.ndim else s
        d = self.inner(torch.cat([x, x]), s2, torch.cat([cond, uncond]))
        d_c, d_u = d.chunk(2)
        return d_u + self.scale * (d_c - d_u)


@torch.no_grad()
def sample_euler(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic Euler steps of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoiser(x, s, cond)
        if callback is not None:
            callback({"i": i, "sigma": float(s), "x": x, "denoised": x0})
        x = x + (x - x0) / s * (s_next - s)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """EDM Algorithm 2 (deterministic Heun): a second-order correction on every step but one to sigma = 0."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoiser(x, s, cond)
        if callback is not None:
            callback({"i": i, "sigma": float(s), "x": x, "denoised": x0})
        d = (x - x0) / s
        x_next = x + d * (s_next - s)
        if s_next > 0:
            d_next = (x_next - denoiser(x_next, s_next, cond)) / s_next
            x_next = x + (d + d_next) / 2 * (s_next - s)
        x = x_next
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun}


def _device_of(model: Callable[..., torch.Tensor]) -> torch.device:
    """The device of a module's parameters (the CPU for plain callables)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def nfe(steps: int, sampler: str = "heun") -> int:
    """Network evaluations of a full schedule of ``steps`` sigmas (Heun: 2 per step, 1 for the last)."""
    return 2 * steps - 1 if sampler == "heun" else steps


@torch.no_grad()
def sample(
    ambient: Callable[..., torch.Tensor],
    baseline: Callable[..., torch.Tensor] | None,
    seeds: Sequence[int],
    shape: Sequence[int],
    cond: torch.Tensor | None = None,
    steps: int = 18,
    sigma_c: float = 0.0,
    mode: str = "handover",
    sampler: str = "heun",
    guidance: float = 1.0,
    callback: Callback | None = None,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
) -> torch.Tensor:
    """Generate from one noise start per seed with the cutoff applied; returns images in [-1, 1].

    mode ``handover``: ``ambient`` for sigma >= sigma_c, ``baseline`` below (sigma_c <= sigma_min:
    Ambient alone; sigma_c > sigma_max: baseline alone). mode ``truncate``: stop at sigma_c and
    return ``ambient``'s estimate D(x, sigma_c). Pass ``baseline=None`` to sample one model alone.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, not {sampler!r}")
    if mode not in ("handover", "truncate"):
        raise ValueError(f"mode must be 'handover' or 'truncate', not {mode!r}")
    _check_cutoff(sigma_c)
    sigmas = karras_sigmas(steps, sigma_min, sigma_max)
    device = _device_of(ambient)
    x = initial_noise(seeds, shape, float(sigmas[0])).to(device)  # drawn on the CPU: identical on any device
    sigmas = sigmas.to(device)
    if cond is not None:
        cond = cond.to(device)
    if cond is not None and len(cond) != len(seeds):
        raise ValueError(f"cond has {len(cond)} rows for {len(seeds)} seeds")
    if mode == "truncate":
        d = CFGDenoiser(ambient, guidance) if guidance != 1.0 else ambient
        sig = truncate_sigmas(sigmas, sigma_c)
        x = SAMPLERS[sampler](d, x, sig, cond, callback)
        if float(sig[-1]) <= 0:  # cut at 0: the full run, whose last step already is D(x, sigma_min)
            return x.clamp(-1, 1)
        return d(x, sig[-1], cond).clamp(-1, 1)
    model = ambient if baseline is None else HandOverDenoiser(ambient, baseline, sigma_c)
    d = CFGDenoiser(model, guidance) if guidance != 1.0 else model
    return SAMPLERS[sampler](d, x, sigmas, cond, callback).clamp(-1, 1)
