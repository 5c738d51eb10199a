"""The cutoff type: explicit ends, the high-noise-only rule, routing, schedules, JSON rows."""

from __future__ import annotations

import math

import pytest
import torch

from ambient.cutoff import Cutoff, HandOverDenoiser
from ambient.sampling import karras_sigmas, nfe


def test_the_two_ends_are_explicit():
    assert Cutoff.ambient_alone().is_ambient_alone and not Cutoff.ambient_alone().is_baseline_alone
    assert Cutoff.baseline_alone().is_baseline_alone and not Cutoff.baseline_alone().is_ambient_alone
    assert Cutoff.baseline_alone().to_json() is None and Cutoff(0.5).to_json() == 0.5
    assert Cutoff(0.5).label() == "Ambient for sigma >= 0.5, baseline below"
    assert Cutoff.baseline_alone().label() == "the baseline alone"


def test_default_cutoff_follows_the_models_regime():
    assert Cutoff.default_for("high", 0.5) == Cutoff(0.5, "handover")
    assert Cutoff.default_for("all", 2.0) == Cutoff.ambient_alone()
    assert Cutoff.default_for(None, None) == Cutoff.ambient_alone()
    with pytest.raises(ValueError, match="sigma_n"):
        Cutoff.default_for("high", None)


def test_a_high_noise_only_model_is_never_asked_below_its_sigma_n():
    for bad in (Cutoff.ambient_alone(), Cutoff(0.002), Cutoff(0.3), Cutoff(0.3, "truncate")):
        with pytest.raises(ValueError, match="trained only at sigma >= sigma_n = 0.5"):
            bad.check("high", 0.5)
    for ok in (Cutoff(0.5), Cutoff(2.0), Cutoff.baseline_alone(), Cutoff(1.0, "truncate")):
        assert ok.check("high", 0.5, 0.002, 80.0) is ok
    Cutoff.ambient_alone().check("all", 2.0)  # a one-network model covers every sigma


def test_bad_cutoffs_raise():
    for args in ((float("nan"),), (-1.0,), ("1",), (True,), (1.0, "blend"), (math.inf, "truncate")):
        with pytest.raises(ValueError):
            Cutoff(*args)
    with pytest.raises(ValueError, match="baseline_alone"):
        Cutoff(81.0).check(sigma_max=80.0)


def test_denoiser_routes_and_refuses_what_makes_no_sense():
    a, b = (lambda x, s, c=None: x + 1), (lambda x, s, c=None: x - 1)
    assert Cutoff.ambient_alone().denoiser(a, b) is a
    assert Cutoff.baseline_alone().denoiser(a, b) is b
    assert isinstance(Cutoff(1.0).denoiser(a, b), HandOverDenoiser)
    with pytest.raises(ValueError, match="needs a baseline"):
        Cutoff(1.0).denoiser(a, None)
    with pytest.raises(ValueError, match="baseline=None"):
        Cutoff(1.0, "truncate").denoiser(a, b)
    assert Cutoff(1.0).owner(1.0) == "ambient" and Cutoff(1.0).owner(0.99) == "baseline"
    assert Cutoff(1.0, "truncate").owner(0.1) == "ambient"


def test_schedule_slices_for_truncate_only():
    s = karras_sigmas(10)
    assert torch.equal(Cutoff(1.0).schedule(s), s)
    t = Cutoff(1.0, "truncate").schedule(s)
    assert float(t[-1]) == 1.0 and torch.equal(t[:-1], s[s > 1.0])
    assert torch.equal(Cutoff(0.0, "truncate").schedule(s), s)


def test_rows_written_before_the_type_read_back():
    assert Cutoff.from_row({"sigma_c": 80.8}, 80.0).is_baseline_alone  # the old 1.01 x sigma_max spelling
    assert Cutoff.from_row({"sigma_c": None}).is_baseline_alone
    assert Cutoff.from_row({"sigma_c": 0.5}, 80.0) == Cutoff(0.5)


def test_nfe_refuses_an_unknown_sampler():
    assert nfe(18, "heun") == 35 and nfe(18, "euler") == 18
    with pytest.raises(ValueError, match="sampler"):
        nfe(18, "bogus")


def test_band_denoiser_gives_each_band_its_model():
    from ambient.sampling import BandDenoiser

    calls = []

    def model(name):
        return lambda x, s, c=None: calls.append((name, float(torch.as_tensor(s).flatten()[0]))) or x

    d = BandDenoiser([(2.0, model("high")), (0.5, model("mid")), (0.0, model("low"))])
    for s in (80.0, 2.0, 1.9, 0.5, 0.49, 0.002):
        d(torch.zeros(1, 1, 2, 2), s)
    assert [c[0] for c in calls] == ["high", "high", "mid", "mid", "low", "low"]
    for bad in ([(2.0, model("a")), (0.5, model("b"))], [(0.5, model("a")), (2.0, model("b")), (0.0, model("c"))]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            BandDenoiser(bad)
    with pytest.raises(ValueError, match="one sigma per call"):
        d(torch.zeros(2, 1, 2, 2), torch.tensor([3.0, 0.1]))
