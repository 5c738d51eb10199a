"""Plain functions behind the UI. They validate input, call the ``ambient`` library and return plain data
(uint8 arrays, PIL images, captions, markdown); no maths here, no browser needed to call them.

Errors meant for the person at the screen are ``InputError``: a ``gr.Error`` (shown as a modal) that is
also a ``ValueError`` (for code and tests).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ambient import images
from ambient.cutoff import Cutoff
from ambient.pair import DEFAULT_SAMPLER
from demo.pairs import ModelPair, PairError, PairRegistry

MAX_IMAGES = 8
MAX_STEPS = 200
MAX_GUIDANCE = 20.0
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 300
MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_SWEEP_SEEDS = 256
DISPLAY_SIZE = 128
THUMB_SIZE = 64
DEFAULT_K = 4
SAMPLER_NAMES = {"heun": "Heun", "euler": "Euler", "dpmpp_2m": "DPM-Solver++ 2M"}
MODES = ("handover", "truncate")

StepCallback = Callable[[str, dict[str, Any]], None]


class InputError(gr.Error, ValueError):
    """A message for the user: shown by Gradio as an error modal, raised as ValueError to code."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)

    def __str__(self) -> str:
        return str(self.message)


# ----------------------------------------------------------------------------- validation


def check_prompt(prompt: Any) -> tuple[str, bool]:
    """The cleaned prompt and whether it was cut to MAX_PROMPT_CHARS; non-strings are refused."""
    from ambient.text import normalize_prompt

    if prompt is None:
        return "", False
    if not isinstance(prompt, str):
        raise InputError(f"The prompt must be text, got {type(prompt).__name__}.")
    clean = normalize_prompt(prompt)
    if len(clean) > MAX_PROMPT_CHARS:
        return clean[:MAX_PROMPT_CHARS].rstrip(), True
    return clean, False


def check_int(value: Any, name: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; whole floats such as 4.0 are accepted, anything else is refused."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}.")
    if isinstance(value, float | np.floating):
        if not math.isfinite(value) or not float(value).is_integer():
            raise InputError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}.")
        value = int(value)
    if not isinstance(value, int | np.integer):
        raise InputError(f"{name} must be a whole number from {lo} to {hi}, got {type(value).__name__} {value!r}.")
    if not lo <= int(value) <= hi:
        raise InputError(f"{name} must be from {lo} to {hi}, got {int(value)}.")
    return int(value)


def check_float(value: Any, name: str, lo: float, hi: float) -> float:
    """A finite number in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number from {lo:g} to {hi:g}, got {value!r}.")
    if not lo <= value <= hi:
        raise InputError(f"{name} must be from {lo:g} to {hi:g}, got {value:g}.")
    return value


def check_sampler(sampler: Any) -> str:
    """A sampler name the library has, or an InputError naming them."""
    from ambient.sampling import SAMPLERS

    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(sorted(SAMPLERS))}, got {sampler!r}.")
    return sampler


def check_mode(mode: Any) -> str:
    """'handover' or 'truncate' (also accepts 'hand-over')."""
    m = mode.replace("-", "").replace(" ", "").lower() if isinstance(mode, str) else mode
    if m not in MODES:
        raise InputError(f"mode must be 'handover' or 'truncate', got {mode!r}.")
    return m


def check_sigma_c(value: Any, pair: ModelPair) -> float:
    """sigma_c in the pair's range (``Pair.check_sigma_c``: its two ends as the user is told them), clamped to it."""
    v = float(value) if isinstance(value, np.integer | np.floating) else value
    try:
        v = pair.check_sigma_c(v)
    except ValueError as e:
        raise InputError(f"{e}.") from e
    return min(max(v, pair.sigma_min), pair.sigma_max)


def check_cutoff(value: Any, mode: Any, pair: ModelPair) -> Cutoff:
    """The cutoff a request asks for: None is the pair's default, the slider's ends are the explicit ends.

    A value at sigma_max (as the pair's range is shown, ``ambient.pair.show_end``) in hand-over means the baseline
    alone; at sigma_min, the Ambient model alone (or the full run when truncating). A high-noise-only Ambient
    model refuses a cutoff below its sigma_n.
    """
    mode = check_mode(mode)
    if value is None:
        cut = pair.default_cutoff()
        cut = cut if mode == cut.mode else Cutoff(cut.sigma_c, mode)
        try:
            return cut.check(pair.regime, pair.sigma_n, pair.sigma_min, pair.sigma_max)
        except ValueError as e:
            raise InputError(f"{e}.") from e
    v = float(value) if isinstance(value, np.integer | np.floating) else value
    try:
        return pair.cutoff_at(v, mode)
    except ValueError as e:
        raise InputError(f"{e}.") from e


