"""ONE model pair type, pixel or latent: the app, ``ambient.evaluate``, the grid and the scripts all use it.

A ``Pair`` is an Ambient model and a baseline trained on the same images, behind three interfaces in the style of
k-diffusion's wrappers (one wrapper serves pixel and latent models):

- the two sides share one denoiser face: ``D(x, sigma, cond)`` on samples of ``image_shape`` (pixels, or VAE
  latents), within the common sigma range ``sigma_min``..``sigma_max``, with a config ``meta``;
- a prompt encoder (``prompts``): ``encode(prompts)``, ``cond(prompt, n)`` and ``uncond()``, the unconditional
  input of guidance: ``PixelPrompts`` (MiniLM vectors; the empty prompt is zeros) or
  ``ambient.latent_pair.ClipPrompts`` (CLIP token states; the empty prompt's states);
- a codec (``codec``) from model space to what is shown and searched: ``PixelCodec`` (the samples, each
  ``upsample`` x ``upsample`` block averaged back to the training images' size) or ``ambient.latent_pair.VaeCodec``
  (the VAE's decode, resized to the index's size for the search);

plus the training images with their nearest-neighbour index, the Ambient model's training cutoff sigma_n and
regime (so the right sampling cutoff can be chosen), the copy test, and optionally the shipped sigma_c sweep and
held-out reference images. ``side_by_side``, ``trajectories``, ``generate`` and ``sweep_cutoff`` are its methods;
``cutoff_at`` turns a number into the ``Cutoff`` it asks for, the range's ends being the explicit ends.

Pairs come from two folders (``load_pair`` here, ``ambient.latent_pair.load_latent_pair``) or from a pairs.json
entry (``ambient.pairs_config``). Anything inconsistent raises ``PairError`` (also named ``PairProblem``), which
says what is wrong and how to fix it.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ambient.cutoff import Cutoff
from ambient.sampling import SAMPLERS, CFGDenoiser, autocast, initial_noise, karras_sigmas, sample
from ambient.trajectory import DEFAULT_CACHE, Trajectory, first_step_below, hand_over, record, truncate

_PAIR_TOKENS = itertools.count()

# The app's solver: DPM-Solver++(2M) at 20 steps kept the default pair's copy rates and Frechet distances inside
# the intervals of Heun at 18 (1,000 samples a side, the same seeds; the Ambient model's distance 5.18 against 5.10)
# with 20 network evaluations instead of 35; at 14 steps the Ambient model's distance moved to 5.62 (benchmarks/README.md).
DEFAULT_SAMPLER = "dpmpp_2m"
DPM_STEPS_PER_HEUN_STEP = 20 / 18  # the measured match above

INDEX_FIX = (
    "Rebuild it from the training images: TrainingSetIndex(images, ids).save(folder) "
    "(python -m ambient index, or python scripts/make_tiny_pair.py for a tiny pair)."
)


class PairError(ValueError):
    """The one error of a pair that cannot be used (or a pairs.json that cannot be read): ``problem`` says what
    is wrong, ``fix`` what to do, ``pair`` which entry (None for the config file as a whole)."""

    def __init__(self, problem: str, fix: str = "", pair: str | None = None):
        self.pair, self.problem, self.fix = pair, problem, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.pair is None:
            return f"{self.problem} {self.fix}".strip()
        return f"Model pair '{self.pair}': {self.problem}" + (f" How to fix: {self.fix}" if self.fix else "")

    def markdown(self) -> str:
        """The message as markdown for a status panel."""
        fix = f"\n\n**How to fix:** {self.fix}" if self.fix else ""
        if self.pair is None:
            return f"**The pairs config cannot be used.** {self.problem}{fix}"
        return f"**Model pair `{self.pair}` cannot be used.** {self.problem}{fix}"

    def named(self, pair: str) -> PairError:
        """The same error, said of the pair called ``pair``."""
        e = PairError(self.problem, self.fix, pair)
        e.__cause__ = self.__cause__ or self
        return e


PairProblem = PairError  # the name the library used before the one error type


class OnDevice(nn.Module):
    """Runs a CPU-facing denoiser on another device: inputs move there, outputs come back to the CPU."""

    def __init__(self, model: nn.Module, device: str):
        super().__init__()
        self.model, self.device = model.to(device), torch.device(device)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the wrapped model's images."""
        return tuple(self.model.image_shape)  # type: ignore[return-value]

    @property
    def cond_dim(self) -> int:
        """The wrapped model's conditioning width."""
        return int(getattr(self.model, "cond_dim", 0))

    @property
    def meta(self) -> dict[str, Any]:
        """The wrapped model's config meta."""
        return dict(getattr(self.model, "meta", {}) or {})

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """D(x, sigma, cond) computed on the device."""
        s = torch.as_tensor(sigma).to(self.device)
        c = None if cond is None else cond.to(self.device)
        return self.model(x.to(self.device), s, c).to(x.device)


