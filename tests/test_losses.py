"""Baseline EDM loss, Ambient loss, fixed noise fields and training sigmas."""

import math

import pytest
import torch

from ambient.losses import ambient_loss, edm_loss, fixed_noise, loss_weight, sample_sigmas

torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP spin-waits on a busy machine

SN = 0.5  # sigma_n


class Spy:
    """A denoiser D(x, sigma, cond) = scale * x that records its inputs."""

    def __init__(self, scale=0.7):
        self.scale = scale
        self.inputs = []

    def __call__(self, x, sigma, cond=None):
        self.inputs.append((x.clone(), torch.as_tensor(sigma).clone(), cond))
        return self.scale * x


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    eta = torch.randn(n, 1, 4, 4, generator=g)
    noise = torch.randn(n, 1, 4, 4, generator=g)
    return x0, eta, noise


def bc(s):
    return s.reshape(-1, 1, 1, 1)


# ---------------------------------------------------------------- fixed noise


def test_fixed_noise_depends_on_index_alone():
    shape = (1, 5, 5)
    a = fixed_noise([0, 1, 2, 3, 4], shape, seed=3)
    b = fixed_noise([4, 2, 0], shape, seed=3)  # other order, other companions
    c = fixed_noise(torch.tensor([[2]]), shape, seed=3)  # a tensor of any shape, alone
    assert torch.equal(b[0], a[4]) and torch.equal(b[1], a[2]) and torch.equal(b[2], a[0])
    assert torch.equal(c[0], a[2])
    assert torch.equal(fixed_noise([7, 7], shape, seed=3)[0], fixed_noise([7, 7], shape, seed=3)[1])
    for i in range(5):  # every index has its own field
        for j in range(i + 1, 5):
            assert not torch.allclose(a[i], a[j])
    assert not torch.allclose(fixed_noise([2], shape, seed=4)[0], a[2])  # and the run seed matters


def test_fixed_noise_is_standard_normal():
    e = fixed_noise(range(200), (1, 16, 16), seed=0)
    assert abs(float(e.mean())) < 0.01  # 51,200 values: standard error 0.0044
    assert abs(float(e.std()) - 1) < 0.01
    with pytest.raises(ValueError, match="non-negative"):
        fixed_noise([-1], (2,))


# ---------------------------------------------------------------- sigmas and weights


def test_loss_weight_formula():
    s = torch.tensor([0.01, 0.5, 3.0])
    want = (s**2 + 0.25) / (s * 0.5) ** 2
    torch.testing.assert_close(loss_weight(s), want)
    assert float(loss_weight(torch.tensor(0.5))) == pytest.approx(8.0)  # (0.25 + 0.25) / 0.0625