def slider_range(pair: ModelPair) -> tuple[float, float]:
    """The cutoff slider's ends in log10(sigma), rounded outwards to 0.01."""
    return math.floor(math.log10(pair.sigma_min) * 100) / 100, math.ceil(math.log10(pair.sigma_max) * 100) / 100


def slider_start(pair: ModelPair) -> float:
    """Where the cutoff slider starts for a pair: at the cutoff its Ambient model was trained for."""
    sc = pair.default_cutoff().sigma_c
    return math.log10(sc) if sc > pair.sigma_min else slider_range(pair)[0]


def sigma_from_slider(value: Any, pair: ModelPair) -> float:
    """The sigma_c a log10 slider position stands for, clamped to the pair's range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"the cutoff slider position must be a finite number, got {value!r}.")
    return min(max(10.0 ** float(value), pair.sigma_min), pair.sigma_max)


def cutoff_label(sigma_c: float, pair: ModelPair, mode: str = "handover") -> str:
    """What a cutoff means, in words, for the label under the slider."""
    sn = f" (the Ambient model was trained with sigma_n = {pair.sigma_n:g})" if pair.sigma_n else ""
    try:
        cut = check_cutoff(sigma_c, mode, pair)
    except InputError as e:
        return f"**sigma_c = {sigma_c:.3g}**: not available for this pair: {e}"
    what = cut.label()
    if cut.is_baseline_alone:
        what = "**baseline alone** (right end)"
    elif cut.mode == "handover" and cut.is_ambient_alone:
        what = "**Ambient alone** (left end)"
    return f"**sigma_c = {sigma_c:.3g}**: {what}{sn}."


# ----------------------------------------------------------------------------- uploads


LOG = logging.getLogger("ambient.demo")


def image_to_model_input(source: Any, shape: Sequence[int]) -> torch.Tensor:
    """An upload as the model's input (``ambient.images.image_to_model_input`` at the app's size limits)."""
    if isinstance(source, str | Path) and not Path(source).is_file():
        raise InputError("The uploaded file could not be found on the server; upload it again.")
    try:
        return images.image_to_model_input(source, shape, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS)
    except images.BadImage as e:
        raise InputError(str(e)) from e


def decode_base64_image(data: Any) -> bytes:
    """Bytes of a base64 string or data URL, for the API (``ambient.images.decode_base64_image``)."""
    try:
        return images.decode_base64_image(data, MAX_UPLOAD_BYTES)
    except images.BadImage as e:
        raise InputError(str(e)) from e


# ----------------------------------------------------------------------------- results


@dataclass
class Sample:
    """One generated image, its verdict and the similarity of its x0_hat along the sampling run."""

    seed: int
    image: np.ndarray  # uint8 (H, W, C)
    verdict: Any  # ambient.memorization.neighbours.Verdict
    trajectory: list[dict[str, float]] = field(default_factory=list)  # sigma, similarity, position, model


@dataclass
class GenerateResult:
    """Both sides of one side-by-side request."""

    pair: str
    prompt: str
    seed: int
    steps: int
    guidance: float
    sigma_c: float  # as asked (the slider's value); ``cutoff`` is what ran
    mode: str
    ambient: list[Sample]
    baseline: list[Sample]
    threshold: float
    metric: str
    sigma_n: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    cached: bool = False
    cutoff: Cutoff = field(default_factory=Cutoff.ambient_alone)
    sampler: str = "heun"


@dataclass
class CheckResult:
    """Nearest training images of one query image."""

    query: np.ndarray  # uint8 (H, W, C), what the index saw
    verdict: Any
    threshold: float
    metric: str


@dataclass
class SweepView:
    """Rows of a sigma_c sweep plus what to say about them."""

    rows: list[dict[str, Any]]
    sigma_n: float | None
    markdown: str
    plot: Image.Image | None = None


def _shipped_png(path: Path | None) -> Image.Image | None:
    """A plot shipped with a pair, as RGB; None when there is none or it cannot be read."""
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError):
        return None


def _u8(images: torch.Tensor) -> np.ndarray:
    from ambient.data import to_uint8

    return to_uint8(images.float().cpu())


def upscale(image: np.ndarray, size: int = DISPLAY_SIZE) -> Image.Image:
    """A (H, W, C) uint8 image scaled up by nearest neighbour to about ``size`` pixels high."""
    return images.upscale(image, size)


def _threshold(pair: ModelPair) -> float:
    return float(getattr(pair.index, "threshold", 0.95))


def _metric(pair: ModelPair) -> str:
    name = getattr(pair.index, "embedder_name", None) or "pixels"
    return f"cosine similarity of {name} features"


def _neighbours_json(v: Any) -> list[dict[str, Any]]:
    return [
        {"id": int(n.id), "position": int(n.position), "similarity": round(float(n.similarity), 4)}
        for n in v.neighbours
    ]


def verdict_json(v: Any) -> dict[str, Any]:
    """A verdict as JSON-ready data."""
    return {
        "similarity": round(float(v.similarity), 4),
        "ratio": round(float(v.ratio), 4),
        "is_copy": bool(v.is_copy),
        "copy_test": v.primary,
        "copy_by_similarity": bool(v.copy_by_similarity),
        "copy_by_ratio": bool(v.copy_by_ratio),
        "neighbours": _neighbours_json(v),
    }


# ----------------------------------------------------------------------------- the handlers


class Handlers:
    """The app's operations over a registry of model pairs; every public method is a plain function."""

    def __init__(
        self, registry: PairRegistry, cache_size: int = 32, bf16: bool | None = None, sampler: str = DEFAULT_SAMPLER
    ):
        from ambient.training import cpu_has_bf16

        self.registry = registry
        self.sampler = check_sampler(sampler)
        # bf16 autocast where the CPU has native bf16 (the shipped evaluation samples the same way)
        self.bf16 = cpu_has_bf16() if bf16 is None else bool(bf16)
        self._cache: OrderedDict[tuple, GenerateResult] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._text_lock = threading.Lock()
        self._logged: set[str] = set()

    # -- pairs
    def _log_pair_error(self, e: PairError) -> None:
        """Log a pair's full error (with server paths) once, for the operator; visitors see it redacted."""
        msg = str(e)
        with self._lock:
            if msg in self._logged:
                return
            self._logged.add(msg)
        LOG.warning("%s", msg)

    def pair(self, name: str | None) -> ModelPair:
        """The loaded pair, or an InputError that says what is wrong with it and how to fix it."""
        if name is not None and not isinstance(name, str):
            raise InputError(f"pair must be a name (string), got {type(name).__name__}.")
        try:
            return self.registry.get(name or None)
        except PairError as e:
            self._log_pair_error(e)
            raise InputError(self.registry.redact(str(e))) from e

    def slider_is_live(self, name: str | None) -> bool:
        """Whether the cutoff slider regenerates while it is dragged (pixel pairs, or any pair on a GPU: a move
        costs a fraction of a second) or only when it is released (a latent pair on the CPU: seconds a move)."""
        p = self.pair(name)
        return p.kind == "pixels" or str(p.device).startswith("cuda")

    def pair_status(self, name: str | None) -> str:
        """Markdown describing the pair, or what is wrong with it (server paths made relative)."""
        try:
            return self.registry.get(name or None).describe()
        except PairError as e:
            self._log_pair_error(e)
            return self.registry.redact(e.markdown())

    # -- 1, 2, 3, 5: generate side by side
    def generate(
        self,
        pair: str | None = None,
        prompt: Any = "",
        seed: Any = 0,
        n_images: Any = 4,
        steps: Any = 18,
        guidance: Any = 1.0,
        sigma_c: Any = None,
        mode: Any = "handover",
        k: Any = DEFAULT_K,
        on_step: StepCallback | None = None,
        sampler: Any = None,
    ) -> GenerateResult:
        """Ambient (with the cutoff) and baseline from the same seeds, with neighbours and x0_hat trajectories
        (``sampler``: "heun" or "dpmpp_2m"; None or "" is the app's default)."""
        p = self.pair(pair)
        req, notes = self._validate(p, prompt, seed, n_images, steps, guidance, sigma_c, mode, k)
        req["sampler"] = check_sampler(sampler or self.sampler)
        key = (
            p.name,
            req["prompt"],
            req["seed"],
            req["n"],
            req["steps"],
            req["guidance"],
            req["cutoff"],
            req["k"],
            req["sampler"],
        )
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return GenerateResult(**{**hit.__dict__, "cached": True, "notes": notes})  # this request's notes
        t0 = time.perf_counter()
        x_a, x_b, records = self._run(p, req, on_step)
        result = self._assemble(p, req, x_a, x_b, records, notes, time.perf_counter() - t0)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    @staticmethod
    def _validate(
        p: ModelPair, prompt: Any, seed: Any, n_images: Any, steps: Any, guidance: Any, sigma_c: Any, mode: Any, k: Any
    ) -> tuple[dict[str, Any], list[str]]:
        """Every argument checked (``InputError`` with a message otherwise), plus notes on what was changed."""
        raw_prompt = prompt
        prompt, capped = check_prompt(prompt)
        req = {
            "seed": check_int(seed, "seed", 0, MAX_SEED),
            "n": check_int(n_images, "number of images", 1, MAX_IMAGES),
            "steps": check_int(steps, "steps", 1, MAX_STEPS),
            "guidance": check_float(guidance, "guidance scale", 0.0, MAX_GUIDANCE),
            "k": check_int(k, "number of neighbours", 1, min(10, len(p.train))),
            "cutoff": check_cutoff(sigma_c, mode, p),
        }
        notes = []
        if capped:
            notes.append(f"The prompt was cut to {MAX_PROMPT_CHARS} characters.")
        if isinstance(raw_prompt, str) and any(not ch.isprintable() and not ch.isspace() for ch in raw_prompt):
            notes.append("Control and formatting characters were removed from the prompt.")
        if prompt and not p.cond_dim:
            notes.append("This pair is unconditional: the prompt is ignored.")
            prompt = ""
        req["prompt"] = prompt
        return req, notes

    def _run(
        self, p: ModelPair, req: dict[str, Any], on_step: StepCallback | None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[tuple[float, torch.Tensor]]]]:
        """Both sides from the same seeds through the library (``Pair.side_by_side``), with x0_hat recorded."""
        seeds = [(req["seed"] + i) % (MAX_SEED + 1) for i in range(req["n"])]
        try:
            r = p.side_by_side(
                seeds,
                req["prompt"],
                req["steps"],
                req["cutoff"],
                req["guidance"],
                on_step,
                bf16=self.bf16,
                sampler=req["sampler"],
            )
        except torch.cuda.OutOfMemoryError as e:
            raise InputError(
                f"The GPU ran out of memory for {len(seeds)} images a side: ask for fewer images, or try again when "
                "fewer requests run at once."
            ) from e
        except (ValueError, ImportError, OSError) as e:  # a prompt encoder that cannot load or does not fit
            raise InputError(f"Sampling failed: {e}") from e
        return r.ambient, r.baseline, r.records

    def _assemble(
        self,
        p: ModelPair,
        req: dict[str, Any],
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        records: dict[str, list[tuple[float, torch.Tensor]]],
        notes: list[str],
        seconds: float,
    ) -> GenerateResult:
        """Verdicts, neighbours and trajectories of both sides, as the result the UI and the API show."""
        n, cut, k = req["n"], req["cutoff"], req["k"]
        seeds = [(req["seed"] + i) % (MAX_SEED + 1) for i in range(n)]
        v_a = p.verdicts(p.index_input(x_a.float().cpu()), k=k)
        v_b = p.verdicts(p.index_input(x_b.float().cpu()), k=k)
        traj = {side: p.trajectories(records[side], cut, side) or [[] for _ in range(n)] for side in records}
        u_a, u_b = _u8(x_a), _u8(x_b)
        return GenerateResult(
            pair=p.name,
            prompt=req["prompt"],
            seed=req["seed"],
            steps=req["steps"],
            guidance=req["guidance"],
            sigma_c=min(max(cut.sigma_c, p.sigma_min), p.sigma_max),  # the slider position it stands for
            mode=cut.mode,
            cutoff=cut,
            sampler=req.get("sampler", "heun"),
            ambient=[Sample(s, u_a[i], v_a[i], traj["ambient"][i]) for i, s in enumerate(seeds)],
            baseline=[Sample(s, u_b[i], v_b[i], traj["baseline"][i]) for i, s in enumerate(seeds)],
            threshold=_threshold(p),
            metric=_metric(p),
            sigma_n=p.sigma_n,
            seconds=seconds,
            notes=notes,
        )

    # -- 6: check an image
    def check_image(self, pair: str | None, image: Any, k: Any = DEFAULT_K) -> CheckResult:
        """Nearest training images of an uploaded image (path, bytes, base64 handled by the caller, PIL, array)."""
        p = self.pair(pair)
        k = check_int(k, "number of neighbours", 1, min(10, len(p.train)))
        if image is None:
            raise InputError("Upload an image first (PNG, JPEG, WebP...).")
        x = image_to_model_input(image, p.data_shape)
        v = p.verdicts(x, k=k)[0]
        return CheckResult(_u8(x)[0], v, _threshold(p), _metric(p))

    def check_training_image(self, pair: str | None, position: Any, k: Any = DEFAULT_K) -> CheckResult:
        """Nearest training images of training image ``position`` (itself first, similarity 1)."""
        p = self.pair(pair)
        pos = check_int(position, "training image position", 0, len(p.train) - 1)
        k = check_int(k, "number of neighbours", 1, min(10, len(p.train)))
        x = p.train.images[pos : pos + 1]
        v = p.verdicts(x, k=k)[0]
        return CheckResult(_u8(x)[0], v, _threshold(p), _metric(p))

    def training_gallery(self, pair: str | None) -> list[tuple[Image.Image, str]]:
        """Thumbnails of the pair's training images with their ids."""
        p = self.pair(pair)
        u8 = _u8(p.train.images)
        return [(upscale(u8[i], THUMB_SIZE), f"#{p.train.ids[i]}") for i in range(len(u8))]

    # -- 4: the trade-off
    def precomputed_sweep(self, pair: str | None) -> SweepView:
        """The sweep shipped with the pair (rows, its plot if any, and what it was measured with)."""
        p = self.pair(pair)
        if not p.sweep:
            return SweepView(
                [],
                p.sigma_n,
                f"No precomputed sweep ships with **{p.spec.label}**. Compute one with `python -m ambient evaluate`"
                " and name it in the pair's `sweep` entry, or use the live recompute below.",
            )
        s = p.sweep
        bits = [f"{k.replace('_', ' ')}: {s[k]}" for k in ("sweep_n", "steps", "embedder", "threshold") if k in s]
        note = s.get("quality", "")
        md = (
            f"Precomputed sweep of **{p.spec.label}** ({len(s['sweep'])} cutoffs; {'; '.join(bits)}). "
            f"Left end: Ambient alone; right end (past sigma_max): baseline alone. {note}"
        )
        return SweepView(list(s["sweep"]), s.get("sigma_n", p.sigma_n), md, _shipped_png(p.sweep_plot))

    def precomputed_frontier(self, pair: str | None) -> tuple[str, Image.Image | None]:
        """The quality-memorization frontier shipped with the pair: what it says, and its plot."""
        from ambient.research.frontier import summary

        p = self.pair(pair)
        if not p.frontier:
            return "No frontier ships with this pair (`python scripts/frontier.py <pair folder>` writes one).", None
        return summary(p.frontier), _shipped_png(p.frontier_plot)

    def live_sweep(
        self,
        pair: str | None,
        n_seeds: Any = 16,
        points: Any = 5,
        steps: Any = 18,
        seed: Any = 10_000,
        progress: Callable[[float, str], None] | None = None,
    ) -> SweepView:
        """Recompute the hand-over sweep now (``Pair.sweep_cutoff``, pixel or latent) on ``n_seeds`` seeds."""
        p = self.pair(pair)
        n = check_int(n_seeds, "number of seeds", 1, MAX_SWEEP_SEEDS)
        points = check_int(points, "number of cutoffs", 2, 12)
        steps = check_int(steps, "steps", 1, MAX_STEPS)
        seed = check_int(seed, "seed", 0, MAX_SEED - MAX_SWEEP_SEEDS)
        from ambient import evaluate

        t0 = time.perf_counter()
        lo = p.default_cutoff().sigma_c or p.sigma_min  # a high-noise-only network starts at its sigma_n
        cutoffs = evaluate.log_cutoffs(points, lo, p.sigma_max, [p.sigma_n] if p.sigma_n else [])
        class_names = (p.train.class_names or None) if p.cond_dim else None
        prompts, class_ids = evaluate.prompt_plan(n, class_names)
        reference = p.reference.images if p.reference is not None else None
        try:
            rows = p.sweep_cutoff(
                cutoffs,
                list(range(seed, seed + n)),
                prompts,
                steps,
                class_ids if class_names else None,
                reference,
                progress=progress,
            )
        except torch.cuda.OutOfMemoryError as e:
            raise InputError("The GPU ran out of memory for the live sweep: ask for fewer seeds.") from e
        except (ValueError, ImportError, OSError) as e:
            raise InputError(f"The live sweep failed: {e}") from e
        md = (
            f"Live sweep of **{p.spec.label}**: {n} seeds x {len(cutoffs)} cutoffs, {steps} Heun steps, "
            f"{time.perf_counter() - t0:.1f} s. Few seeds give noisy rates; the precomputed curve used more."
        )
        if p.reference is None:
            md += " Quality needs held-out images (`reference_data` in the config): memorization only here."
        return SweepView(rows, p.sigma_n, md)


