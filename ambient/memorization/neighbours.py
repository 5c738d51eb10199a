"""The training set's nearest-neighbour index: a faiss index over embeddings, its persistence, and the verdicts.

``TrainingSetIndex`` embeds the training images with an embedder (``ambient.memorization.embedders``), searches them by
cosine similarity (faiss inner product over L2-normalised rows), runs the pixel ratio test and turns both into
``Verdict`` s (``ambient.memorization.verdicts``); ``save`` / ``load`` write and read it (index.faiss + meta.json).
The embedder and verdict names are re-exported here, so ``from ambient.memorization.neighbours import ...`` keeps working.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import faiss
import numpy as np
import torch

from ambient.io import atomic_write_bytes
from ambient.memorization.embedders import (
    CHECKPOINT_ERRORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VALID_EMBEDDERS,
    ClassifierEmbedder,
    DinoV2Embedder,
    EfficientNetEmbedder,
    Embedder,
    OpenClipEmbedder,
    PixelEmbedder,
    check_images,
    get_embedder,
    resolve_embedder,
)
from ambient.memorization.verdicts import (
    DEFAULT_RATIO_THRESHOLD,
    DEFAULT_THRESHOLD,
    Neighbour,
    Verdict,
    make_verdicts,
    pixel_ratio_test,
)

__all__ = [
    "CHECKPOINT_ERRORS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INDEX_FORMAT",
    "INDEX_NAME",
    "META_NAME",
    "VALID_EMBEDDERS",
    "ClassifierEmbedder",
    "DinoV2Embedder",
    "EfficientNetEmbedder",
    "Embedder",
    "Neighbour",
    "OpenClipEmbedder",
    "PixelEmbedder",
    "TrainingSetIndex",
    "Verdict",
    "get_embedder",
]

INDEX_NAME = "index.faiss"
META_NAME = "meta.json"
INDEX_FORMAT = "ambient-training-set-index"
_FAISS_TYPES = {"flat": faiss.IndexFlatIP, "ivf": faiss.IndexIVFFlat}


def _normalise_rows(emb: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(emb, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class TrainingSetIndex:
    """A faiss index over the L2-normalised embeddings of a training set, plus its pixels for the ratio test.

    ``kind="flat"`` is exact search (IndexFlatIP); ``kind="ivf"`` is IndexIVFFlat (inner product) for large
    sets: ``nlist`` lists (default about 4 sqrt(N), at least 39 training points per list) of which ``nprobe``
    are searched (default max(8, nlist / 8), at most nlist; ValueError outside 1..nlist).

    Three ways in (images, ``from_embeddings``, ``load``), one construction path: ``_setup``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        ids: list[int] | None = None,
        embedder: Embedder | str = "pixels",
        kind: str = "flat",
        threshold: float = DEFAULT_THRESHOLD,
        ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
        nlist: int | None = None,
        nprobe: int | None = None,
    ):
        images = check_images(images, "training images")
        if len(images) == 0:
            raise ValueError("the training set is empty")
        emb = resolve_embedder(embedder, tuple(images.shape[1:]))
        vectors = emb.embed(images).numpy()
        self._setup(ids, emb.name, emb, images, None, kind, threshold, ratio_threshold, nlist, nprobe, vectors=vectors)

    # construction -----------------------------------------------------------------------------------

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        ids: list[int] | None = None,
        kind: str = "flat",
        embedder: Embedder | str = "external",
        threshold: float = DEFAULT_THRESHOLD,
        ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
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
        self._setup(ids, name, obj, None, None, kind, threshold, ratio_threshold, nlist, nprobe, vectors=emb)
        return self

    def _setup(
        self,
        ids: list[int] | None,
        embedder_name: str,
        embedder: Embedder | None,
        images: torch.Tensor | None,
        image_shape: tuple[int, ...] | None,
        kind: str,
        threshold: float,
        ratio_threshold: float,
        nlist: int | None,
        nprobe: int | None,
        vectors: np.ndarray | None = None,
        index: faiss.Index | None = None,
    ) -> None:
        """The one construction path: check the settings, then build a faiss index over ``vectors`` (N, dim)
        or adopt a loaded ``index``; ``image_shape`` counts only without ``images``."""
        if (vectors is None) == (index is None):
            raise TypeError("_setup takes either vectors to index or a loaded faiss index")
        if vectors is not None:
            if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
                raise ValueError(f"embeddings must be a non-empty (N, dim) array, got shape {vectors.shape}")
            if not np.issubdtype(vectors.dtype, np.number) or not np.isfinite(vectors).all():
                raise ValueError("embeddings must be finite numbers")
            n, dim = vectors.shape
        else:
            n, dim = int(index.ntotal), int(index.d)
        ids = list(range(n)) if ids is None else [int(i) for i in ids]
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} training images")
        if kind not in ("flat", "ivf"):
            raise ValueError(f"kind must be 'flat' or 'ivf', not {kind!r}")
        if not 0 < ratio_threshold <= 1:
            raise ValueError(f"ratio_threshold must be in (0, 1], got {ratio_threshold}")
        if not -1 <= threshold <= 1:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        if index is not None and not isinstance(index, _FAISS_TYPES[kind]):
            raise ValueError(f"a {kind!r} index is a faiss {_FAISS_TYPES[kind].__name__}, got {type(index).__name__}")
        if kind == "flat":
            nlist, nprobe = None, None
        else:
            if index is not None:  # a loaded index has its lists already
                nlist = int(index.nlist) if nlist is None else nlist
                nprobe = int(index.nprobe) if nprobe is None else nprobe
                if nlist != index.nlist:
                    raise ValueError(f"the faiss index has {index.nlist} lists, not nlist={nlist}")
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
        self.ids = ids
        self.embedder_name = embedder_name
        self._embedder = embedder
        self.images = images
        self.image_shape = tuple(images.shape[1:]) if images is not None else image_shape
        self.kind = kind
        self.threshold = float(threshold)
        self.ratio_threshold = float(ratio_threshold)
        self.dim = int(dim)
        self.nlist, self.nprobe = nlist, nprobe
        self._flat: torch.Tensor | None = None
        if index is not None:
            self.index = index
            if kind == "ivf":
                index.nprobe = nprobe
            return
        x = _normalise_rows(vectors)
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        else:
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(x)
            ivf.nprobe = nprobe
            self._quantizer = quantizer  # the IVF index does not own it: keep it alive
            self.index = ivf
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
            self._embedder = resolve_embedder(self.embedder_name, self.image_shape)
        return self._embedder

    # search ----------------------------------------------------------------------------------------

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be an integer, got {k!r}")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in 1..{len(self)} (the training set size), got {k}")
        return int(k)

    def _check_queries(self, queries: torch.Tensor) -> torch.Tensor:
        q = check_images(queries, "query images")
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
        position of the nearest (N,) int64 (``ambient.memorization.verdicts.pixel_ratio_test`` over the whole training set)."""
        if self.images is None:
            raise RuntimeError(
                "the ratio test needs the training images; this index was built from embeddings only "
                "(use TrainingSetIndex(images, ...) or TrainingSetIndex.load(folder, images))"
            )
        q = self._check_queries(queries).flatten(1).cpu()
        return pixel_ratio_test(self._flat_images(), q)

    def verdicts(self, queries: torch.Tensor, k: int = 5, primary: str = "similarity") -> list[Verdict]:
        """Top-k neighbours, similarity and ratio verdicts for each query image (``primary``: the test behind
        ``Verdict.is_copy``)."""
        q = self._check_queries(queries)
        sims, pos = self.search(q, k)
        ratios = self.ratio_test(q)[0] if self.images is not None else np.full(len(q), np.nan)
        return make_verdicts(
            sims, pos, ratios, self.ids, self.threshold, self.ratio_threshold, self.embedder_name, primary
        )

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
        atomic_write_bytes(folder / INDEX_NAME, data)
        atomic_write_bytes(folder / META_NAME, (json.dumps(meta) + "\n").encode())

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
        shape = meta.get("image_shape")
        if images is not None:
            images = check_images(images, "training images")
            if len(images) != count:
                raise ValueError(f"the index holds {count} training images but {len(images)} images were given")
            if shape is not None and list(images.shape[1:]) != list(shape):
                raise ValueError(f"the index was built on {tuple(shape)} images, got {tuple(images.shape[1:])}")
        self = cls.__new__(cls)
        try:
            self._setup(
                meta["ids"],
                str(meta["embedder"]),
                None,
                images,
                tuple(shape) if shape else None,
                str(meta["kind"]),
                float(meta["threshold"]),
                float(meta["ratio_threshold"]),
                meta.get("nlist"),
                meta.get("nprobe"),
                index=index,
            )
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from e
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
