"""Numbers for the comparison: memorization rates, a Frechet distance, prompt fidelity.

* Memorization (docs/method.md): share of samples whose nearest training image has cosine similarity above
  0.9 / 0.95 in an embedder's space, and share that fail Gu et al.'s pixel ratio test (d1/d2 < 1/3).
  ``held_out_reference`` gives the same numbers for real held-out images: the rate a model that never
  copies would score against the same training set.
* Quality: a Frechet distance between Gaussians fitted to the penultimate features of the project's
  Fashion-MNIST classifier. It is not FID (no Inception network) and is only comparable to itself.
  ``frechet_interval`` gives it an interval from half-samples; ``precision_recall`` (Kynkaanniemi et al., 2019)
  says whether samples lie on the real images' manifold (precision) and how much of it they cover (recall).
* Prompt fidelity: accuracy of that classifier on samples against the class each was asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import linalg

from ambient.memorization.classifier import DEFAULT_CLASSIFIER_DIR, FashionClassifier, extract_features, predict_logits
from ambient.memorization.neighbours import TrainingSetIndex, Verdict

DEFAULT_THRESHOLDS = (0.9, 0.95)


def _key(t: float) -> str:
    return format(float(t), "g")


def memorization_stats(
    verdicts: list[Verdict],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ratio_threshold: float = 1 / 3,
    embedder: str | None = None,
) -> dict[str, Any]:
    """Memorization rates of a list of verdicts: share above each similarity threshold, share failing the ratio test.

    ``rate_similarity`` is keyed by the threshold as text ("0.9", "0.95"). ``rate_ratio`` counts ratios below
    ``ratio_threshold`` and is None when the verdicts carry no ratios (an embeddings-only index).
    """
    if len(verdicts) == 0:
        raise ValueError("no verdicts to summarise")
    if not 0 < ratio_threshold <= 1:
        raise ValueError(f"ratio_threshold must be in (0, 1], got {ratio_threshold}")
    sims = np.array([v.similarity for v in verdicts], dtype=np.float64)
    ratios = np.array([v.ratio for v in verdicts], dtype=np.float64)
    has_ratio = bool(np.isfinite(ratios).all())
    names = {v.embedder for v in verdicts if v.embedder}
    if embedder is None:
        embedder = names.pop() if len(names) == 1 else ("mixed" if names else "unknown")
    return {
        "n": len(verdicts),
        "embedder": embedder,
        "rate_similarity": {_key(t): float((sims > t).mean()) for t in thresholds},
        "rate_copy": float(np.mean([v.is_copy for v in verdicts])),
        "rate_ratio": float((ratios < ratio_threshold).mean()) if has_ratio else None,
        "rate_ratio_ci95": (
            list(bootstrap_rate_ci(int((ratios < ratio_threshold).sum()), len(ratios))) if has_ratio else None
        ),
        "ratio_threshold": float(ratio_threshold),
        "mean_similarity": float(sims.mean()),
        "median_similarity": float(np.median(sims)),
        "median_ratio": float(np.median(ratios)) if has_ratio else None,
    }


def bootstrap_rate_ci(hits: int, n: int, level: float = 0.95, n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a rate of ``hits`` out of ``n`` per-sample verdicts (fixed seed).

    Resampling n verdicts with replacement from k ones and n - k zeros is a Binomial(n, k / n) draw,
    so the per-sample verdicts need not be kept: the count and the sample size determine the interval.
    """
    if n < 1 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n and n >= 1, got hits={hits}, n={n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    rates = rng.binomial(n, hits / n, size=n_boot) / n
    lo, hi = np.quantile(rates, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def memorization_report(
    samples: torch.Tensor, index: TrainingSetIndex, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, k: int = 1
) -> dict[str, Any]:
    """Memorization stats of generated samples against a training-set index (plus the index's own settings)."""
    verdicts = index.verdicts(samples, k=k)
    stats = memorization_stats(verdicts, thresholds, index.ratio_threshold, index.embedder_name)
    stats["threshold"] = index.threshold  # the one behind rate_copy / Verdict.is_copy
    stats["n_training"] = len(index)
    return stats


def held_out_reference(
    index: TrainingSetIndex, test_images: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """The memorization report of real held-out images: the rate of a generator that never copies."""
    report = memorization_report(test_images, index, thresholds)
    report["reference"] = "held-out real images"
    return report


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    As in the standard FID code: scipy's sqrtm; if it is not finite or has a sizeable imaginary part, the
    covariances get ``eps`` on their diagonals; the tiny imaginary rest is dropped.

    The value is returned as computed, not clamped: for (nearly) identical sets, round-off can make it a tiny
    negative number (a few 1e-8 of tr(S_a) + tr(S_b) with fewer samples than dimensions). A negative value
    beyond 1e-6 of that scale means the square root is wrong, and raises ValueError.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"features must be (N, F) arrays, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or infinite values")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b

    def sqrt_product(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return linalg.sqrtm(x @ y)

    covmean = sqrt_product(s_a, s_b)
    bad = not np.isfinite(covmean).all()
    if not bad and np.iscomplexobj(covmean):
        bad = not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    if bad:
        offset = np.eye(s_a.shape[0]) * eps
        covmean = sqrt_product(s_a + offset, s_b + offset)
        if not np.isfinite(covmean).all():
            raise ValueError("the covariance product has no finite square root; too few samples for the dimension?")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag)):.3g} in the covariance square root")
        covmean = covmean.real
    scale = float(diff @ diff + np.trace(s_a) + np.trace(s_b))
    d = scale - 2 * float(np.trace(covmean))
    if d < -1e-6 * scale:
        raise ValueError(
            f"Frechet distance {d:.3g} is negative beyond round-off (scale {scale:.3g}): the covariance square root "
            "is inaccurate; too few samples for the dimension?"
        )
    return d