# ----------------------------------------------------------------------------- presentation (plain data)


def sample_caption(s: Sample) -> str:
    """Caption under a generated image: the copy mark and the figure of the test behind it."""
    v = s.verdict
    mark = "COPY" if v.is_copy else "novel"
    return f"{mark} r={float(v.ratio):.2f}" if v.primary == "ratio" else f"{mark} {float(v.similarity):.2f}"


def gallery_items(result: GenerateResult, side: str) -> list[tuple[Image.Image, str]]:
    """(image upscaled for display, caption) for one side of a result."""
    samples = result.ambient if side == "ambient" else result.baseline
    return [(upscale(s.image), sample_caption(s)) for s in samples]


def preview_items(denoised: torch.Tensor, info: dict[str, Any]) -> list[tuple[Image.Image, str]]:
    """Gallery items for an intermediate x0_hat."""
    u8 = _u8(denoised.clamp(-1, 1))
    cap = f"x0_hat, step {info['i'] + 1}/{info['total']}, sigma {info['sigma']:.3g}"
    return [(upscale(a), cap) for a in u8]


def copies_line(result: GenerateResult) -> str:
    """One line per model: how many of this batch are copies."""
    n = len(result.ambient)
    a = sum(bool(s.verdict.is_copy) for s in result.ambient)
    b = sum(bool(s.verdict.is_copy) for s in result.baseline)
    by_ratio = bool(result.ambient) and result.ambient[0].verdict.primary == "ratio"
    other = "copy_by_similarity" if by_ratio else "copy_by_ratio"
    label = f"cosine > {result.threshold:g}" if by_ratio else "ratio test"
    ra = sum(bool(getattr(s.verdict, other)) for s in result.ambient)
    rb = sum(bool(getattr(s.verdict, other)) for s in result.baseline)
    return (
        f"- **Ambient**{_side_note(result)}: **{a} of {n}** are copies ({label}: {ra} of {n})\n"
        f"- **Baseline** (alone): **{b} of {n}** are copies ({label}: {rb} of {n})"
    )