# ---------------------------------------------------------------- the two interfaces a pair's sides share


class PixelPrompts:
    """The prompt encoder of a pixel pair: sentence vectors (MiniLM) whose empty prompt is all zeros, so the
    unconditional input of guidance is zeros (``uncond`` None) and an empty prompt needs no encoding."""

    def __init__(self, text_model: str | None, dim: int):
        self.text_model, self.dim = text_model, int(dim)
        self._lock = threading.Lock()

    def encode(self, prompts: Sequence[str]) -> torch.Tensor | None:
        """(B, D) vectors of the prompts; None when the models are unconditional or every prompt is empty."""
        if not self.dim or not any(prompts):
            return None
        from ambient.evaluate import encode_prompts

        with self._lock:
            return encode_prompts(list(prompts), self.text_model, self.dim)

    def cond(self, prompt: str, n: int) -> torch.Tensor | None:
        """The conditioning of ``n`` images of one prompt (None: unconditional)."""
        c = self.encode([prompt]) if prompt else None
        return None if c is None else c.expand(n, -1).clone()

    def uncond(self) -> torch.Tensor | None:
        """The unconditional input of guidance: None, i.e. zeros."""
        return None


class PixelCodec:
    """Model space to what is shown and searched for a pixel pair: the samples themselves, each
    ``upsample`` x ``upsample`` block averaged back to the training images' size."""

    kind = "pixels"
    clamp = True  # samples are images: clamped to [-1, 1]

    def __init__(self, data_shape: tuple[int, int, int], upsample: int = 1):
        self.data_shape, self.upsample = tuple(data_shape), int(upsample)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples (or estimates) as images at the training images' size, on the CPU."""
        from ambient.data import downsample_pixels

        return downsample_pixels(x.detach().float().cpu(), self.data_shape[-1])

    def to_index(self, images: torch.Tensor) -> torch.Tensor:
        """Shown images as the neighbour index takes them: as they are."""
        return images.float().cpu()


@dataclass
class SideBySide:
    """One side-by-side run: the shown images of both sides and, per side, the estimate x0_hat at the recorded
    steps as (sigma, images as the index takes them)."""

    ambient: torch.Tensor
    baseline: torch.Tensor
    records: dict[str, list[tuple[float, torch.Tensor]]]
    seconds: float = 0.0


END_TOLERANCE = 1e-5  # a sigma_c within this relative distance of an end is that end (ends are shown to 6 digits)


def show_end(sigma: float) -> str:
    """An end of the sigma range as the user is told it: 6 significant digits, within ``END_TOLERANCE``."""
    return f"{sigma:.6g}"


