"""The comparison view's maths (demo/compare.py): distances of the ratio test, difference image, upscaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient.memorization.verdicts import pixel_ratio_test
from demo import compare as cmp


def _train(n: int = 6, c: int = 1, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, c, size, size))


def test_distances_match_the_librarys_ratio_test():
    train = _train(10)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.uniform(-1, 1, train.shape[1:])
        d1, d2, p1, p2 = cmp.pixel_distances(q, train)
        ratios, nearest = pixel_ratio_test(
            torch.from_numpy(train).flatten(1).float(), torch.from_numpy(q).flatten()[None].float()
        )
        assert p1 == int(nearest[0]) and p2 != p1
        assert cmp.ratio_of(d1, d2) == pytest.approx(float(ratios[0]), rel=1e-4)
        assert d1 == pytest.approx(np.linalg.norm(q - train[p1])) and d1 <= d2


def test_a_copy_of_a_training_image_is_a_copy_and_a_new_image_is_not():
    train = _train(6)
    ids = [100 + i for i in range(6)]
    copy = cmp.to_uint8(train[4])
    c = cmp.compare(copy, train, ids)
    assert c.is_copy and c.nearest_id == 104 and c.nearest_position == 4 and c.d1 < 0.1 * c.d2
    between = cmp.to_uint8((train[1] + train[2]) / 2)  # halfway between two images: d1 close to d2
    c2 = cmp.compare(between, train, ids)
    assert not c2.is_copy and c2.nearest_id in (101, 102) and c2.ratio > 0.8
    md = cmp.caption_markdown(c, "image 1")
    assert "COPY" in md and "#104" in md and f"d1 = {c.d1:.2f}" in md and f"d2 = {c.d2:.2f}" in md
    assert "novel" in cmp.caption_markdown(c2)


def test_the_searched_image_is_used_when_given():
    train = _train(5)
    ids = list(range(5))
    exact = train[3] + 1e-4
    c = cmp.compare(np.zeros((8, 8, 1), np.uint8), train, ids, searched=exact)  # the shown image is ignored
    assert c.nearest_position == 3 and c.d1 == pytest.approx(np.linalg.norm(exact - train[3]))


def test_a_larger_decoded_image_is_resized_to_the_training_size():
    """A latent pair shows decoded images larger than the index's training images."""
    train = _train(4, c=3, size=16)
    big = np.repeat(np.repeat(cmp.to_uint8(train[2]), 4, axis=0), 4, axis=1)  # 64 x 64, same content
    c = cmp.compare(big, train, [7, 8, 9, 10])
    assert c.nearest_id == 9 and c.is_copy
    assert c.sample.size == c.nearest.size == c.difference.size


def test_difference_image_is_white_where_equal_and_coloured_by_sign():
    a = np.full((2, 2, 1), 128, np.uint8)
    b = a.copy()
    b[0, 0] = 0  # sample brighter here
    b[1, 1] = 255  # sample darker here
    d = cmp.difference_image(a, b)
    assert d.shape == (2, 2, 3) and d.dtype == np.uint8
    assert tuple(d[0, 1]) == (255, 255, 255)
    r, g, bl = (int(v) for v in d[0, 0])
    assert r == 255 and bl < 50 and g < 50  # red
    r, g, bl = (int(v) for v in d[1, 1])
    assert bl == 255 and r < 50  # blue
    with pytest.raises(ValueError, match="differ in shape"):
        cmp.difference_image(a, np.zeros((3, 3, 1), np.uint8))


def test_upscale_is_nearest_neighbour_by_an_integer_factor():
    img = np.array([[[0], [255]], [[255], [0]]], np.uint8)
    big = np.asarray(cmp.upscale(img, 256))
    assert big.shape == (256, 256)
    assert set(np.unique(big)) == {0, 255}  # no blending: the pixels stay visible
    assert big[:128, :128].max() == 0 and big[:128, 128:].min() == 255


def test_bad_input_gets_a_clear_error():
    train = _train(3)
    with pytest.raises(ValueError, match="sizes differ"):
        cmp.pixel_distances(np.zeros((1, 4, 4)), train)
    with pytest.raises(ValueError, match="ids"):
        cmp.compare(np.zeros((8, 8, 1), np.uint8), train, [1, 2])
    with pytest.raises(ValueError, match="uint8"):
        cmp.to_float(np.zeros((8, 8), np.float32))


def test_one_training_image_gives_no_verdict():
    train = _train(1)
    c = cmp.compare(cmp.to_uint8(train[0]), train, [5])
    assert c.second_id is None and not c.is_copy and "no verdict" in cmp.caption_markdown(c)