def _side_note(result: GenerateResult) -> str:
    if result.mode == "truncate":
        return f" (truncated at sigma_c = {result.sigma_c:.3g})"
    if result.cutoff.is_ambient_alone:
        return " (alone)"
    if result.cutoff.is_baseline_alone:
        return " (the baseline alone: the cutoff is at the right end)"
    return f" (hand-over at sigma_c = {result.sigma_c:.3g})"


def summary_markdown(result: GenerateResult) -> str:
    """The copies per model, how a copy is decided and what was run."""
    prompt = f'"{escape(result.prompt)}"' if result.prompt else "(empty: unconditional)"
    lines = [
        copies_line(result),
        "",
        copy_rule(
            result.ambient[0].verdict.primary if result.ambient else "similarity", result.metric, result.threshold
        ),
        f"Prompt {prompt}, seeds {result.ambient[0].seed}..{result.ambient[-1].seed}, {result.steps} "
        f"{SAMPLER_NAMES.get(result.sampler, result.sampler)} steps, "
        f"guidance {result.guidance:g}, {'cached' if result.cached else f'{result.seconds:.1f} s'}.",
    ]
    lines += [f"*{n}*" for n in result.notes]
    return "\n".join(lines)


def neighbour_rows(result: GenerateResult, side: str, pair: ModelPair) -> list[dict[str, Any]]:
    """Per generated image: the image and its nearest training images with captions (plain data)."""
    samples = result.ambient if side == "ambient" else result.baseline
    train_u8 = _u8(pair.train.images)
    rows = []
    for i, s in enumerate(samples):
        nbs = [
            {
                "image": train_u8[int(nb.position)],
                "id": int(nb.id),
                "similarity": float(nb.similarity),
                "caption": f"train #{nb.id}: {float(nb.similarity):.3f}",
                "copy": bool(s.verdict.is_copy) and j == 0,
            }
            for j, nb in enumerate(s.verdict.neighbours)
        ]
        rows.append({"index": i, "seed": s.seed, "image": s.image, "copy": bool(s.verdict.is_copy), "neighbours": nbs})
    return rows


