"""Karras schedule, Euler/Heun samplers, hand-over and truncate cutoffs, guidance, per-seed noise."""

import math

import pytest
import torch

from ambient.cutoff import Cutoff, HandOverDenoiser
from ambient.denoiser import build_unet
from ambient.sampling import (
    CFGDenoiser,
    initial_noise,
    karras_sigmas,
    nfe,
    sample,
    sample_euler,
    sample_heun,
    truncate_sigmas,
)

torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP spin-waits on a busy machine

SHAPE = (1, 8, 8)


def gaussian_denoiser(mu, var):
    """The exact denoiser E[x0 | x0 + sigma eps] of x0 ~ N(mu, diag(var)) (per channel)."""
    mu = torch.as_tensor(mu, dtype=torch.float32).reshape(1, -1, 1, 1)
    var = torch.as_tensor(var, dtype=torch.float32).reshape(1, -1, 1, 1)

    def D(x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)
        return mu + var / (var + s**2) * (x - mu)

    return D


class Recorder:
    """Wraps a denoiser and records (sigma, x, output) of every call."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __call__(self, x, sigma, cond=None):
        out = self.inner(x, sigma, cond)
        self.calls.append((float(torch.as_tensor(sigma).flatten()[0]), x.clone(), out.clone()))
        return out


def never(x, sigma, cond=None):
    raise AssertionError("this model must not be called")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    a = build_unet(0, 8, 1, (8, 16)).eval()
    torch.manual_seed(1)
    b = build_unet(0, 8, 1, (8, 16)).eval()
    return a, b


# ---------------------------------------------------------------- schedule


def test_karras_sigmas():
    s = karras_sigmas(18)
    assert len(s) == 19 and s[-1] == 0
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002)
    assert bool((s[1:] < s[:-1]).all())  # strictly decreasing, into the trailing 0
    i = torch.arange(18, dtype=torch.float64)
    want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(s[:-1].double(), want, rtol=1e-6, atol=0)
    s2 = karras_sigmas(5, 0.1, 10.0, rho=3.0)
    assert float(s2[0]) == pytest.approx(10.0) and float(s2[-2]) == pytest.approx(0.1)
    assert karras_sigmas(1).tolist() == [80.0, 0.0]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_karras_sigmas_rejects_bad_steps(bad):
    with pytest.raises(ValueError):
        karras_sigmas(bad)


def test_karras_sigmas_rejects_bad_range():
    for lo, hi in [(0.0, 80.0), (5.0, 1.0), (0.1, math.inf)]:
        with pytest.raises(ValueError):
            karras_sigmas(10, lo, hi)


def test_truncate_sigmas():
    s = karras_sigmas(10)
    t = truncate_sigmas(s, 1.0)
    assert float(t[-1]) == 1.0 and bool((t[:-1] > 1.0).all())
    assert torch.equal(t[:-1], s[s > 1.0])
    assert torch.equal(truncate_sigmas(s, 80.0), s[:1])  # at sigma_max: the one-step estimate from the noise
    with pytest.raises(ValueError, match="above the schedule"):
        truncate_sigmas(s, 500.0)  # not silently moved to sigma_max
    with pytest.raises(ValueError):
        truncate_sigmas(s, float("nan"))


# ---------------------------------------------------------------- per-seed noise


def test_initial_noise_per_seed():
    a = initial_noise([3, 9, 4], (2, 4, 4), sigma=80.0)
    b = initial_noise([9], (2, 4, 4), sigma=80.0)
    assert torch.equal(a[1], b[0])
    assert not torch.allclose(a[0], a[2])
    torch.testing.assert_close(initial_noise([3], (2, 4, 4), sigma=2.0)[0], a[0] / 40)
    big = initial_noise(range(50), (1, 16, 16), sigma=1.0)
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02  # 12,800 values


def test_same_seed_same_image_whatever_the_batch(pair):
    a, b = pair
    full = sample(a, b, [11, 12, 13], SHAPE, steps=4, sigma_c=1.0)
    alone = sample(a, b, [12], SHAPE, steps=4, sigma_c=1.0)
    other = sample(a, b, [12, 40, 41, 42], SHAPE, steps=4, sigma_c=1.0)
    torch.testing.assert_close(full[1], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(other[0], alone[0], rtol=0, atol=1e-5)
    assert (full[0] - full[1]).abs().max() > 1e-3


# ---------------------------------------------------------------- cutoff modes


def test_handover_extremes_are_the_single_models(pair):
    a, b = pair
    seeds = [0, 1, 2]
    only_a = sample(a, None, seeds, SHAPE, steps=4)
    only_b = sample(b, None, seeds, SHAPE, steps=4)
    assert (only_a - only_b).abs().max() > 1e-2  # two genuinely different models
    for sc in (0.0, 0.001, 0.002, Cutoff.ambient_alone()):  # at or below sigma_min: Ambient alone
        assert torch.equal(sample(a, b, seeds, SHAPE, steps=4, sigma_c=sc), only_a)
    for sc in (math.inf, Cutoff.baseline_alone()):  # the explicit other end
        assert torch.equal(sample(a, b, seeds, SHAPE, steps=4, sigma_c=sc), only_b)
    for sc in (80.5, 1000.0):  # a finite cutoff past sigma_max is refused, not read as "baseline alone"
        with pytest.raises(ValueError, match="baseline_alone"):
            sample(a, b, seeds, SHAPE, steps=4, sigma_c=sc)
    mid = sample(a, b, seeds, SHAPE, steps=4, sigma_c=1.0)
    assert (mid - only_a).abs().max() > 1e-3 and (mid - only_b).abs().max() > 1e-3


def test_handover_routes_by_sigma():
    high, low = Recorder(lambda x, s, c=None: x + 1), Recorder(lambda x, s, c=None: x - 1)
    h = HandOverDenoiser(high, low, 1.0)
    x = torch.zeros(2, 1, 2, 2)
    assert torch.equal(h(x, 3.0), x + 1)
    assert torch.equal(h(x, torch.tensor(1.0)), x + 1)  # sigma == sigma_c belongs to the high model
    assert torch.equal(h(x, torch.tensor([0.999, 0.999])), x - 1)
    assert [c[0] for c in high.calls] == [3.0, 1.0] and [c[0] for c in low.calls] == [pytest.approx(0.999)]

    # inside a full run: every sigma >= sigma_c goes to `high`, the rest to `low`
    high, low = Recorder(gaussian_denoiser(0.0, 0.25)), Recorder(gaussian_denoiser(0.0, 0.25))
    sample(high, low, [0], (1, 2, 2), steps=8, sigma_c=2.0)
    assert high.calls and low.calls
    assert min(c[0] for c in high.calls) >= 2.0 and max(c[0] for c in low.calls) < 2.0
    with pytest.raises(ValueError):
        HandOverDenoiser(high, low, float("nan"))


def test_handover_routes_a_batch_of_mixed_sigmas_row_by_row():
    h = HandOverDenoiser(lambda x, s, c=None: x + 1, lambda x, s, c=None: x - 1, 1.0)
    x = torch.zeros(3, 1, 2, 2)
    out = h(x, torch.tensor([2.0, 0.5, 1.0]))
    assert out[:, 0, 0, 0].tolist() == [1.0, -1.0, 1.0]
    with pytest.raises(ValueError, match="2 sigmas for a batch of 3"):
        h(x, torch.tensor([2.0, 0.5]))


def test_truncate_returns_the_ambient_estimate_at_sigma_c():
    amb = Recorder(gaussian_denoiser([0.2], [0.1]))
    with pytest.raises(ValueError, match="baseline=None"):  # truncate uses no baseline: one given is an error
        sample(amb, never, [0, 1], (1, 3, 3), steps=10, sigma_c=1.5, mode="truncate")
    out = sample(amb, None, [0, 1], (1, 3, 3), steps=10, sigma_c=1.5, mode="truncate")
    sig = [c[0] for c in amb.calls]
    assert min(sig) == pytest.approx(1.5) and sig[-1] == pytest.approx(1.5)
    x_last, d_last = amb.calls[-1][1], amb.calls[-1][2]
    assert torch.equal(out, d_last.clamp(-1, 1))
    torch.testing.assert_close(d_last, gaussian_denoiser([0.2], [0.1])(x_last, 1.5))
    # at sigma_max: the one-step estimate from the initial noise
    amb2 = Recorder(gaussian_denoiser([0.2], [0.1]))
    out2 = sample(amb2, None, [0, 1], (1, 3, 3), steps=10, sigma_c=80.0, mode="truncate")
    assert len(amb2.calls) == 1 and amb2.calls[0][0] == pytest.approx(80.0)
    assert torch.equal(amb2.calls[0][1], initial_noise([0, 1], (1, 3, 3)))
    assert torch.equal(out2, amb2.calls[0][2].clamp(-1, 1))


def test_truncate_at_zero_is_the_full_run(pair):
    """Regression: D(x, 0) of an EDM model is NaN (log 0 in c_noise); a cut at 0 is the whole trajectory."""
    a, b = pair
    out = sample(a, None, [0, 1], SHAPE, steps=4, sigma_c=0.0, mode="truncate")
    assert torch.isfinite(out).all()
    assert torch.equal(out, sample(a, None, [0, 1], SHAPE, steps=4))


def test_bad_arguments(pair):
    a, b = pair
    for kw in (
        {"steps": 0},
        {"steps": -2},
        {"sigma_c": float("nan")},
        {"sigma_c": -1.0},
        {"sigma_c": "1"},
        {"mode": "blend"},
        {"sampler": "ddim"},
        {"cond": torch.zeros(3, 4)},
        {"guidance": float("nan")},
        {"sigma_c": Cutoff(1.0, "truncate"), "mode": "handover"},
    ):
        with pytest.raises(ValueError):
            sample(a, b, [0, 1], SHAPE, **kw)


# ---------------------------------------------------------------- guidance and callbacks


def linear_cond_denoiser(x, sigma, cond=None):
    """D = 0.5 x + per-row shift cond[:, 0] - cond[:, 1]; cond None acts as zeros."""
    if cond is None:
        return 0.5 * x
    return 0.5 * x + (cond[:, 0] - cond[:, 1]).reshape(-1, 1, 1, 1)


def test_cfg_denoiser():
    x = torch.randn(3, 1, 2, 2)
    cond = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    inner = Recorder(linear_cond_denoiser)
    assert torch.equal(CFGDenoiser(inner, 1.0)(x, 0.7, cond), linear_cond_denoiser(x, 0.7, cond))
    assert len(inner.calls) == 1  # scale 1: the conditional model alone, one call

    d_c, d_u = linear_cond_denoiser(x, 0.7, cond), linear_cond_denoiser(x, 0.7, torch.zeros_like(cond))
    for scale in (0.0, 3.0, 7.5):
        got = CFGDenoiser(linear_cond_denoiser, scale)(x, torch.tensor(0.7), cond)
        torch.testing.assert_close(got, d_u + scale * (d_c - d_u))
    # per-sample sigma is duplicated for the doubled batch
    seen = Recorder(linear_cond_denoiser)
    CFGDenoiser(seen, 2.0)(x, torch.tensor([0.1, 0.2, 0.3]), cond)
    assert seen.calls[0][1].shape[0] == 6
    # no condition: nothing to guide
    assert torch.equal(CFGDenoiser(linear_cond_denoiser, 4.0)(x, 0.7, None), 0.5 * x)
    for bad in (-1.0, 21.0, float("nan")):
        with pytest.raises(ValueError):
            CFGDenoiser(linear_cond_denoiser, bad)


def test_sample_with_guidance_uses_the_formula():
    cond = torch.tensor([[0.3, 0.0], [0.0, 0.2]])
    guided = sample(linear_cond_denoiser, None, [0, 1], (1, 2, 2), cond=cond, steps=5, guidance=2.0)
    manual = sample(CFGDenoiser(linear_cond_denoiser, 2.0), None, [0, 1], (1, 2, 2), cond=cond, steps=5)
    plain = sample(linear_cond_denoiser, None, [0, 1], (1, 2, 2), cond=cond, steps=5)
    assert torch.equal(guided, manual)
    assert (guided - plain).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_callback_gets_x0_hat_every_step(sampler):
    D = Recorder(gaussian_denoiser([0.1], [0.2]))
    seen = []
    sample(D, None, [0, 1], (1, 2, 2), steps=6, sampler=sampler, callback=seen.append)
    assert [e["i"] for e in seen] == list(range(6))
    assert [e["sigma"] for e in seen] == pytest.approx(karras_sigmas(6)[:-1].tolist())
    for e in seen:
        torch.testing.assert_close(e["denoised"], gaussian_denoiser([0.1], [0.2])(e["x"], e["sigma"]))
    assert len(D.calls) == nfe(6, sampler)  # Heun: 2 per step, 1 for the last step to 0


# ---------------------------------------------------------------- accuracy on a Gaussian


MU, VAR = [0.3, -0.5], [0.25, 0.04]


def run_gaussian(fn, steps, n=4000):
    """Samples of x0 ~ N(MU, diag(VAR)) from n seeds, and the exact ODE solution from the same starts.

    With the analytic denoiser the probability-flow ODE maps x(80) to mu + sqrt(v / (v + 80^2)) (x(80) - mu).
    """
    x = initial_noise(range(n), (2, 1, 1))
    mu, var = torch.tensor(MU).reshape(1, 2, 1, 1), torch.tensor(VAR).reshape(1, 2, 1, 1)
    exact = mu + (var / (var + 80.0**2)).sqrt() * (x - mu)
    out = fn(gaussian_denoiser(MU, VAR), x, karras_sigmas(steps))
    return out, exact


def check_moments(out, var_tol):
    mean, var = out.mean((0, 2, 3)), out.var((0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor(MU), rtol=0, atol=0.02)  # s.e. <= 0.008
    ratio = var / torch.tensor(VAR)
    assert bool(((ratio - 1).abs() < var_tol).all()), ratio.tolist()  # s.e. of the ratio 0.022


def test_heun_reproduces_gaussian_moments():
    out40, exact = run_gaussian(sample_heun, 40)
    check_moments(out40, 0.08)  # measured ratios 1.03, 1.02
    out18, _ = run_gaussian(sample_heun, 18)
    check_moments(out18, 0.2)  # EDM's 18 steps: ratios 1.13, 1.14
    err18, err40 = (out18 - exact).abs().max(), (out40 - exact).abs().max()
    assert err40 < 0.03 and err40 < err18 / 3  # second order: 0.096 -> 0.017


def test_euler_reproduces_gaussian_moments():
    out100, exact = run_gaussian(sample_euler, 100)
    check_moments(out100, 0.12)  # measured ratios 0.96, 0.93
    out40, _ = run_gaussian(sample_euler, 40)
    err40, err100 = (out40 - exact).abs().max(), (out100 - exact).abs().max()
    assert err100 < 0.08 and err100 < err40 / 2  # first order: 0.122 -> 0.049
    heun40, _ = run_gaussian(sample_heun, 40)
    assert (heun40 - exact).abs().max() < err40 / 4


def test_sample_keeps_gaussian_inside_range():
    """End to end through sample(): a narrow Gaussian well inside [-1, 1], so clamping does not bias it."""
    D = gaussian_denoiser([0.1], [0.04])
    out = sample(D, None, range(2000), (1, 1, 1), steps=40)
    assert float(out.mean()) == pytest.approx(0.1, abs=0.015)  # s.e. 0.0045
    assert float(out.var()) == pytest.approx(0.04, rel=0.1)  # s.e. 3 %


def test_dpmpp_2m_solves_the_gaussian_ode_better_than_euler_and_heun_at_equal_evaluations():
    # Data ~ N(0, s_d^2): D(x, sigma) = x s_d^2 / (s_d^2 + sigma^2), and the probability-flow ODE carries x(sigma_max)
    # to x(0) = x(sigma_max) s_d / sqrt(s_d^2 + sigma_max^2) exactly.
    from ambient.sampling import SAMPLERS, nfe, sample_dpmpp_2m, sample_euler

    s_d, calls = 0.5, []

    def gauss(x, sigma, cond=None):
        calls.append(1)
        return x * s_d**2 / (s_d**2 + torch.as_tensor(sigma, dtype=x.dtype) ** 2)

    x_t = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    exact = x_t * s_d / math.sqrt(s_d**2 + 80.0**2)

    def err(fn, n):
        out = fn(gauss, x_t.clone(), karras_sigmas(n, 0.002, 80.0).double())
        return ((out - exact).abs().max() / exact.abs().max()).item()

    assert err(sample_dpmpp_2m, 18) < err(sample_euler, 18) / 2  # 18 evaluations each
    assert err(sample_dpmpp_2m, 18) < err(sample_heun, 9) / 2  # Heun with 9 sigmas: 17 evaluations
    assert err(sample_dpmpp_2m, 36) < err(sample_dpmpp_2m, 18) / 3  # about second order
    calls.clear()
    sample_dpmpp_2m(gauss, x_t.clone(), karras_sigmas(10, 0.002, 80.0).double())
    assert len(calls) == nfe(10, "dpmpp_2m") == 10
    assert SAMPLERS["dpmpp_2m"] is sample_dpmpp_2m