@dataclass
class Pair:
    """A loaded, cross-checked model pair, pixel or latent (see the module docstring)."""

    ambient: Any
    baseline: Any
    train: Any  # ambient.data.ImageDataset: the training images as shown and searched
    index: Any  # ambient.memorization.neighbours.TrainingSetIndex
    image_shape: tuple[int, int, int]  # (C, H, W) of the models' samples (pixels, or latents)
    cond_dim: int
    sigma_min: float
    sigma_max: float
    sigma_n: float | None = None
    regime: str = "all"  # the Ambient model's: "high" = trained only at sigma >= sigma_n
    upsample: int = 1  # a pixel pair's models sample at this many times the training images' side
    copy_test: str = "similarity"  # the test behind a verdict's is_copy: "similarity" or "ratio"
    text_model: str | None = None
    sweep: dict[str, Any] | None = None
    reference: Any = None
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    prompts: Any = None  # encode(prompts), cond(prompt, n), uncond(): PixelPrompts or a CLIP encoder
    codec: Any = None  # decode(samples) -> shown images, to_index(images), data_shape, clamp: PixelCodec or a VAE
    kind: str = "pixels"  # "pixels" or "latent"
    trajectory_points: int | None = None  # steps whose estimate is recorded (None: every step)
    default_steps: int = 18  # the sampler steps a request starts with
    info: dict[str, Any] = field(default_factory=dict)  # what only one kind has (a latent pair's settings)
    spec: Any = None  # the pairs.json entry it was loaded from (ambient.pairs_config.PairSpec), if any
    sweep_plot: Path | None = None
    frontier: dict[str, Any] | None = None
    frontier_plot: Path | None = None
    trajectory_cache: Any = None  # ambient.trajectory.TrajectoryCache (default: the process's shared one)
    # record the two models' runs in two threads where a request has one CPU thread (AMBIENT_PARALLEL_SIDES=0: not)
    parallel_sides: bool = field(default_factory=lambda: os.environ.get("AMBIENT_PARALLEL_SIDES", "1") != "0")

    def __post_init__(self) -> None:
        if self.trajectory_cache is None:
            self.trajectory_cache = DEFAULT_CACHE
        self._token = next(_PAIR_TOKENS)  # this object's own key in the shared cache (ids of freed objects recur)
        if self.prompts is None:
            self.prompts = PixelPrompts(self.text_model, self.cond_dim)
        if self.codec is None:
            c, h, w = self.image_shape
            self.codec = PixelCodec((c, h // self.upsample, w // self.upsample), self.upsample)

    # -- what it is
    @property
    def name(self) -> str:
        """The pair's config name ("" for a pair loaded from folders)."""
        return self.spec.name if self.spec is not None else ""

    @property
    def label(self) -> str:
        """What a pair menu shows."""
        return self.spec.label if self.spec is not None else self.name

    @property
    def summary(self) -> str:
        """The headline result in one line (the config's ``summary``; "" when none)."""
        return getattr(self.spec, "summary", "") or ""

    @property
    def card_text(self) -> str:
        """The long description: the config's ``card`` file, else its ``description``."""
        return self.spec.card_text if self.spec is not None else ""

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the training images: the size at which images are searched and uploads checked."""
        return tuple(self.codec.data_shape)  # type: ignore[return-value]

    def to_data(self, images: torch.Tensor) -> torch.Tensor:
        """A pixel pair's samples (or x0_hat estimates) at the training images' size (each block averaged)."""
        from ambient.data import downsample_pixels

        return downsample_pixels(images, self.data_shape[-1])

    def index_input(self, images: torch.Tensor) -> torch.Tensor:
        """Shown images as the neighbour index takes them (a latent pair's resized to the index's size)."""
        return self.codec.to_index(images)

    def verdicts(self, images: torch.Tensor, k: int = 5) -> list[Any]:
        """Nearest training images and copy verdicts of images at the index's size, by the pair's test."""
        return self.index.verdicts(images, k=k, primary=self.copy_test)

    def default_cutoff(self) -> Cutoff:
        """The cutoff the Ambient model was trained for (hand-over at sigma_n for a high-noise-only one)."""
        return Cutoff.default_for(self.regime, self.sigma_n)

    def check_sigma_c(self, sigma_c: Any) -> float:
        """A finite sigma_c within the pair's range as ``show_end`` tells it (``END_TOLERANCE`` either side), or
        ValueError naming those ends."""
        lo, hi = self.sigma_min, self.sigma_max
        if isinstance(sigma_c, bool) or not isinstance(sigma_c, int | float):
            raise ValueError(f"sigma_c must be a number from {show_end(lo)} to {show_end(hi)}, got {sigma_c!r}")
        if not math.isfinite(sigma_c) or not lo * (1 - END_TOLERANCE) <= sigma_c <= hi * (1 + END_TOLERANCE):
            raise ValueError(
                f"sigma_c must be a finite number from {show_end(lo)} (Ambient alone) to {show_end(hi)} "
                f"(baseline alone), got {sigma_c!r}"
            )
        return float(sigma_c)

    def cutoff_at(self, sigma_c: Any, mode: str = "handover") -> Cutoff:
        """The cutoff a number asks for, its ends the ones that act: within ``END_TOLERANCE`` of sigma_max (as
        ``show_end`` prints it) a hand-over is the baseline alone, within it of sigma_min the Ambient model alone
        (the full run when truncating). ValueError for a number outside the range (naming its ends) or a cutoff
        the Ambient model was not trained for."""
        v = self.check_sigma_c(sigma_c)
        if mode == "handover" and v >= self.sigma_max * (1 - END_TOLERANCE):
            cut = Cutoff.baseline_alone()
        elif v <= self.sigma_min * (1 + END_TOLERANCE):
            cut = Cutoff(0.0, mode)
        else:
            cut = Cutoff(v, mode)
        return cut.check(self.regime, self.sigma_n, self.sigma_min, self.sigma_max)

    def describe(self) -> str:
        """A markdown summary for a status panel: what the pair is, its description and its warnings."""
        from ambient.pairs_config import describe_pair

        return describe_pair(self)

    # -- sampling
    def start_steps(self, sampler: str = DEFAULT_SAMPLER) -> int:
        """The steps a request starts with: ``default_steps`` (set for Heun), and for DPM-Solver++(2M) in the
        measured proportion (20 for 18: 20 network evaluations against Heun's 35)."""
        steps = int(self.default_steps)
        return steps if sampler == "heun" else max(1, round(steps * DPM_STEPS_PER_HEUN_STEP))

    def record_steps(self, total: int, points: int | None = None) -> list[int]:
        """The step indices (of ``total``) whose estimate is recorded: ``points`` spread evenly, the last
        included (default: the pair's ``trajectory_points``; None: every step)."""
        points = self.trajectory_points if points is None else points
        if points is None:
            return list(range(max(total, 0)))
        if points < 0:
            raise ValueError(f"trajectory points must be >= 0, got {points}")
        if points == 0 or total < 1:
            return []
        points = min(points, total)
        if points == 1:
            return [total - 1]
        return sorted({round(k * (total - 1) / (points - 1)) for k in range(points)})

    def steps_of(self, steps: int, cutoff: Cutoff) -> int:
        """How many steps a side with this cutoff records (a truncated run stops early)."""
        if cutoff.mode == "handover":
            return steps
        return max(1, len(cutoff.schedule(karras_sigmas(steps, self.sigma_min, self.sigma_max))) - 1)

    @torch.no_grad()
    def sample(
        self,
        seeds: Sequence[int],
        cond: torch.Tensor | None,
        steps: int,
        cutoff: Cutoff,
        guidance: float = 1.0,
        side: str = "ambient",
        callback: Callable[[dict[str, Any]], None] | None = None,
        bf16: bool = False,
        sampler: str = "heun",
    ) -> torch.Tensor:
        """Samples of one side in model space: ``side="ambient"`` runs the cutoff (hand-over to the baseline, or
        truncate), ``side="baseline"`` the baseline alone; the same start noise per seed either way. ``bf16``:
        bf16 autocast on a CPU that has it (pixel pairs; a latent pair runs at its loaded precision)."""
        if side not in ("ambient", "baseline"):
            raise ValueError(f"side must be 'ambient' or 'baseline', not {side!r}")
        if side == "baseline":
            high, low, cut = self.baseline, None, Cutoff.ambient_alone()
        else:
            high, low, cut = self.ambient, (None if cutoff.mode == "truncate" else self.baseline), cutoff
        with autocast(self.device, bf16 and self.kind == "pixels"):
            return sample(
                high,
                low,
                seeds,
                self.image_shape,
                cond=cond,
                steps=steps,
                sigma_c=cut,
                guidance=guidance if cond is not None else 1.0,
                sampler=sampler,
                callback=callback,
                sigma_min=self.sigma_min,
                sigma_max=self.sigma_max,
                uncond=self.prompts.uncond(),
                clamp=self.codec.clamp,
            )

    def _guided(self, model: Any, guidance: float) -> Any:
        """A side's denoiser with classifier-free guidance applied (as ``sample`` applies it)."""
        return CFGDenoiser(model, guidance, self.prompts.uncond()) if guidance != 1.0 else model

    def trajectory(
        self,
        side: str,
        seeds: Sequence[int],
        prompt: str,
        steps: int,
        guidance: float,
        sampler: str,
        bf16: bool,
        cond: torch.Tensor | None = None,
    ) -> Trajectory:
        """One model's run alone from these seeds, every state and estimate kept (cached: a later request with the
        same seeds, prompt, steps, guidance and sampler reuses it). ``cond``: the prompt's conditioning where the
        caller has it; otherwise the prompt is encoded, and only when the run is not cached."""
        model = self.ambient if side == "ambient" else self.baseline
        key = (self._token, side, tuple(int(s) for s in seeds), prompt, steps, float(guidance) if prompt else 1.0)
        key += (sampler, bool(bf16))

        def make() -> Trajectory:
            c = cond if cond is not None or not prompt else self.prompts.cond(prompt, len(seeds))
            g = float(guidance) if c is not None and prompt else 1.0
            sigmas = karras_sigmas(steps, self.sigma_min, self.sigma_max).to(self.device)
            x = initial_noise(seeds, self.image_shape, float(sigmas[0])).to(self.device)
            c = None if c is None else c.to(self.device)
            with autocast(self.device, bf16 and self.kind == "pixels"):
                return record(self._guided(model, g), x, sigmas, c, sampler)

        return self.trajectory_cache.get(key, make)

    def _trajectories(
        self,
        sides: list[str],
        seeds: Sequence[int],
        prompt: str,
        steps: int,
        g: float,
        sampler: str,
        bf16: bool,
        cond: torch.Tensor | None,
    ) -> dict[str, Trajectory]:
        """The sides' recorded runs; two that are not cached yet run at the same time, one thread each (the two
        networks are independent until the hand-over, and a request on the CPU is given one thread)."""
        if len(sides) == 2 and self.parallel_sides and self.device == "cpu" and torch.get_num_threads() == 1:
            with ThreadPoolExecutor(2) as pool:
                futures = {
                    s: pool.submit(self.trajectory, s, seeds, prompt, steps, g, sampler, bf16, cond) for s in sides
                }
                return {s: f.result() for s, f in futures.items()}
        return {s: self.trajectory(s, seeds, prompt, steps, g, sampler, bf16, cond) for s in sides}

    def side_by_side(
        self,
        seeds: Sequence[int],
        prompt: str,
        steps: int,
        cutoff: Cutoff,
        guidance: float = 1.0,
        on_step: Callable[[str, dict[str, Any]], None] | None = None,
        trajectory_points: int | None = None,
        bf16: bool = False,
        sampler: str = "heun",
    ) -> SideBySide:
        """Both sides from the same seeds, as shown, with the estimate x0_hat at the recorded steps of each
        (``on_step(side, {"i", "total", "sigma", "denoised"})`` hears each one as it comes).

        Each model's run alone is recorded once (``trajectory``): the baseline's is its side, and the Ambient
        side restarts from the Ambient run's state at the first step that reaches below the cutoff, so moving the
        cutoff runs only the steps below it. The images are those of a fresh ``sample`` run, to the bit.
        """
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not seeds:
            raise ValueError("need at least one seed")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, not {sampler!r}")
        cutoff.check(None, None, self.sigma_min, self.sigma_max)
        t0 = time.perf_counter()
        cond = self.prompts.cond(prompt, len(seeds))
        c = None if cond is None else cond.to(self.device)
        g = float(guidance) if cond is not None and prompt else 1.0  # the empty prompt is the unconditional input
        records: dict[str, list[tuple[float, torch.Tensor]]] = {"ambient": [], "baseline": []}
        totals = {"ambient": self.steps_of(steps, cutoff), "baseline": steps}
        keep = {side: set(self.record_steps(totals[side], trajectory_points)) for side in totals}

        def note(side: str, i: int, sigma: float, denoised: torch.Tensor) -> None:
            if i not in keep[side]:
                return
            d = self.codec.to_index(self.codec.decode(denoised))
            records[side].append((sigma, d))
            if on_step is not None:
                on_step(side, {"i": i, "total": totals[side], "sigma": sigma, "denoised": d})

        out = {}
        if not self.trajectory_cache.max_bytes:  # recording off: each side sampled afresh, as a plain run
            for side in ("ambient", "baseline"):

                def cb(info: dict[str, Any], side: str = side) -> None:
                    note(side, int(info["i"]), float(info["sigma"]), info["denoised"])

                y = self.sample(seeds, cond, steps, cutoff, g, side, cb, bf16, sampler)
                out[side] = self.codec.decode(y.float() if self.kind == "pixels" else y)
            return SideBySide(out["ambient"], out["baseline"], records, time.perf_counter() - t0)
        sides = ["baseline"] if cutoff.is_baseline_alone else ["baseline", "ambient"]
        runs = self._trajectories(sides, seeds, prompt, steps, g, sampler, bf16, cond)
        base, amb = runs["baseline"], runs.get("ambient")
        # the Ambient side: the recorded steps above the cutoff, then the rest run now
        if amb is None:
            start, x = 0, None
        elif cutoff.mode == "truncate" and cutoff.sigma_c > 0:
            start = max(0, totals["ambient"] - 1)
        else:
            start = first_step_below(amb.sigmas, cutoff.sigma_c, sampler)
        for i in range(min(start, len(amb.denoised) if amb is not None else 0)):
            note("ambient", i, float(amb.sigmas[i]), amb.denoised[i])

        def rest(info: dict[str, Any]) -> None:
            note("ambient", start + int(info["i"]), float(info["sigma"]), info["denoised"])

        A, B = self._guided(self.ambient, g), self._guided(self.baseline, g)
        with autocast(self.device, bf16 and self.kind == "pixels"):
            if amb is None:
                for i, d in enumerate(base.denoised):
                    note("ambient", i, float(base.sigmas[i]), d)
                x = base.output
            elif cutoff.mode == "truncate" and cutoff.sigma_c > 0:
                x = truncate(amb, A, cutoff.sigma_c, c, rest)
            else:
                x = hand_over(amb, A, B, cutoff.sigma_c, c, rest)
        for i, d in enumerate(base.denoised):
            note("baseline", i, float(base.sigmas[i]), d)
        for side, y in (("ambient", x), ("baseline", base.output)):
            y = y.clamp(-1, 1) if self.codec.clamp else y
            out[side] = self.codec.decode(y.float() if self.kind == "pixels" else y)
        return SideBySide(out["ambient"], out["baseline"], records, time.perf_counter() - t0)

    def trajectories(
        self, records: Sequence[tuple[float, torch.Tensor]], cutoff: Cutoff, side: str = "ambient"
    ) -> list[list[dict[str, Any]]]:
        """Per image: the nearest training image of x0_hat at every recorded step (sigma, similarity, position,
        id, and which model made that step), from one index search."""
        if not records:
            return []
        from ambient.evaluate import nearest_along

        n = len(records[0][1])
        sims, pos = nearest_along(self.index, [d for _, d in records])
        out: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for step, (sigma, _) in enumerate(records):
            model = side if side == "baseline" else cutoff.owner(sigma)
            for i in range(n):
                j = int(pos[step, i])
                out[i].append(
                    {
                        "sigma": sigma,
                        "similarity": float(sims[step, i]),
                        "position": j,
                        "id": int(self.train.ids[j]),
                        "model": model,
                    }
                )
        return out

    @torch.no_grad()
    def generate(
        self,
        seeds: Sequence[int],
        cond: torch.Tensor | None,
        steps: int = 18,
        cutoff: Cutoff | None = None,
        guidance: float = 1.0,
        side: str = "ambient",
        batch: int = 128,
        bf16: bool = False,
        progress: Callable[[float, str], None] | None = None,
        sampler: str = "heun",
    ) -> torch.Tensor:
        """Images of many seeds as the index takes them, in batches (the same start noise per seed as in any
        other batch); ``cond`` from ``prompts.encode`` (one row per seed, or None)."""
        cutoff = cutoff or Cutoff.ambient_alone()
        per = batch if self.kind == "pixels" else max(1, min(batch, 8))
        out = []
        for start in range(0, len(seeds), per):
            s = list(seeds[start : start + per])
            c = None if cond is None else cond[start : start + per]
            x = self.sample(s, c, steps, cutoff, guidance, side, bf16=bf16, sampler=sampler)
            out.append(self.codec.to_index(self.codec.decode(x.float() if self.kind == "pixels" else x)))
            if progress is not None:
                progress(min(1.0, (start + len(s)) / len(seeds)), f"{start + len(s)}/{len(seeds)} samples")
        return torch.cat(out).float()

    def sweep_cutoff(
        self,
        cutoffs: Sequence[Cutoff | float],
        seeds: Sequence[int],
        prompts: Sequence[str] | None = None,
        steps: int = 18,
        class_ids: Sequence[int] | None = None,
        reference: torch.Tensor | None = None,
        classifier: Any = None,
        guidance: float = 1.0,
        bf16: bool = False,
        progress: Callable[[float, str], None] | None = None,
    ) -> list[dict[str, Any]]:
        """The hand-over sweep: per cutoff, samples of (Ambient above sigma_c, baseline below) and their scores
        (``ambient.evaluate.score_samples``); a row's ``sigma_c`` is None for the baseline alone."""
        from ambient.evaluate import score_samples

        cond = self.prompts.encode(list(prompts)) if prompts else None
        if cond is not None and len(cond) != len(seeds):
            raise ValueError(f"{len(cond)} prompts for {len(seeds)} seeds")
        cutoffs = [c if isinstance(c, Cutoff) else Cutoff(c) for c in cutoffs]
        for c in cutoffs:
            c.check(self.regime, self.sigma_n, sigma_max=self.sigma_max)
        rows = []
        for k, cut in enumerate(cutoffs):
            inner = None
            if progress is not None:

                def inner(f: float, msg: str, k: int = k, cut: Cutoff = cut) -> None:
                    progress((k + f) / len(cutoffs), f"{cut.label()}: {msg}")

            x = self.generate(seeds, cond, steps, cut, guidance, bf16=bf16, progress=inner)
            row = {"sigma_c": cut.to_json(), "models": cut.label()}
            row.update(score_samples(x, self.index, class_ids, reference, classifier))
            rows.append(row)
        return rows


def check_models(
    ambient: Any, baseline: Any, text_model: str | None = None, sigma_n: float | None = None
) -> dict[str, Any]:
    """Cross-check two denoisers; returns image_shape, cond_dim, text_model, sigma_n, regime, the common sigma
    range and warnings. Raises ``PairError`` when they cannot be paired."""
    shape_a, shape_b = tuple(ambient.image_shape), tuple(baseline.image_shape)
    if shape_a != shape_b:
        raise PairError(
            f"the two models make images of different shapes: ambient {shape_a}, baseline {shape_b}.",
            "Pair models trained on the same data at the same resolution.",
        )
    cond_a, cond_b = int(getattr(ambient, "cond_dim", 0)), int(getattr(baseline, "cond_dim", 0))
    if cond_a != cond_b:
        raise PairError(
            f"the models take different conditioning widths: ambient {cond_a}, baseline {cond_b}.",
            "Train both with the same text encoder (or both unconditional).",
        )
    meta = getattr(ambient, "meta", {}) or {}
    text_model = text_model or meta.get("text_model") or None
    if cond_a and not text_model:
        raise PairError(
            f"the models are text-conditional ({cond_a}-d) but no text encoder is named.",
            'Add "text_model": "all-MiniLM-L6-v2" (or the encoder they were trained with) to the pair.',
        )
    warnings = []
    sigma_n = sigma_n if sigma_n is not None else meta.get("sigma_n")
    if not isinstance(sigma_n, int | float) or isinstance(sigma_n, bool) or not math.isfinite(sigma_n) or sigma_n <= 0:
        sigma_n = None
        warnings.append('the Ambient model records no training cutoff sigma_n (set "sigma_n" in the config).')
    regime = meta.get("regime") or "all"
    if regime == "high" and not sigma_n:
        raise PairError(
            "the Ambient model is high-noise-only but records no sigma_n, so no cutoff can be chosen for it.",
            'Set "sigma_n" in the config to the value it was trained with.',
        )
    return {
        "image_shape": shape_a,
        "cond_dim": cond_a,
        "text_model": text_model if cond_a else None,
        "sigma_n": float(sigma_n) if sigma_n else None,
        "regime": regime,
        "sigma_min": max(float(getattr(m, "sigma_min", 0.002)) for m in (ambient, baseline)),
        "sigma_max": min(float(getattr(m, "sigma_max", 80.0)) for m in (ambient, baseline)),
        "warnings": warnings,
    }


def recorded_upsample(model: Any) -> int:
    """The upsampling factor a model was trained at, from its config meta's ``train_config`` (1 when none)."""
    meta = getattr(model, "meta", {}) or {}
    k = (meta.get("train_config") or {}).get("upsample", 1)
    return k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else 1


def data_factor(models: tuple[Any, Any], model_shape: tuple[int, ...], data_shape: tuple[int, ...]) -> int:
    """How many times the training images' side the models sample at (1: the same size); ``PairError`` when
    the training images do not fit the models, or a larger model side is not one both models were trained at."""
    (c, h, w), (dc, dh, dw) = model_shape, data_shape
    k = h // dh if dh and dw and h % dh == 0 and w % dw == 0 and h // dh == w // dw else 0
    if c != dc or k < 1:
        raise PairError(
            f"the training images are {tuple(data_shape)} but the models make {tuple(model_shape)}.",
            '"train_data" must hold the images the models were trained on, at the same size and channels.',
        )
    recorded = [recorded_upsample(m) for m in models]
    if recorded != [k, k]:
        raise PairError(
            f"the models make {tuple(model_shape)} images from {tuple(data_shape)} training images, but they record "
            f"training at upsample {recorded[0]} (ambient) and {recorded[1]} (baseline), not {k}.",
            '"train_data" must hold the images the models were trained on; models trained with --upsample K '
            "record it in their config and pair with the images before upsampling.",
        )
    return k


def load_index(path: str | Path | None, train: Any, warnings: list[str] | None = None) -> Any:
    """The training set's saved index at ``path``, or one built in memory when ``path`` is None."""
    from ambient.memorization.neighbours import TrainingSetIndex

    if path is None:
        if warnings is not None:
            warnings.append("no index in the config: built one in memory (pixels embedder).")
        return TrainingSetIndex(train.images, list(train.ids))
    path = Path(path)
    if not path.is_dir():
        raise PairError(f"the nearest-neighbour index folder {path} does not exist.", INDEX_FIX)
    try:
        index = TrainingSetIndex.load(path, train.images)
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # faiss raises RuntimeError on a corrupt file
        msg = " ".join(str(e).split())[:300]
        raise PairError(f"the index at {path} could not be loaded: {msg}", INDEX_FIX) from e
    if len(index) != len(train):
        raise PairError(
            f"the index holds {len(index)} images but train_data holds {len(train)}.",
            "Rebuild the index from this train_data.",
        )
    return index


def read_sweep(path: str | Path) -> dict[str, Any]:
    """A sigma_c sweep JSON (``python -m ambient evaluate`` writes one); ValueError when it is not one."""
    from ambient.io import read_json

    data = read_json(path)
    rows = data.get("sweep") if isinstance(data, dict) else None
    if (
        not isinstance(rows, list)
        or not rows
        or not all(
            isinstance(r, dict) and "sigma_c" in r and isinstance(r["sigma_c"], int | float | None) for r in rows
        )
    ):
        raise ValueError('it needs a non-empty "sweep" list of rows with a "sigma_c" (a number, or null)')
    return data


def assemble(
    ambient: Any,
    baseline: Any,
    train: Any,
    index: str | Path | None = None,
    text_model: str | None = None,
    sigma_n: float | None = None,
    device: str = "cpu",
    warnings: list[str] | None = None,
) -> Pair:
    """A ``Pair`` from two loaded denoisers and their training images (the index loaded from ``index``, or built)."""
    checked = check_models(ambient, baseline, text_model, sigma_n)
    warnings = [*(warnings or []), *checked.pop("warnings")]
    upsample = data_factor((ambient, baseline), checked["image_shape"], tuple(train.images.shape[1:]))
    idx = load_index(index, train, warnings)
    if device != "cpu":
        ambient, baseline = OnDevice(ambient, device), OnDevice(baseline, device)
    return Pair(ambient, baseline, train, idx, device=device, warnings=warnings, upsample=upsample, **checked)


def load_pair(
    ambient_dir: str | Path,
    baseline_dir: str | Path,
    train_data: str | Path,
    index: str | Path | None = None,
    sweep: str | Path | None = None,
    text_model: str | None = None,
    device: str = "cpu",
) -> Pair:
    """Load a pair from its folders (models from ``save_pretrained`` or pipelines, ``train.npz``, ``index/``)."""
    from ambient.data import load_npz
    from ambient.denoiser import load_denoiser

    amb = load_denoiser(ambient_dir).eval().requires_grad_(False)
    base = load_denoiser(baseline_dir).eval().requires_grad_(False)
    pair = assemble(amb, base, load_npz(train_data), index, text_model, device=device)
    if sweep is not None:
        pair.sweep = read_sweep(sweep)
    return pair