def _img_tag(image: np.ndarray, size: int, cls: str = "", title: str = "") -> str:
    buf = io.BytesIO()
    upscale(image, size).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{b64}" width="{size}" height="{size}" class="{cls}" '
        f'alt="{escape(title)}" title="{escape(title)}">'
    )


def neighbours_html(rows: list[dict[str, Any]], heading: str) -> str:
    """The neighbour panel of one side: each image, then its nearest training images and similarities."""
    parts = [f'<div class="nn-panel"><div class="nn-heading">{escape(heading)}</div>']
    for r in rows:
        badge = '<span class="nn-copy">COPY</span>' if r["copy"] else '<span class="nn-novel">novel</span>'
        title = f"image {r['index'] + 1}, seed {r['seed']}"
        cells = [
            f'<figure class="nn-sample">{_img_tag(r["image"], 64, "copy" if r["copy"] else "", title)}'
            f"<figcaption>#{r['index'] + 1} {badge}</figcaption></figure>"
        ]
        for nb in r["neighbours"]:
            cls = "nn-hit" if nb["copy"] else ""
            cells.append(
                f'<figure class="nn-train">{_img_tag(nb["image"], 48, cls, nb["caption"])}'
                f'<figcaption>#{nb["id"]}<br><span class="nn-sim">{nb["similarity"]:.3f}</span></figcaption></figure>'
            )
        parts.append(f'<div class="nn-row">{"".join(cells)}</div>')
    parts.append("</div>")
    return "".join(parts)


