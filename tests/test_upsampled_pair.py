"""A pair whose models were trained on their images upsampled: it samples on the fine grid, and everything a
visitor sees or a study scores (images, neighbours, copy moments, sweeps) is at the training images' size."""

from __future__ import annotations

import pytest
import torch

from ambient.cutoff import Cutoff
from ambient.data import upsample_pixels
from ambient.denoiser import build_unet
from ambient.evaluate import generate
from ambient.pair import PairProblem, assemble
from demo.handlers import Handlers, _u8
from demo.pairs import PairRegistry
from demo.tiny_pair import make_tiny_pair
from tests.helpers import Memorizer

TEXT = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def up2(tmp_path_factory):
    """pairs.json of a tiny untrained pair at 64 x 64 (a 2 x 2 stem) over 20 training images of 32 x 32."""
    return make_tiny_pair(tmp_path_factory.mktemp("up2"), name="up2", n=20, sigma_n=4.0, upsample=2)


@pytest.fixture(scope="module")
def H(up2):
    """Handlers over it, its baseline replaced by the ideal denoiser of the upsampled training images."""
    handlers = Handlers(PairRegistry.from_path(up2))
    p = handlers.pair("up2")
    p.baseline = Memorizer(upsample_pixels(p.train.images, 2))
    return handlers


def test_pair_samples_on_the_fine_grid_and_shows_the_training_size(H):
    p = H.pair("up2")
    assert p.upsample == 2 and p.image_shape == (1, 64, 64) and p.data_shape == (1, 32, 32)
    assert torch.equal(p.to_data(upsample_pixels(p.train.images, 2)), p.train.images)
    text = p.describe()
    assert "1x32x32" in text and "sample at 64x64" in text and "sigma_n = 4 here is 2" in text


def test_copies_of_the_upsampled_training_images_are_found_at_their_size(H):
    seen = []
    r = H.generate("up2", "", 3, 4, 8, 1.0, None, "handover", on_step=lambda side, info: seen.append(info))
    assert all(s.image.shape == (32, 32, 1) for s in r.ambient + r.baseline)
    assert all(info["denoised"].shape == (4, 1, 32, 32) for info in seen)
    # the memorizer only makes upsampled training images: averaged back, each is one exactly
    assert [bool(s.verdict.is_copy) for s in r.baseline] == [True] * 4
    assert all(s.verdict.similarity > 0.99 for s in r.baseline)
    assert r.baseline[0].trajectory[-1]["similarity"] > 0.99
    assert not any(s.verdict.similarity > 0.99 for s in r.ambient)  # the untrained network makes noise


def test_uploads_are_compared_at_the_training_images_size(H):
    p = H.pair("up2")
    c = H.check_training_image("up2", 5)
    assert c.verdict.neighbours[0].position == 5
    up = _u8(upsample_pixels(p.train.images[5:6], 2))[0][..., 0]  # a 64 x 64 upload of training image 5
    res = H.check_image("up2", up)
    assert res.query.shape == (32, 32, 1) and res.verdict.neighbours[0].position == 5


def test_library_sweep_and_generate_score_at_the_data_size(H):
    p = H.pair("up2")
    x = generate(p.baseline, None, [0, 1], None, 6, size=32)
    assert x.shape == (2, 1, 32, 32)
    rows = p.sweep_cutoff([1.0, Cutoff.baseline_alone()], [0, 1], None, 4)
    assert rows[-1]["models"] == "the baseline alone" and rows[-1]["rate_similarity"]["0.95"] == 1.0
    lv = H.live_sweep("up2", 2, 2, 2)
    assert lv.rows[-1]["rate_similarity"]["0.95"] == 1.0


def test_models_larger_than_their_images_must_record_the_upsampling(H):
    p = H.pair("up2")
    plain = build_unet(384, 64, 1, (16, 32), meta={"sigma_n": 4.0})  # 64 x 64, trained on what? it does not say
    with pytest.raises(PairProblem, match=r"record training at upsample 1 \(ambient\) and 2 \(baseline\), not 2"):
        assemble(plain, _fine(), p.train, text_model=TEXT)
    odd = type(p.train)(p.train.images[:, :, :24, :24], p.train.labels, p.train.ids, p.train.class_names, "x")
    with pytest.raises(PairProblem, match="training images are"):
        assemble(_fine(), _fine(), odd, text_model=TEXT)


def _fine() -> torch.nn.Module:
    """A 64 x 64 network that records training at upsample 2, as the tiny pair's."""
    return build_unet(384, 64, 1, (16, 32), meta={"train_config": {"upsample": 2}}, patch=2)
