"""Samplers as plain functions over a denoiser ``D(x, sigma, cond)`` and an explicit tensor of sigmas.

The noise cutoff is an ``ambient.cutoff.Cutoff``: *hand-over* (``HandOverDenoiser``: the Ambient
model for sigma >= sigma_c, the baseline below) or *truncate* (a slice of the sigmas: stop at sigma_c
and return the Ambient model's one-step estimate ``D(x, sigma_c)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ambient.cutoff import Cutoff
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
    return Cutoff(sigma_c, "truncate").schedule(sigmas)


def initial_noise(seeds: Sequence[int], shape: Sequence[int], sigma: float = SIGMA_MAX) -> torch.Tensor:
    """sigma * N(0, I) with one generator per seed: the same seed gives the same start in any batch."""
    out = torch.empty(len(seeds), *shape)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s) % 2**64)
        out[i] = torch.randn(*shape, generator=g)
    return out * sigma


class BandDenoiser(nn.Module):
    """Routes each call to the model that owns its noise band: ``bands`` is [(sigma_lo, model), ...] from the
    highest band down, each model denoising sigma >= its sigma_lo and below the band above; the last sigma_lo
    must be 0. A hand-over is the two-band case; three bands show which noise range decides copying."""

    def __init__(self, bands: Sequence[tuple[float, Callable[..., torch.Tensor]]]):
        super().__init__()
        los = [float(lo) for lo, _ in bands]
        if not bands or los[-1] != 0.0 or any(a <= b for a, b in zip(los, los[1:], strict=False)):
            raise ValueError(f"bands need strictly decreasing lower edges ending at 0, got {los}")
        self.los, self.models = los, [m for _, m in bands]

    def owner(self, sigma: float) -> int:
        """Index of the band that owns this sigma."""
        return next(i for i, lo in enumerate(self.los) if sigma >= lo)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Call the model of this sigma's band (one sigma per call, as the samplers make)."""
        s = torch.as_tensor(sigma).flatten()
        if s.numel() != 1 and not bool((s == s[0]).all()):
            raise ValueError("BandDenoiser takes one sigma per call")
        return self.models[self.owner(float(s[0]))](x, sigma, cond)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance: D_u + scale * (D_c - D_u), batched in one call; scale 1 = conditional only.

    The unconditional input is ``uncond`` (one row, or one per image: a text-to-image model's empty-prompt
    token states) or, when None, a zero vector (the project's pixel models: a zero embedding is the empty prompt).
    """

    def __init__(self, inner: Callable[..., torch.Tensor], scale: float, uncond: torch.Tensor | None = None):
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ValueError(f"guidance scale must be a finite number in [0, 20], got {scale!r}")
        if not 0 <= scale <= 20:
            raise ValueError(f"guidance scale must be in [0, 20], got {scale!r}")
        if uncond is not None and (not isinstance(uncond, torch.Tensor) or uncond.ndim < 2):
            raise ValueError("uncond must be a tensor with a batch dimension (1 or B rows)")
        self.inner, self.scale, self.uncond = inner, float(scale), uncond

    def _uncond(self, cond: torch.Tensor) -> torch.Tensor:
        if self.uncond is None:
            return torch.zeros_like(cond)
        u = self.uncond.to(cond.device, cond.dtype)
        if u.shape[1:] != cond.shape[1:] or len(u) not in (1, len(cond)):
            raise ValueError(f"uncond {tuple(u.shape)} does not fit cond {tuple(cond.shape)}")
        return u.expand_as(cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Guided estimate; falls back to one call when there is no condition or scale is 1."""
        if cond is None or self.scale == 1.0:
            return self.inner(x, sigma, cond)
        if self.uncond is None and not bool(cond.abs().sum() > 0):
            return self.inner(x, sigma, cond)
        uncond = self._uncond(cond)
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


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
    history: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022): one network evaluation per sigma, second order from the previous estimate.

    In t = -log(sigma) the step from s to s_next is exact for a constant estimate; the multistep correction
    extrapolates the estimate linearly from the last two. The step to sigma = 0 returns the estimate itself.
    ``history`` (the sigma and estimate of the step before ``sigmas[0]``) resumes a run midway exactly.
    """
    prev_sigma, old = history if history is not None else (None, None)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoiser(x, s, cond)
        if callback is not None:
            callback({"i": i, "sigma": float(s), "x": x, "denoised": x0})
        if float(s_next) == 0:
            x = x0
        else:
            h = torch.log(s / s_next)
            d = x0
            if old is not None:
                r = torch.log((sigmas[i - 1] if i else prev_sigma) / s) / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old
            x = (s_next / s) * x - torch.expm1(-h) * d
        old = x0
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}


def autocast(device: str | torch.device = "cpu", bf16: bool = False) -> torch.autocast:
    """The one precision policy for sampling: bf16 autocast on a CPU that has it (asked for), else full precision.

    GPUs sample in the models' own precision here: the pairs are small, and fp32 keeps the app's images equal
    to the evaluation's.
    """
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=bool(bf16) and dev == "cpu")


def _device_of(model: Callable[..., torch.Tensor]) -> torch.device:
    """The device of a module's parameters (the CPU for plain callables)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def nfe(steps: int, sampler: str = "heun") -> int:
    """Network evaluations of a full schedule of ``steps`` sigmas (Heun: 2 per step, 1 for the last; else 1 each)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, not {sampler!r}")
    return 2 * steps - 1 if sampler == "heun" else steps


@torch.no_grad()
def sample(
    ambient: Callable[..., torch.Tensor],
    baseline: Callable[..., torch.Tensor] | None,
    seeds: Sequence[int],
    shape: Sequence[int],
    cond: torch.Tensor | None = None,
    steps: int = 18,
    sigma_c: float | Cutoff = 0.0,
    mode: str | None = None,
    sampler: str = "heun",
    guidance: float = 1.0,
    callback: Callback | None = None,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    uncond: torch.Tensor | None = None,
    clamp: bool = True,
) -> torch.Tensor:
    """Generate from one noise start per seed with the cutoff applied; returns images in [-1, 1].

    ``sigma_c`` is a ``Cutoff`` (or a number, with ``mode`` 'handover' or 'truncate'). Hand-over:
    ``ambient`` for sigma >= sigma_c, ``baseline`` below; ``Cutoff.ambient_alone()`` (sigma_c = 0) and
    ``Cutoff.baseline_alone()`` are its ends. Truncate: stop at sigma_c and return ``ambient``'s estimate
    D(x, sigma_c), with ``baseline=None``. To sample one model alone, pass it with ``baseline=None``.
    ``uncond`` is the unconditional input of classifier-free guidance (default: zeros); ``clamp=False``
    returns the samples unclamped (latents, which are decoded afterwards).
    """
    cutoff = as_cutoff(sigma_c, mode)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, not {sampler!r}")
    cutoff.check(sigma_max=sigma_max)
    model = cutoff.denoiser(ambient, baseline)
    sigmas = karras_sigmas(steps, sigma_min, sigma_max)
    device = _device_of(baseline if cutoff.is_baseline_alone else ambient)
    x = initial_noise(seeds, shape, float(sigmas[0])).to(device)  # drawn on the CPU: identical on any device
    sigmas = sigmas.to(device)
    if cond is not None:
        cond = cond.to(device)
    if cond is not None and len(cond) != len(seeds):
        raise ValueError(f"cond has {len(cond)} rows for {len(seeds)} seeds")
    d = CFGDenoiser(model, guidance, uncond) if guidance != 1.0 else model
    sig = cutoff.schedule(sigmas)
    x = SAMPLERS[sampler](d, x, sig, cond, callback)
    if float(sig[-1]) > 0:  # truncated: the output is the estimate at sigma_c
        x = d(x, sig[-1], cond)
    return x.clamp(-1, 1) if clamp else x


def as_cutoff(sigma_c: float | Cutoff, mode: str | None = None) -> Cutoff:
    """A ``Cutoff`` from a number and a mode (default hand-over), or the ``Cutoff`` itself."""
    if isinstance(sigma_c, Cutoff):
        if mode is not None and mode != sigma_c.mode:
            raise ValueError(f"mode {mode!r} contradicts the cutoff's mode {sigma_c.mode!r}")
        return sigma_c
    return Cutoff(sigma_c, mode or "handover")