def result_json(result: GenerateResult, with_images: bool = False) -> dict[str, Any]:
    """The result as JSON-ready data (images as base64 PNG when asked)."""

    def side(samples: list[Sample]) -> list[dict[str, Any]]:
        out = []
        for s in samples:
            d = {"seed": s.seed, **verdict_json(s.verdict)}
            if with_images:
                d["png_base64"] = images.png_base64(s.image)
            out.append(d)
        return out

    return {
        "pair": result.pair,
        "prompt": result.prompt,
        "seed": result.seed,
        "seeds": [s.seed for s in result.ambient],
        "steps": result.steps,
        "sampler": result.sampler,
        "guidance": result.guidance,
        "sigma_c": result.sigma_c,
        "mode": result.mode,
        "sigma_n": result.sigma_n,
        "threshold": result.threshold,
        "metric": result.metric,
        "copies": {
            "ambient": sum(bool(s.verdict.is_copy) for s in result.ambient),
            "baseline": sum(bool(s.verdict.is_copy) for s in result.baseline),
        },
        "ambient": side(result.ambient),
        "baseline": side(result.baseline),
        "seconds": round(result.seconds, 3),
        "notes": result.notes,
    }


def check_items(result: CheckResult, pair: ModelPair) -> list[tuple[Image.Image, str]]:
    """Gallery items: the nearest training images of a checked image with similarities."""
    train_u8 = _u8(pair.train.images)
    return [
        (upscale(train_u8[int(nb.position)]), f"train #{nb.id}: {float(nb.similarity):.3f}")
        for nb in result.verdict.neighbours
    ]