def frechet_interval(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    level: float = 0.95,
    n_splits: int = 30,
    seed: int = 0,
    vary: str = "both",
) -> tuple[float, float]:
    """Interval of the Frechet distance at this sample size: the point estimate plus or minus z times the standard
    deviation of the distance over random half-samples (drawn without replacement, so no duplicates bias it).

    A half-sample's distance is biased more than the full one, but its spread over random halves estimates the
    spread of the full-size distance between independent draws (the delete-half jackknife); the interval is
    centred on the point estimate, which it always contains. ``vary``: "both" (samples and reference are both
    draws) or "samples" (the reference is fixed). Its coverage is checked on synthetic Gaussians in the tests.
    """
    from scipy.stats import norm

    if vary not in ("both", "samples"):
        raise ValueError(f"vary must be 'both' or 'samples', not {vary!r}")
    if not 0 < level < 1 or n_splits < 2:
        raise ValueError("need 0 < level < 1 and n_splits >= 2")
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if len(a) < 8 or len(b) < 8:
        raise ValueError(f"need at least 8 feature vectors per set for an interval, got {len(a)} and {len(b)}")
    d = frechet_distance(a, b)
    rng = np.random.default_rng(seed)
    halves = []
    for _ in range(n_splits):
        ia = rng.choice(len(a), len(a) // 2, replace=False)
        ib = rng.choice(len(b), len(b) // 2, replace=False) if vary == "both" else np.arange(len(b))
        halves.append(frechet_distance(a[ia], b[ib]))
    half = float(norm.ppf((1 + level) / 2)) * float(np.std(halves, ddof=1))
    return d - half, d + half


def precision_recall(feats_gen: np.ndarray, feats_real: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) with k-nearest-neighbour balls.

    Precision: share of generated points inside some real point's ball (radius: its distance to its k-th nearest
    real neighbour). Recall: share of real points inside some generated point's ball. Euclidean, in the given
    feature space.
    """
    g = torch.as_tensor(np.asarray(feats_gen), dtype=torch.float64)
    r = torch.as_tensor(np.asarray(feats_real), dtype=torch.float64)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"features must be (N, F) arrays of one width, got {tuple(g.shape)} and {tuple(r.shape)}")
    if not isinstance(k, int) or k < 1 or k >= min(len(g), len(r)):
        raise ValueError(f"k must be an integer in [1, {min(len(g), len(r)) - 1}], got {k!r}")

    def radii(x: torch.Tensor) -> torch.Tensor:  # distance to the k-th nearest other point of the same set
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values

    def covered(points: torch.Tensor, centres: torch.Tensor, rad: torch.Tensor) -> float:
        return float((torch.cdist(points, centres) <= rad[None, :]).any(1).double().mean())

    return {"precision": covered(g, r, radii(r)), "recall": covered(r, g, radii(g)), "k": k}


def _classifier(classifier: FashionClassifier | None) -> tuple[FashionClassifier, str]:
    if classifier is None:
        from ambient.memorization.classifier import load_default_classifier

        return load_default_classifier(), f"{DEFAULT_CLASSIFIER_DIR.parent.name}/{DEFAULT_CLASSIFIER_DIR.name}"
    return classifier, "custom weights"


def _check_batch(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"{what} must be a (N, C, H, W) tensor")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} contain NaN or infinite values")


def frechet_report(
    samples: torch.Tensor, reference: torch.Tensor, classifier: FashionClassifier | None = None
) -> dict[str, Any]:
    """Frechet distance between samples and reference images in the classifier's penultimate feature space."""
    _check_batch(samples, "samples")
    _check_batch(reference, "reference images")
    model, source = _classifier(classifier)
    fa = extract_features(model, samples).numpy()
    fb = extract_features(model, reference).numpy()
    extra: dict[str, Any] = {}
    if len(fa) >= 8 and len(fb) >= 8:
        extra["frechet_ci95"] = list(frechet_interval(fa, fb))
        extra.update(precision_recall(fa, fb))
    return {
        "frechet_distance": frechet_distance(fa, fb),
        **extra,
        "feature_space": f"fmnist-cnn penultimate ({source})",
        "feature_dim": int(fa.shape[1]),
        "n_samples": len(samples),
        "n_reference": len(reference),
    }


def novel_frechet_report(
    samples: torch.Tensor,
    index: TrainingSetIndex,
    reference: torch.Tensor,
    classifier: FashionClassifier | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The Frechet distance of the samples the ratio test calls novel (not copies), against as many reference
    images drawn at random (the distance is biased by the sample count, so both sides have the same).

    It separates what a model creates from what it recalls: a model that copies well scores a good distance on
    all its samples and a poor one on its novel ones. None when fewer than 8 samples are novel.
    """
    _check_batch(samples, "samples")
    _check_batch(reference, "reference images")
    ratios = np.array([v.ratio for v in index.verdicts(samples)], dtype=np.float64)
    if not np.isfinite(ratios).all():
        raise ValueError("the index gives no ratio test (an embeddings-only index): no novel samples to score")
    novel = np.flatnonzero(ratios >= index.ratio_threshold)
    out: dict[str, Any] = {"n_novel": int(len(novel)), "frechet_novel": None}
    m = min(len(novel), len(reference))
    if m < 8:
        return out
    rng = np.random.default_rng(seed)
    pick = torch.from_numpy(np.sort(rng.choice(novel, m, replace=False)))
    ref = reference[torch.from_numpy(np.sort(rng.choice(len(reference), m, replace=False)))]
    model, _ = _classifier(classifier)
    out["frechet_novel"] = frechet_distance(
        extract_features(model, samples[pick]).numpy(), extract_features(model, ref).numpy()
    )
    return out


def prompt_fidelity(
    samples: torch.Tensor, class_ids: Sequence[int], classifier: FashionClassifier | None = None
) -> dict[str, Any]:
    """Share of samples the classifier assigns to the class they were asked for (class id -1: unconditional,
    skipped; accuracy None when nothing is left)."""
    _check_batch(samples, "samples")
    ids = np.asarray(list(class_ids), dtype=np.int64)
    if len(ids) != len(samples):
        raise ValueError(f"{len(ids)} class ids for {len(samples)} samples")
    model, source = _classifier(classifier)
    if ((ids < -1) | (ids >= model.num_classes)).any():
        raise ValueError(f"class ids must be -1 (unconditional) or in 0..{model.num_classes - 1}")
    keep = np.flatnonzero(ids >= 0)
    acc: float | None = None
    if len(keep):
        pred = predict_logits(model, samples[torch.from_numpy(keep)]).argmax(1).numpy()
        acc = float((pred == ids[keep]).mean())
    return {
        "accuracy": acc,
        "n": int(len(keep)),
        "n_skipped": int(len(ids) - len(keep)),
        "chance": 1.0 / model.num_classes,
        "classifier": f"fmnist-cnn ({source})",
        "classifier_test_accuracy": model.meta.get("test_accuracy"),
    }
