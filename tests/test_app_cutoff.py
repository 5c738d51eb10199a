"""The app's cutoff on the shipped pairs: each Ambient model runs only where it was trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient.cutoff import Cutoff
from demo import handlers as h
from demo.handlers import Handlers, InputError
from demo.pairs import PairRegistry

CONFIG = Path(__file__).resolve().parents[1] / "assets" / "pairs.json"


@pytest.fixture(scope="module")
def shipped():
    return Handlers(PairRegistry.from_path(CONFIG))


def test_high_noise_pair_defaults_to_a_hand_over_at_sigma_n(shipped):
    p = shipped.pair("fmnist-100-highnoise")
    assert p.regime == "high" and p.sigma_n == pytest.approx(0.5)
    r = shipped.generate("fmnist-100-highnoise", "", 3, 1, 2, 1.0, None, "handover")
    assert r.cutoff == Cutoff(0.5, "handover")  # not sigma_min, below the range it was trained on
    assert h.slider_start(p) == pytest.approx(-0.30103, abs=1e-4)  # log10(0.5)
    assert {t["model"] for t in r.ambient[0].trajectory} == {"ambient", "baseline"}


def test_high_noise_pair_refuses_a_cutoff_below_sigma_n(shipped):
    with pytest.raises(InputError, match="trained only at sigma >= sigma_n = 0.5"):
        shipped.generate("fmnist-100-highnoise", "", 3, 1, 2, 1.0, 0.002, "handover")
    with pytest.raises(InputError, match="trained only at sigma >= sigma_n = 0.5"):
        shipped.generate("fmnist-100-highnoise", "", 3, 1, 2, 1.0, 0.1, "truncate")
    p = shipped.pair("fmnist-100-highnoise")
    assert "not available for this pair" in h.cutoff_label(0.1, p)


def test_one_network_pair_defaults_to_ambient_alone_and_the_right_end_is_the_baseline(shipped):
    name = shipped.registry.default  # one network trained at every noise level
    p = shipped.pair(name)
    assert p.regime == "all"
    r = shipped.generate(name, "", 3, 1, 2, 1.0, None, "handover")
    assert r.cutoff.is_ambient_alone and h.slider_start(p) == h.slider_range(p)[0]
    r = shipped.generate(name, "", 3, 1, 2, 1.0, p.sigma_max, "handover")
    assert r.cutoff.is_baseline_alone
    assert (r.ambient[0].image == r.baseline[0].image).all()  # the baseline alone on both sides, same seed


def test_the_ends_in_the_error_message_act_as_named_for_a_range_with_long_decimals(shipped):
    """A pair whose sigma range is not round (a DDPM schedule's, 0.0291675... to 14.6146...): the ends the error
    message names are the explicit ends when sent back, and a value just inside them is a real hand-over."""
    import dataclasses
    import re

    p = dataclasses.replace(
        shipped.pair(shipped.registry.default), sigma_min=0.029167536646127701, sigma_max=14.614640235900879
    )
    with pytest.raises(InputError) as e:
        h.check_cutoff(15.0, "handover", p)
    m = re.search(r"from ([\d.]+) \(Ambient alone\) to ([\d.]+) \(baseline alone\)", str(e.value))
    assert m, str(e.value)
    lo, hi = float(m.group(1)), float(m.group(2))
    assert (lo, hi) != (p.sigma_min, p.sigma_max)  # rounded for reading
    assert h.check_cutoff(hi, "handover", p).is_baseline_alone
    assert h.check_cutoff(lo, "handover", p).is_ambient_alone
    assert h.check_cutoff(lo, "truncate", p) == Cutoff(0.0, "truncate")  # the full Ambient run
    assert "baseline alone" in h.cutoff_label(hi, p) and "Ambient alone" in h.cutoff_label(lo, p)
    inner = h.check_cutoff(14.6, "handover", p)
    assert inner == Cutoff(14.6, "handover") and inner.owner(p.sigma_max) == "ambient"  # its first step: Ambient
    with pytest.raises(InputError, match="sigma_c must be a finite number from 0.0291675"):
        h.check_cutoff(0.029, "handover", p)