def check_markdown(result: CheckResult) -> str:
    """Is this a copy? In words, with threshold and metric."""
    v = result.verdict
    top = v.neighbours[0]
    if v.primary == "ratio":
        figure = f"d1/d2 = {float(v.ratio):.3f} {'<' if v.is_copy else '>='} 1/3"
    else:
        figure = f"{float(v.similarity):.3f} {'>' if v.is_copy else '<='} {result.threshold:g}"
    if v.is_copy:
        head = f"### COPY: training image #{top.id} ({figure})"
    else:
        head = f"### Not a copy: nearest is training image #{top.id} ({figure})"
    return (
        f"{head}\n\n{copy_rule(v.primary, result.metric, result.threshold)} Here: cosine {float(v.similarity):.3f} "
        f"(copy by it: {'yes' if v.copy_by_similarity else 'no'}), d1/d2 {float(v.ratio):.3f} "
        f"(copy by it: {'yes' if v.copy_by_ratio else 'no'})."
    )


def copy_rule(primary: str, metric: str, threshold: float) -> str:
    """How a copy is decided, in one sentence, for the pair's copy test ("similarity" or "ratio")."""
    ratio = "pixel distance to the nearest training image under a third of the distance to the second nearest"
    if primary == "ratio":
        return (
            f"A **copy** is an image with its {ratio} (the ratio test of Gu et al., r = d1/d2 < 1/3: a near-exact "
            f"copy; r is under each image). The {metric} "
            f"of the nearest (copy above {threshold:g}) is shown for comparison."
        )
    return (
        f"A **copy** is an image whose nearest training image has {metric} > **{threshold:g}**. The ratio test "
        f"({ratio}) is shown for comparison."
    )


