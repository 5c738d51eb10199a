"""Verdicts: is a sample a copy of a training image? The two tests, as in docs/method.md ("Measuring memorization").

* similarity: cosine similarity, in an embedder's feature space, between a sample and its nearest training
  image (found by ``TrainingSetIndex``); a copy if above the index's ``threshold`` (0.95 by default; the
  papers report 0.9 and 0.95 with DINOv2 features).
* ratio (Gu et al. 2025): exact pixel L2 distances to the nearest and second-nearest training images;
  a copy if d1 / d2 < 1/3 (``pixel_ratio_test``).

``Verdict.is_copy`` is the primary test: the similarity test unless the verdicts were made with
``primary="ratio"`` (a pair's ``copy_test``); the other is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_THRESHOLD = 0.95
DEFAULT_RATIO_THRESHOLD = 1 / 3
COPY_TESTS = ("similarity", "ratio")


def check_copy_test(name: object) -> str:
    """``name`` if it is one of the two copy tests ("similarity", "ratio"); else a ValueError naming them."""
    if name not in COPY_TESTS:
        raise ValueError(f"the copy test must be one of {list(COPY_TESTS)}, not {name!r}")
    return str(name)


@dataclass
class Neighbour:
    """One nearest training image."""

    position: int  # row in the training set tensor
    id: int  # source id of that training image (e.g. its Fashion-MNIST index)
    similarity: float  # cosine in the embedder's space


@dataclass
class Verdict:
    """What the index says about one sample.

    ``is_copy`` is the ``primary`` test: the similarity test by default, or the pixel ratio test of Gu et al.;
    both are always reported (``copy_by_similarity``, ``copy_by_ratio``). ``ratio`` is NaN (and
    ``copy_by_ratio`` False) where it cannot be computed: an index without images, or a training set of one image.
    """

    neighbours: list[Neighbour]  # top-k, best first
    similarity: float  # top-1 cosine
    ratio: float  # pixel-L2 d1/d2 (nearest / second nearest training image), exact, whole training set
    copy_by_similarity: bool  # similarity > index.threshold
    copy_by_ratio: bool  # ratio < index.ratio_threshold
    embedder: str = ""  # name of the embedder behind ``similarity``
    primary: str = "similarity"  # which test ``is_copy`` is: "similarity" or "ratio"

    @property
    def is_copy(self) -> bool:
        """The primary verdict: the similarity test, or the ratio test when ``primary`` is "ratio"."""
        return self.copy_by_ratio if self.primary == "ratio" else self.copy_by_similarity


def pixel_ratio_test(train: torch.Tensor, queries: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Exact pixel-L2 d1/d2 (nearest over second-nearest training image) per query (M,) float64, and the
    position of the nearest (M,) int64; ``train`` (N, D) and ``queries`` (M, D) are flattened float images.

    Candidates come from a chunked ``torch.cdist``; the best few are re-measured directly in float64,
    so near-copies (d1 close to 0) are exact. d1 = d2 = 0 (a duplicated training image copied) gives 0.
    A training set of one image has no second neighbour: ratio NaN.
    """
    n, d = train.shape
    m = len(queries)
    ratios = np.full(m, np.nan, dtype=np.float64)
    nearest = np.zeros(m, dtype=np.int64)
    if m == 0:
        return ratios, nearest
    kc = min(n, 8)
    chunk = max(1, min(2**24 // n, 2**22 // (kc * d)))
    for s in range(0, m, chunk):
        qc = queries[s : s + chunk]
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


def make_verdicts(
    sims: np.ndarray,
    pos: np.ndarray,
    ratios: np.ndarray,
    ids: Sequence[int],
    threshold: float = DEFAULT_THRESHOLD,
    ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
    embedder: str = "",
    primary: str = "similarity",
) -> list[Verdict]:
    """One Verdict per query from its top-k cosines and positions (N, k), its pixel ratio (N,; NaN: unknown)
    and the training ids; ``primary`` names the test behind ``is_copy``."""
    check_copy_test(primary)
    out = []
    for i in range(len(sims)):
        neigh = [Neighbour(int(p), int(ids[int(p)]), float(s)) for s, p in zip(sims[i], pos[i], strict=True) if p >= 0]
        top = float(sims[i, 0])
        r = float(ratios[i])
        out.append(
            Verdict(
                neighbours=neigh,
                similarity=top,
                ratio=r,
                copy_by_similarity=bool(top > threshold),
                copy_by_ratio=bool(r < ratio_threshold) if not math.isnan(r) else False,
                embedder=embedder,
                primary=primary,
            )
        )
    return out