def test_sample_sigmas_lognormal():
    s = sample_sigmas(200_000, torch.Generator().manual_seed(0))
    ln = s.double().log()
    assert float(ln.mean()) == pytest.approx(-1.2, abs=0.01)  # standard error 0.0027
    assert float(ln.std()) == pytest.approx(1.2, abs=0.01)
    # method.md: 34 % of training steps land above sigma_n = 0.5, 16 % above 1
    assert float((s >= 0.5).float().mean()) == pytest.approx(0.336, abs=0.005)
    assert float((s >= 1.0).float().mean()) == pytest.approx(0.159, abs=0.005)
    again = sample_sigmas(200_000, torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


def test_sample_sigmas_truncated_is_the_conditional_law():
    lo, hi = 0.5, 80.0
    s = sample_sigmas(100_000, torch.Generator().manual_seed(1), sigma_lo=lo, sigma_hi=hi)
    assert float(s.min()) >= lo and float(s.max()) <= hi

    def cdf(x):
        return 0.5 * (1 + math.erf((math.log(x) + 1.2) / (1.2 * math.sqrt(2))))

    for q in (0.8, 1.5, 4.0):  # P(sigma <= q | lo <= sigma <= hi), within 0.005 (s.e. < 0.0016)
        want = (cdf(q) - cdf(lo)) / (cdf(hi) - cdf(lo))
        assert float((s <= q).float().mean()) == pytest.approx(want, abs=0.005)
    with pytest.raises(ValueError):
        sample_sigmas(0)
    with pytest.raises(ValueError):
        sample_sigmas(5, sigma_lo=2.0, sigma_hi=1.0)


# ---------------------------------------------------------------- losses


def test_edm_loss_input_target_and_weight():
    x0, _, noise = batch()
    sigma = torch.tensor([0.1, 0.3, 0.5, 1.0, 2.0, 10.0])
    spy = Spy()
    cond = torch.randn(6, 3)
    loss = edm_loss(spy, x0, sigma, noise, cond)
    x_in, s_in, c_in = spy.inputs[0]
    torch.testing.assert_close(x_in, x0 + bc(sigma) * noise)
    assert torch.equal(s_in, sigma) and c_in is cond
    want = loss_weight(bc(sigma)) * (0.7 * x_in - x0) ** 2
    torch.testing.assert_close(loss, want)
    assert loss.shape == x0.shape


def test_ambient_equals_edm_below_sigma_n():
    x0, eta, noise = batch()
    sigma = torch.tensor([0.002, 0.05, 0.1, 0.2, 0.3, 0.49])
    a = ambient_loss(Spy(), x0, sigma, SN, eta, noise)
    e = edm_loss(Spy(), x0, sigma, noise)
    torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
    # below sigma_n the fixed noise plays no part
    torch.testing.assert_close(ambient_loss(Spy(), x0, sigma, SN, 5 * eta + 1, noise), e, rtol=1e-6, atol=1e-7)


def test_ambient_above_sigma_n_sees_and_scores_only_x_tn():
    x0, eta, noise = batch()
    sigma = torch.tensor([0.5, 0.7, 1.0, 2.0, 5.0, 80.0])
    s = bc(sigma)
    x_tn = x0 + SN * eta
    spy = Spy()
    loss = ambient_loss(spy, x0, sigma, SN, eta, noise)
    x_in = spy.inputs[0][0]
    # the network input is x_tn + sqrt(sigma^2 - sigma_n^2) eps: the clean image never enters
    torch.testing.assert_close(x_in, x_tn + (s**2 - SN**2).sqrt() * noise, rtol=1e-5, atol=1e-5)
    x_tn_hat = (s**2 - SN**2) / s**2 * (0.7 * x_in) + SN**2 / s**2 * x_in
    torch.testing.assert_close(loss, loss_weight(s) * (x_tn_hat - x_tn) ** 2, rtol=1e-5, atol=1e-6)

    # the target is x_tn: a denoiser whose x_tn_hat equals x_tn scores zero, one returning x0 does not
    def oracle_tn(x, sig, cond=None):
        return (x_tn - SN**2 / s**2 * x) * s**2 / (s**2 - SN**2)

    def oracle_x0(x, sig, cond=None):
        return x0

    hi = slice(1, None)  # at sigma == sigma_n exactly x_tn_hat = x whatever D says
    assert float(ambient_loss(oracle_tn, x0, sigma, SN, eta, noise)[hi].abs().max()) < 1e-8
    assert float(ambient_loss(oracle_x0, x0, sigma, SN, eta, noise)[hi].mean()) > 1e-3
    # and the loss at sigma >= sigma_n does not depend on x0 beyond x_tn = x0 + sigma_n eta
    shift = torch.randn_like(x0)
    same = ambient_loss(Spy(), x0 + SN * shift, sigma, SN, eta - shift, noise)
    torch.testing.assert_close(same, loss, rtol=1e-4, atol=1e-5)


def test_ambient_mixed_batch_routes_each_row():
    x0, eta, noise = batch()
    sigma = torch.tensor([0.1, 2.0, 0.3, 0.9, 0.45, 4.0])
    low = sigma < SN
    a = ambient_loss(Spy(), x0, sigma, SN, eta, noise)
    e = edm_loss(Spy(), x0, sigma, noise)
    torch.testing.assert_close(a[low], e[low])
    assert not torch.allclose(a[~low], e[~low])
    with pytest.raises(ValueError, match="sigma_n"):
        ambient_loss(Spy(), x0, sigma, 0.0, eta, noise)


def test_ambient_loss_learns_the_clean_denoiser_from_fixed_noisy_copies():
    """Gaussian toy data, d = 3, non-isotropic covariance.

    Every training sample i has ONE fixed eta_i (fixed_noise), so the only data the loss ever sees
    above sigma_n is x_tn = x0 + sigma_n eta_i. A linear D(x) = A x + b fitted with the Ambient loss at
    sigma = 1 > sigma_n = 0.5 recovers the clean Tweedie denoiser A* = Sigma (Sigma + sigma^2 I)^-1,
    b* = mu - A* mu (max abs error below 0.03; it is about 0.01 with N = 20,000 and 4 draws of eps each).
    Plain regression onto x_tn instead learns the x_tn denoiser, about 0.23 away from A*.
    """
    g = torch.Generator().manual_seed(0)
    n, k, sigma, d = 20_000, 4, 1.0, 3
    mu = torch.tensor([0.5, -0.3, 0.1])
    chol = torch.tensor([[0.8, 0.0, 0.0], [0.3, 0.4, 0.0], [-0.1, 0.2, 0.2]])
    cov = chol @ chol.T  # eigenvalues about 0.85, 0.12, 0.03
    x0 = mu + torch.randn(n, d, generator=g) @ chol.T
    eta = fixed_noise(range(n), (d,), seed=0)  # one fixed field per sample
    x0, eta = x0.repeat(k, 1), eta.repeat(k, 1)
    eps = torch.randn(n * k, d, generator=g)  # many fresh eps draws on top
    sig = torch.full((n * k,), sigma)

    A = torch.zeros(d, d, requires_grad=True)
    b = torch.zeros(d, requires_grad=True)

    def D(x, s, cond=None):
        return x @ A.T + b

    opt = torch.optim.LBFGS([A, b], lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ambient_loss(D, x0, sig, SN, eta, eps).mean()
        loss.backward()
        return loss

    opt.step(closure)

    a_star = cov @ torch.linalg.inv(cov + sigma**2 * torch.eye(d))
    b_star = mu - a_star @ mu
    assert float((A.detach() - a_star).abs().max()) < 0.03
    assert float((b.detach() - b_star).abs().max()) < 0.03

    # contrast: treating x_tn as clean data (least squares of x_tn on x) learns another function
    x_tn = x0 + SN * eta
    x = x_tn + math.sqrt(sigma**2 - SN**2) * eps
    design = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    w = torch.linalg.lstsq(design, x_tn.double()).solution
    a_naive = w[:d].T.float()
    a_tn = (cov + SN**2 * torch.eye(d)) @ torch.linalg.inv(cov + sigma**2 * torch.eye(d))
    assert float((a_naive - a_tn).abs().max()) < 0.03  # it is E[x_tn | x] ...
    assert float((a_naive - a_star).abs().max()) > 0.15  # ... not E[x0 | x]
