"""The sampling cutoff sigma_c: one small type that sampling, evaluation and the app all take.

``Cutoff(sigma_c, mode)``:

* ``handover``: the Ambient model denoises while sigma >= sigma_c, the baseline below. Its two ends
  are explicit: ``Cutoff.ambient_alone()`` (sigma_c = 0) and ``Cutoff.baseline_alone()`` (sigma_c = inf).
* ``truncate``: the Ambient model runs down to sigma_c and its one-step estimate D(x, sigma_c) is the
  output; no baseline takes part. sigma_c = 0 is the full Ambient run.

``check`` knows the Ambient model's regime: a high-noise-only network (trained only at sigma >= sigma_n)
may not be asked to denoise below sigma_n, so its cutoff must be at least sigma_n. ``Cutoff.default_for``
gives each kind of model the cutoff it was trained for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MODES = ("handover", "truncate")


@dataclass(frozen=True)
class Cutoff:
    """Where, on the sigma axis, the Ambient model hands over to the baseline (or stops)."""

    sigma_c: float = 0.0
    mode: str = "handover"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'handover' or 'truncate', not {self.mode!r}")
        s = self.sigma_c
        if not isinstance(s, int | float) or isinstance(s, bool) or math.isnan(s) or s < 0:
            raise ValueError(f"cutoff sigma_c must be a non-negative number, got {s!r}")
        if self.mode == "truncate" and math.isinf(s):
            raise ValueError("a truncated run needs a finite sigma_c (it stops there)")
        object.__setattr__(self, "sigma_c", float(s))

    # ------------------------------------------------------------------ the explicit ends
    @classmethod
    def ambient_alone(cls) -> Cutoff:
        """The Ambient model for every step."""
        return cls(0.0, "handover")

    @classmethod
    def baseline_alone(cls) -> Cutoff:
        """The baseline for every step."""
        return cls(math.inf, "handover")

    @property
    def is_ambient_alone(self) -> bool:
        """True when no step goes to the baseline."""
        return self.mode == "truncate" or self.sigma_c == 0.0

    @property
    def is_baseline_alone(self) -> bool:
        """True when no step goes to the Ambient model."""
        return self.mode == "handover" and math.isinf(self.sigma_c)

    @classmethod
    def default_for(cls, regime: str | None, sigma_n: float | None) -> Cutoff:
        """The cutoff a model was trained for: hand-over at sigma_n for a high-noise-only network, else alone."""
        if regime == "high":
            if not sigma_n:
                raise ValueError("a high-noise-only Ambient model must record its sigma_n")
            return cls(float(sigma_n), "handover")
        return cls.ambient_alone()

    # ------------------------------------------------------------------ checks
    def check(
        self,
        regime: str | None = None,
        sigma_n: float | None = None,
        sigma_min: float = 0.0,
        sigma_max: float = math.inf,
    ) -> Cutoff:
        """Raise ValueError when this cutoff asks a model for what it was not trained for; return self.

        A finite sigma_c above sigma_max is refused (``baseline_alone()`` says that explicitly); a
        high-noise-only Ambient model (``regime == "high"``) needs sigma_c >= sigma_n.
        """
        if math.isfinite(self.sigma_c) and self.sigma_c > sigma_max:
            raise ValueError(
                f"sigma_c = {self.sigma_c:g} lies above sigma_max = {sigma_max:g}; "
                "use Cutoff.baseline_alone() for the baseline alone"
            )
        if regime == "high" and sigma_n and self.sigma_c < float(sigma_n) * (1 - 1e-9):
            raise ValueError(
                f"the Ambient model was trained only at sigma >= sigma_n = {float(sigma_n):g}; "
                f"a cutoff of {self.sigma_c:g} would make it denoise below that: use sigma_c >= {float(sigma_n):g}"
            )
        if self.sigma_c and self.sigma_c < sigma_min and self.mode == "handover":
            raise ValueError(f"sigma_c = {self.sigma_c:g} lies below sigma_min = {sigma_min:g}; use ambient_alone()")
        return self

    # ------------------------------------------------------------------ use
    def owner(self, sigma: float) -> str:
        """Which model denoises at this sigma: 'ambient' or 'baseline'."""
        if self.mode == "truncate":
            return "ambient"
        return "ambient" if sigma >= self.sigma_c else "baseline"

    def schedule(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The sigmas a run evaluates: all of them (hand-over), or those above sigma_c then sigma_c (truncate)."""
        if self.mode == "handover" or self.sigma_c == 0.0:
            return sigmas
        if self.sigma_c > float(sigmas[0]):
            raise ValueError(f"truncating at {self.sigma_c:g} lies above the schedule's start {float(sigmas[0]):g}")
        keep = sigmas[sigmas > self.sigma_c]
        return torch.cat([keep, keep.new_tensor([self.sigma_c])])

    def denoiser(
        self, ambient: Callable[..., torch.Tensor], baseline: Callable[..., torch.Tensor] | None
    ) -> Callable[..., torch.Tensor]:
        """The denoiser this cutoff runs: one model, or a hand-over router between the two."""
        if self.mode == "truncate":
            if baseline is not None:
                raise ValueError("a truncated run uses the Ambient model alone: pass baseline=None")
            return ambient
        if self.is_ambient_alone:
            return ambient
        if baseline is None:
            raise ValueError(f"a hand-over at sigma_c = {self.sigma_c:g} needs a baseline model")
        if self.is_baseline_alone:
            return baseline
        return HandOverDenoiser(ambient, baseline, self.sigma_c)

    def label(self) -> str:
        """What this cutoff does, in words."""
        if self.mode == "truncate":
            if self.sigma_c == 0.0:
                return "the full Ambient run"
            return f"the Ambient run stopped at sigma = {self.sigma_c:.3g}, showing its estimate x0_hat"
        if self.is_ambient_alone:
            return "the Ambient model alone"
        if self.is_baseline_alone:
            return "the baseline alone"
        return f"Ambient for sigma >= {self.sigma_c:.3g}, baseline below"

    def to_json(self) -> float | None:
        """sigma_c for a JSON row: a number, or None for the baseline alone (JSON has no infinity)."""
        return None if math.isinf(self.sigma_c) else self.sigma_c

    @classmethod
    def from_row(cls, row: dict[str, Any], sigma_max: float | None = None) -> Cutoff:
        """The hand-over cutoff of a sweep row; rows written before this type spelled the baseline alone as
        a sigma_c past sigma_max (1.01 x sigma_max) or as null."""
        sc = row.get("sigma_c")
        if sc is None or (sigma_max is not None and float(sc) > sigma_max):
            return cls.baseline_alone()
        return cls(float(sc), "handover")


class HandOverDenoiser(nn.Module):
    """Routes each row by its sigma: ``high`` for sigma >= sigma_c, ``low`` below."""

    def __init__(self, high: Callable[..., torch.Tensor], low: Callable[..., torch.Tensor], sigma_c: float):
        super().__init__()
        self.high, self.low, self.sigma_c = high, low, Cutoff(sigma_c).sigma_c

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Call the model that owns each row's sigma (one call when the whole batch has one owner)."""
        s = torch.as_tensor(sigma, device=x.device).flatten()
        if s.numel() == 1:
            return (self.high if float(s) >= self.sigma_c else self.low)(x, sigma, cond)
        if s.numel() != len(x):
            raise ValueError(f"got {s.numel()} sigmas for a batch of {len(x)}")
        high = s >= self.sigma_c
        if bool(high.all()) or not bool(high.any()):
            return (self.high if bool(high.all()) else self.low)(x, sigma, cond)
        out = torch.empty_like(x)
        for mask, model in ((high, self.high), (~high, self.low)):
            c = None if cond is None else cond[mask]
            out[mask] = model(x[mask], s[mask], c).to(out.dtype)
        return out
