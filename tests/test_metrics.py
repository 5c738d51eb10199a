"""Memorization rates, the Frechet distance and prompt fidelity (ambient.memorization.metrics)."""

import numpy as np
import pytest
import torch
from scipy import linalg

from ambient.data import balanced_subset, load_fashion_mnist
from ambient.memorization.classifier import load_default_classifier
from ambient.memorization.metrics import (
    frechet_distance,
    frechet_report,
    held_out_reference,
    memorization_report,
    memorization_stats,
    prompt_fidelity,
)
from ambient.memorization.neighbours import TrainingSetIndex, Verdict


@pytest.fixture(scope="module")
def train():
    return balanced_subset(load_fashion_mnist("train"), 300, seed=0)


@pytest.fixture(scope="module")
def heldout_500():
    return balanced_subset(load_fashion_mnist("test"), 500, seed=0)


@pytest.fixture(scope="module")
def index(train):
    return TrainingSetIndex(train.images, train.ids, "pixels")


def closed_form(mu1, s1, mu2, s2):
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))


def with_exact_moments(z, mu, cov):
    """Samples whose empirical mean and (ddof=1) covariance are exactly mu and cov."""
    z = z - z.mean(0)
    w = linalg.cholesky(np.cov(z, rowvar=False), lower=True)
    white = np.linalg.solve(w, z.T).T  # empirical covariance exactly I
    return white @ linalg.cholesky(cov, lower=True).T + mu


def random_gaussian(rng, d):
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)


# --- Frechet distance -----------------------------------------------------------------------------


