"""Untrusted image files to model inputs (the library side of the app's upload and API)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from ambient import images


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_a_wide_white_image_becomes_a_letterboxed_model_input():
    x = images.image_to_model_input(_png(Image.new("RGB", (64, 32), (255, 255, 255))), (1, 32, 32))
    assert x.shape == (1, 1, 32, 32)
    assert float(x[0, 0, 16, 16]) == pytest.approx(1.0) and float(x[0, 0, 0, 16]) == pytest.approx(-1.0)


def test_bad_files_raise_bad_image_with_a_reason():
    with pytest.raises(images.BadImage, match="not an image"):
        images.image_to_model_input(b"hello", (1, 32, 32))
    with pytest.raises(images.BadImage, match="limit is 0 MB"):
        images.image_to_model_input(_png(Image.new("L", (8, 8))), (1, 32, 32), max_bytes=10)
    with pytest.raises(images.BadImage, match="pixels"):
        images.image_to_model_input(_png(Image.new("L", (100, 100))), (1, 32, 32), max_pixels=99 * 99)
    with pytest.raises(images.BadImage, match="base64"):
        images.decode_base64_image("not base64!")
    assert issubclass(images.BadImage, ValueError)


def test_png_base64_round_trips_the_pixels():
    import numpy as np

    a = (np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 3).astype(np.uint8)
    data = base64.b64decode(images.png_base64(a))
    assert (np.asarray(Image.open(io.BytesIO(data))) == a[..., 0]).all()
    assert images.decode_base64_image("data:image/png;base64," + images.png_base64(a)) == data
