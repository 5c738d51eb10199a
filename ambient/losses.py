"""Training losses: plain EDM (baseline) and Ambient (fixed noisy copies above sigma_n).

Both return the per-element loss; the caller averages. ``D`` is any denoiser ``D(x, sigma, cond)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ambient.config import P_MEAN, P_STD

SIGMA_DATA = 0.5

Denoiser = Callable[..., torch.Tensor]


def loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigmas(
    n: int,
    generator: torch.Generator | None = None,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    sigma_lo: float | None = None,
    sigma_hi: float | None = None,
) -> torch.Tensor:
    """Draw n training noise levels, ln(sigma) ~ Normal(p_mean, p_std), optionally truncated to [lo, hi]."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if sigma_lo is not None and sigma_hi is not None and not 0 < sigma_lo < sigma_hi:
        raise ValueError(f"need 0 < sigma_lo < sigma_hi, got {sigma_lo}, {sigma_hi}")

    def cdf(s: float | None, default: float) -> float:
        if s is None:
            return default
        return 0.5 * (1 + math.erf((math.log(s) - p_mean) / (p_std * math.sqrt(2))))

    lo, hi = cdf(sigma_lo, 0.0), cdf(sigma_hi, 1.0)
    u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    u = u.clamp(1e-12, 1 - 1e-12)
    sigma = (p_mean + p_std * torch.special.ndtri(u)).exp().float()
    if sigma_lo is not None:
        sigma = sigma.clamp(min=sigma_lo)
    if sigma_hi is not None:
        sigma = sigma.clamp(max=sigma_hi)
    return sigma


def fixed_noise(indices: Sequence[int] | torch.Tensor, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """The one fixed noise field eta_i per training image i, a function of (seed, i) alone.

    Identical in every epoch, whatever the batch order or the number of data-loader workers.
    """
    idx = torch.as_tensor(indices).flatten().tolist()
    out = torch.empty(len(idx), *shape)
    g = torch.Generator()
    for k, i in enumerate(idx):
        if int(i) < 0:
            raise ValueError(f"image index must be non-negative, got {i}")
        g.manual_seed((int(seed) * 1_000_003 + int(i) * 7919 + 0x5EED) % (2**63 - 1))
        out[k] = torch.randn(*shape, generator=g)
    return out


def _bcast(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x)


def edm_loss(
    D: Denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    cond: torch.Tensor | None = None,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """Baseline: lambda(sigma) * (D(x0 + sigma eps, sigma) - x0)^2, per element."""
    s = _bcast(sigma, x0)
    x = x0 + s * noise
    return loss_weight(s, sigma_data) * (D(x, sigma, cond) - x0) ** 2


def ambient_loss(
    D: Denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    sigma_n: float,
    eta: torch.Tensor,
    noise: torch.Tensor,
    cond: torch.Tensor | None = None,
    sigma_data: float = SIGMA_DATA,
    high_weight: str = "edm",
    max_high_weight: float = 100.0,
) -> torch.Tensor:
    """Ambient: clean EDM loss below sigma_n; above it, only the fixed noisy copy x_tn is seen and scored.

    For sigma >= sigma_n: x = x_tn + sqrt(sigma^2 - sigma_n^2) eps with x_tn = x0 + sigma_n eta, and
    x_tn_hat = ((sigma^2 - sigma_n^2) / sigma^2) D(x, sigma) + (sigma_n^2 / sigma^2) x is scored
    against x_tn with EDM's weight (``high_weight="edm"``, the reference code's choice), or with EDM's
    weight times sigma^4 / (sigma^2 - sigma_n^2)^2 clamped at ``max_high_weight`` (``"ambient4"``),
    which scores the implied clean estimate D on EDM's scale.
    """
    if not sigma_n > 0:
        raise ValueError(f"sigma_n must be positive, got {sigma_n}")
    if high_weight not in ("edm", "ambient4"):
        raise ValueError(f"high_weight must be 'edm' or 'ambient4', not {high_weight!r}")
    s = _bcast(sigma, x0)
    sn2 = float(sigma_n) ** 2
    high = s >= sigma_n
    x_tn = x0 + sigma_n * eta
    x_high = x_tn + (s**2 - sn2).clamp(min=0).sqrt() * noise
    x = torch.where(high, x_high, x0 + s * noise)
    d = D(x, sigma, cond)
    x_tn_hat = ((s**2 - sn2) / s**2) * d + (sn2 / s**2) * x
    pred = torch.where(high, x_tn_hat, d)
    target = torch.where(high, x_tn, x0)
    w = loss_weight(s, sigma_data)
    if high_weight == "ambient4":
        extra = (s**4 / (s**2 - sn2).clamp(min=1e-12) ** 2).clamp(max=max_high_weight)
        w = torch.where(high, w * extra, w)
    return w * (pred - target) ** 2