def test_frechet_is_zero_for_the_same_set():
    x = np.random.default_rng(0).standard_normal((500, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_reports_round_off_as_is_and_raises_on_a_wrong_square_root(monkeypatch):
    import ambient.memorization.metrics

    rng = np.random.default_rng(5)
    thin = rng.standard_normal((24, 128)) * rng.uniform(0.1, 3, 128)  # fewer samples than dimensions
    scale = 2 * np.trace(np.cov(thin, rowvar=False))
    assert abs(frechet_distance(thin, thin)) < 1e-6 * scale  # round-off stays inside the tolerance

    x = rng.standard_normal((500, 16))
    scale = 2 * np.trace(np.cov(x, rowvar=False))
    sqrtm = ambient.memorization.metrics.linalg.sqrtm
    monkeypatch.setattr(
        ambient.memorization.metrics.linalg, "sqrtm", lambda m: (1 + 1e-8) * sqrtm(m)
    )  # round-off sized
    assert frechet_distance(x, x) == pytest.approx(-1e-8 * scale, rel=1e-3)  # negative, reported, not clamped
    monkeypatch.setattr(ambient.memorization.metrics.linalg, "sqrtm", lambda m: 1.01 * sqrtm(m))  # 1 % off
    with pytest.raises(ValueError, match="negative beyond round-off"):
        frechet_distance(x, x)


def test_frechet_matches_closed_form_exactly_when_moments_match():
    rng = np.random.default_rng(1)
    (mu1, s1), (mu2, s2) = random_gaussian(rng, 6), random_gaussian(rng, 6)
    a = with_exact_moments(rng.standard_normal((300, 6)), mu1, s1)
    b = with_exact_moments(rng.standard_normal((400, 6)), mu2, s2)
    assert frechet_distance(a, b) == pytest.approx(closed_form(mu1, s1, mu2, s2), rel=1e-6)


def test_frechet_of_sampled_gaussians_is_close_to_closed_form():
    # 20,000 draws per set in 4 dimensions: the estimate's standard deviation here is about 0.054 (20 seeds
    # checked, true value 6.39); the tolerance 0.05 + 2% (about 0.18) is over 3 standard deviations.
    rng = np.random.default_rng(2)
    (mu1, s1), (mu2, s2) = random_gaussian(rng, 4), random_gaussian(rng, 4)
    a = rng.multivariate_normal(mu1, s1, size=20_000)
    b = rng.multivariate_normal(mu2, s2, size=20_000)
    expected = closed_form(mu1, s1, mu2, s2)
    assert expected > 1
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02, abs=0.05)


def test_frechet_grows_with_a_mean_shift():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1000, 8))
    b = rng.standard_normal((1000, 8))
    d = [frechet_distance(a, b + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert d == sorted(d) and d[0] < 0.1
    assert d[3] == pytest.approx(8 * 4.0, rel=0.1)  # |shift|^2 summed over 8 dimensions dominates


def test_frechet_handles_rank_deficient_covariances():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 1.0  # fewer samples than dimensions
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 32  # the mean shift alone is 64


def test_frechet_input_validation():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


def test_frechet_report_separates_real_from_degraded_images(heldout_500):
    a, b = heldout_500.images[::2], heldout_500.images[1::2]
    g = torch.Generator().manual_seed(0)
    noisy = (b + 0.5 * torch.randn(b.shape, generator=g)).clamp(-1, 1)
    same = frechet_report(a, b)
    worse = frechet_report(a, noisy)
    assert same["feature_space"] == "fmnist-cnn penultimate (assets/classifier)"
    assert "FID" not in str(same)
    assert same["n_samples"] == 250 and same["n_reference"] == 250
    assert worse["frechet_distance"] > 3 * same["frechet_distance"]


# --- memorization ---------------------------------------------------------------------------------


def make_verdict(sim, ratio, threshold=0.95, ratio_threshold=1 / 3):
    return Verdict([], sim, ratio, sim > threshold, ratio < ratio_threshold, embedder="pixels")


def test_memorization_stats_counts_rates():
    vs = [make_verdict(s, r) for s, r in [(0.99, 0.1), (0.93, 0.5), (0.5, 0.2), (0.8, 0.9)]]
    stats = memorization_stats(vs)
    assert stats["n"] == 4 and stats["embedder"] == "pixels"
    assert stats["rate_similarity"] == {"0.9": 0.5, "0.95": 0.25}
    assert stats["rate_ratio"] == 0.5 and stats["ratio_threshold"] == pytest.approx(1 / 3)
    assert stats["rate_copy"] == 0.25
    assert stats["mean_similarity"] == pytest.approx(0.805)
    assert stats["median_similarity"] == pytest.approx(0.865)
    no_ratio = memorization_stats([make_verdict(0.99, float("nan"))])
    assert no_ratio["rate_ratio"] is None
    with pytest.raises(ValueError, match="no verdicts"):
        memorization_stats([])


def test_memorization_report_finds_the_copies(index, train, heldout_500):
    g = torch.Generator().manual_seed(0)
    copies = train.images[:10] + 0.01 * torch.randn(10, 1, 32, 32, generator=g)
    samples = torch.cat([copies, heldout_500.images[:10]])
    report = memorization_report(samples, index)
    assert report["n"] == 20 and report["n_training"] == 300 and report["threshold"] == 0.95
    assert report["rate_ratio"] == 0.5
    assert report["rate_similarity"]["0.95"] >= 0.5  # every copy, perhaps a close held-out image
    assert report["rate_copy"] == report["rate_similarity"]["0.95"]


def test_held_out_reference_is_creative(index, heldout_500):
    ref = held_out_reference(index, heldout_500.images[:100])
    assert ref["reference"] == "held-out real images" and ref["n"] == 100
    assert ref["rate_ratio"] == 0.0
    assert ref["rate_similarity"]["0.95"] < 0.2  # 0.08: centred pixels of different garments can look alike
    assert ref["rate_similarity"]["0.9"] >= ref["rate_similarity"]["0.95"]


# --- prompt fidelity ------------------------------------------------------------------------------


def test_prompt_fidelity_high_for_true_labels_chance_for_shuffled(heldout_500):
    labels = heldout_500.labels.tolist()
    true = prompt_fidelity(heldout_500.images, labels)
    assert true["n"] == 500 and true["accuracy"] >= 0.85
    assert true["classifier"] == "fmnist-cnn (assets/classifier)"
    shuffled = np.random.default_rng(0).permutation(labels).tolist()
    # 500 draws at p = 0.1 (balanced classes): sd 0.013, so 0.04..0.16 is more than 4 sd either side
    assert 0.04 <= prompt_fidelity(heldout_500.images, shuffled)["accuracy"] <= 0.16


def test_prompt_fidelity_skips_unconditional_samples(heldout_500):
    labels = heldout_500.labels[:20].tolist()
    ids = [-1] * 5 + labels[5:]
    res = prompt_fidelity(heldout_500.images[:20], ids, classifier=load_default_classifier())
    assert res["n"] == 15 and res["n_skipped"] == 5
    assert prompt_fidelity(heldout_500.images[:3], [-1, -1, -1])["accuracy"] is None
    with pytest.raises(ValueError, match="class ids"):
        prompt_fidelity(heldout_500.images[:2], [0, 10])
    with pytest.raises(ValueError, match="2 class ids for 3 samples"):
        prompt_fidelity(heldout_500.images[:3], [0, 1])


def _coverage(shift: float, vary: str, trials: int = 120) -> float:
    from ambient.memorization.metrics import frechet_distance, frechet_interval

    rng = np.random.default_rng(1)
    n, dim = 160, 6
    ref = rng.normal(size=(n, dim))

    def gen():
        return rng.normal(size=(n, dim)) * 1.1 + shift

    def reference():
        return ref if vary == "samples" else rng.normal(size=(n, dim))

    # The target: the expected distance at this sample size, by Monte Carlo over independent draws.
    target = np.mean([frechet_distance(gen(), reference()) for _ in range(600)])
    hits = 0
    for t in range(trials):
        a, b = gen(), reference()
        lo, hi = frechet_interval(a, b, n_splits=25, seed=t, vary=vary)
        assert lo <= frechet_distance(a, b) <= hi  # the point estimate always lies inside
        hits += lo <= target <= hi
    return hits / trials


@pytest.mark.parametrize("shift,vary", [(0.5, "samples"), (0.5, "both"), (0.0, "both")])
def test_frechet_interval_covers_the_expected_distance_about_95_percent_of_the_time(shift, vary):
    # Synthetic Gaussians, fixed seeds: nominal 95 %; 120 trials put a 95 % rate within about 0.90-0.99.
    assert 0.88 <= _coverage(shift, vary) <= 1.0


def test_frechet_interval_refuses_bad_settings():
    from ambient.memorization.metrics import frechet_interval

    a = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="vary"):
        frechet_interval(a, a, vary="neither")
    with pytest.raises(ValueError, match="at least 8"):
        frechet_interval(a[:5], a)


def test_precision_recall_tell_a_collapsed_generator_from_an_off_manifold_one():
    from ambient.memorization.metrics import precision_recall

    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 4))
    same = precision_recall(rng.normal(size=(400, 4)), real)
    assert same["precision"] > 0.85 and same["recall"] > 0.85
    collapsed = precision_recall(rng.normal(size=(400, 4)) * 0.2, real)  # on the manifold, covering little of it
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.5
    off = precision_recall(rng.normal(size=(400, 4)) + 4.0, real)  # off the manifold
    assert off["precision"] < 0.1
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real[:3], real, k=3)


def test_novel_frechet_scores_only_the_samples_the_ratio_test_calls_novel():
    from ambient.memorization.metrics import frechet_report, novel_frechet_report

    data = load_fashion_mnist("train")
    train = balanced_subset(data, 40, 0)
    index = TrainingSetIndex(train.images, train.ids)
    test = load_fashion_mnist("test")
    reference = test.images[:200]
    novel = test.images[200:240]
    copies = train.images[:40]
    r = novel_frechet_report(torch.cat([copies, novel]), index, reference, seed=0)
    assert r["n_novel"] == 40  # the exact copies are not novel; the held-out images are
    same = frechet_report(novel, reference)
    # the same 40 novel images against 40 of the reference: a real number of the size of the full-set distance
    assert r["frechet_novel"] is not None and 0 < r["frechet_novel"] < 3 * same["frechet_distance"] + 5
    assert novel_frechet_report(copies, index, reference)["frechet_novel"] is None  # nothing novel to score
