"""The Ambient model's trajectory, computed once and reused for every cutoff (what makes the slider live).

A hand-over at sigma_c runs the Ambient model for every step whose evaluations all lie at sigma >= sigma_c, and
those steps do not depend on sigma_c. So one Ambient-alone run, with its state at every sigma, serves every
position of the slider: a new cutoff restarts from the state of the first step that touches sigma < sigma_c and
runs only the rest (``hand_over``); a truncated run is a slice of it plus one or two steps (``truncate``). Both give
what ``ambient.sampling.sample`` gives from the same start, to the bit (the tests check it for every sampler).

``TrajectoryCache`` keeps recent trajectories (per pair, seeds, prompt, steps, guidance and sampler), evicting the
oldest first once a byte budget is spent.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from ambient.cutoff import Cutoff, HandOverDenoiser
from ambient.sampling import SAMPLERS, Callback

Denoiser = Callable[..., torch.Tensor]


@dataclass
class Trajectory:
    """One sampler run: its sigmas, the state x at each of them (the last is the unclamped output) and the
    estimate D(x, sigma) of each step's first evaluation."""

    sigmas: torch.Tensor
    states: list[torch.Tensor]
    denoised: list[torch.Tensor]
    sampler: str

    @property
    def output(self) -> torch.Tensor:
        """The run's result (unclamped)."""
        return self.states[-1]

    def nbytes(self) -> int:
        """Memory held by its tensors."""
        return sum(t.numel() * t.element_size() for t in (*self.states, *self.denoised, self.sigmas))


def record(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: torch.Tensor | None = None, sampler: str = "heun"
) -> Trajectory:
    """Run ``sampler`` from ``x`` over ``sigmas`` and keep every state and estimate."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, not {sampler!r}")
    states: list[torch.Tensor] = []
    denoised: list[torch.Tensor] = []

    def keep(info: dict) -> None:
        states.append(info["x"])
        denoised.append(info["denoised"])

    out = SAMPLERS[sampler](denoiser, x, sigmas, cond, keep)
    return Trajectory(sigmas, [*states, out], denoised, sampler)


def first_step_below(sigmas: torch.Tensor, sigma_c: float, sampler: str) -> int:
    """Index of the first step that evaluates the network at a sigma below sigma_c (len(sigmas) - 1 if none).

    Heun's step i evaluates at sigma_i and, unless it ends at 0, at sigma_{i+1}; Euler's and DPM-Solver++'s only at
    sigma_i (DPM-Solver++ also reuses step i-1's estimate, which the trajectory holds).
    """
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s < sigma_c or (sampler == "heun" and 0 < s_next < sigma_c):
            return i
    return n


def _resume(
    traj: Trajectory,
    model: Denoiser,
    start: int,
    sigmas: torch.Tensor,
    cond: torch.Tensor | None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run the trajectory's sampler over ``sigmas`` (which begin at traj.sigmas[start]) from the recorded state."""
    fn = SAMPLERS[traj.sampler]
    if traj.sampler == "dpmpp_2m" and start > 0:  # the multistep solver carries the previous step's estimate
        history = (traj.sigmas[start - 1], traj.denoised[start - 1])
        return fn(model, traj.states[start], sigmas, cond, callback, history=history)
    return fn(model, traj.states[start], sigmas, cond, callback)


def hand_over(
    traj: Trajectory,
    ambient: Denoiser,
    baseline: Denoiser | None,
    sigma_c: float,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The hand-over at ``sigma_c`` from the Ambient model's recorded trajectory: only the steps that reach below
    sigma_c are run (``ambient`` above it, ``baseline`` below). Unclamped, like ``traj.output``. ``callback`` hears
    the steps run, numbered from the first of them."""
    cutoff = Cutoff(sigma_c, "handover")
    cutoff.check(sigma_max=float(traj.sigmas[0]))
    start = first_step_below(traj.sigmas, cutoff.sigma_c, traj.sampler)
    if start == len(traj.sigmas) - 1:
        return traj.output
    if baseline is None:
        raise ValueError(f"a hand-over at sigma_c = {cutoff.sigma_c:g} needs a baseline model")
    model = baseline if start == 0 and cutoff.is_baseline_alone else HandOverDenoiser(ambient, baseline, cutoff.sigma_c)
    return _resume(traj, model, start, traj.sigmas[start:], cond, callback)


def truncate(
    traj: Trajectory,
    ambient: Denoiser,
    sigma_c: float,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The Ambient run stopped at ``sigma_c`` and its estimate D(x, sigma_c) there, from the recorded trajectory
    (``callback`` hears the one or two steps run)."""
    cutoff = Cutoff(sigma_c, "truncate")
    if cutoff.sigma_c == 0.0:
        return traj.output
    sig = cutoff.schedule(traj.sigmas)  # every sigma above sigma_c, then sigma_c
    start = len(sig) - 2  # the last step (into sigma_c) is the first that differs from the full run
    x = _resume(traj, ambient, start, sig[start:], cond, callback)
    return ambient(x, sig[-1], cond)


class TrajectoryCache:
    """Recent trajectories by key, oldest evicted first once ``max_bytes`` is spent; safe across threads."""

    def __init__(self, max_bytes: int = 256 << 20):
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, not {max_bytes!r}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Trajectory] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, make: Callable[[], Trajectory]) -> Trajectory:
        """The cached trajectory of ``key``, or ``make()``'s, which is kept while it fits the budget."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        traj = make()  # outside the lock: other requests go on meanwhile
        size = traj.nbytes()
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = traj
                self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes()
        return traj

    @property
    def nbytes(self) -> int:
        """Bytes held now (at most ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Drop every trajectory."""
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _budget_from_env() -> int:
    """The shared cache's budget: ``AMBIENT_TRAJECTORY_CACHE_MB`` MiB (default 128; 0 turns recording off)."""
    raw = os.environ.get("AMBIENT_TRAJECTORY_CACHE_MB", "128")
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"AMBIENT_TRAJECTORY_CACHE_MB must be a number of MiB, not {raw!r}") from None
    if not mb >= 0:
        raise ValueError(f"AMBIENT_TRAJECTORY_CACHE_MB must be >= 0, not {raw!r}")
    return int(mb * (1 << 20))


DEFAULT_CACHE = TrajectoryCache(_budget_from_env())  # the process's trajectories, shared by every pair