def sweep_table(
    rows: list[dict[str, Any]], sigma_min: float | None = None, sigma_max: float | None = None
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows for a table of a sweep (missing values stay empty); the ends are named when known."""
    keys = sorted({k for r in rows for k in (r.get("rate_similarity") or {})}, key=float, reverse=True)
    headers = ["sigma_c", "models", *[f"copies, cos > {k} (%)" for k in keys]]
    headers += ["copies, ratio test (%)", "mean nearest cos"]
    extra = [(k, t) for k, t in (("frechet_distance", "Frechet distance"), ("prompt_fidelity", "prompt fidelity (%)"))]
    extra = [(k, t) for k, t in extra if any(k in r for r in rows)]
    headers += [t for _, t in extra]
    out = []
    for r in rows:
        cut = Cutoff.from_row(r, sigma_max)
        if cut.is_baseline_alone:
            what = "baseline alone"
        elif cut.is_ambient_alone or (sigma_min is not None and cut.sigma_c <= sigma_min):
            what = "Ambient alone"
        else:
            what = "hand-over"
        rs = r.get("rate_similarity") or {}
        line: list[Any] = [
            None if cut.is_baseline_alone else round(cut.sigma_c, 4),
            what,
            *[_pct(rs.get(k)) for k in keys],
        ]
        line += [_pct(r.get("rate_ratio")), _num(r.get("mean_similarity"))]
        line += [_pct(r.get(k)) if k == "prompt_fidelity" else _num(r.get(k)) for k, _ in extra]
        out.append(line)
    return headers, out


def _pct(v: Any) -> float | None:
    return None if not isinstance(v, int | float) else round(100 * float(v), 1)


def _num(v: Any) -> float | None:
    return None if not isinstance(v, int | float) else round(float(v), 3)


def device_banner(device: str) -> str:
    """CPU or GPU, in one line."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"Running on **GPU** ({escape(torch.cuda.get_device_name(0))})."
    n = torch.get_num_threads()
    return (
        f"Running on **CPU** ({os.cpu_count()} cores, {n} torch thread{'s' if n != 1 else ''}): a batch takes seconds."
    )
