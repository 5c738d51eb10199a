"""One sample against its nearest training image: the images and figures of the comparison view.

Plain numpy and PIL (no gradio): the pixel distances of the ratio test (d1 to the nearest training image,
d2 to the second nearest, both over the whole training set, in the space the index searches), the two
images upscaled by nearest neighbour so their pixels can be seen, their signed difference, and the caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
from PIL import Image

RATIO_THRESHOLD = 1 / 3
VIEW_SIZE = 256


@dataclass
class Comparison:
    """A sample, its two nearest training images by pixel distance, and the ratio test between them."""

    sample: Image.Image  # upscaled, at the searched size
    nearest: Image.Image  # upscaled, same size as ``sample``
    difference: Image.Image  # sample - nearest, signed, upscaled
    d1: float
    d2: float
    ratio: float  # d1 / d2 (NaN with a single training image; 0 when d1 = d2 = 0)
    nearest_position: int
    nearest_id: int
    second_id: int | None
    ratio_threshold: float = RATIO_THRESHOLD

    @property
    def is_copy(self) -> bool:
        """The ratio test: d1 / d2 under the threshold."""
        return bool(self.ratio < self.ratio_threshold)


def to_float(image: np.ndarray) -> np.ndarray:
    """A (H, W, C) uint8 image as a (C, H, W) float64 array in [-1, 1], as the models and the index see it."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3:
        raise ValueError(f"expected a (H, W, C) uint8 image, got {a.dtype} of shape {a.shape}")
    return a.transpose(2, 0, 1).astype(np.float64) / 127.5 - 1.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A (C, H, W) float image in [-1, 1] as (H, W, C) uint8."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"expected a (C, H, W) float image, got shape {a.shape}")
    return np.clip(np.rint((a + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def resize_like(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (H, W, C) uint8 image resized (antialiased) to height x width; unchanged when it already is."""
    a = np.asarray(image)
    if a.shape[:2] == (height, width):
        return a
    mode_in = a[..., 0] if a.shape[-1] == 1 else a
    out = np.asarray(Image.fromarray(np.ascontiguousarray(mode_in)).resize((width, height), Image.LANCZOS))
    return out[..., None] if out.ndim == 2 else out


def pixel_distances(sample: np.ndarray, train: np.ndarray) -> tuple[float, float, int, int | None]:
    """d1, d2 (pixel L2 to the nearest and second-nearest training image) and their positions.

    ``sample`` is (C, H, W), ``train`` (N, C, H, W), both float in the same space; exact, in float64.
    With one training image d2 is NaN and the second position None.
    """
    s = np.asarray(sample, dtype=np.float64).ravel()
    t = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    if len(t) == 0:
        raise ValueError("the training set is empty")
    if t.shape[1] != s.size:
        raise ValueError(f"sample has {s.size} values but each training image {t.shape[1]}: sizes differ")
    d = np.sqrt(((t - s) ** 2).sum(axis=1))
    order = np.argsort(d, kind="stable")
    if len(order) == 1:
        return float(d[order[0]]), float("nan"), int(order[0]), None
    return float(d[order[0]]), float(d[order[1]]), int(order[0]), int(order[1])


def ratio_of(d1: float, d2: float) -> float:
    """d1 / d2 as the ratio test takes it: 0 when both are 0 (a duplicated training image copied)."""
    if d2 != d2:  # NaN
        return float("nan")
    return 0.0 if d2 == 0 else d1 / d2


def difference_image(sample: np.ndarray, nearest: np.ndarray, gain: float = 2.0) -> np.ndarray:
    """Signed pixel difference of two same-size (H, W, C) uint8 images as RGB uint8: white where they agree,
    red where the sample is brighter, blue where it is darker (``gain`` x the difference, clipped)."""
    a, b = np.asarray(sample), np.asarray(nearest)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    diff = (a.astype(np.float64) - b.astype(np.float64)).mean(axis=-1) / 255.0 * gain  # (H, W) in about [-1, 1]
    diff = np.clip(diff, -1.0, 1.0)
    pos, neg = np.clip(diff, 0, 1), np.clip(-diff, 0, 1)
    rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)  # red keeps R, blue keeps B
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def upscale(image: np.ndarray, size: int = VIEW_SIZE) -> Image.Image:
    """A (H, W, C) uint8 image scaled up by an integer factor (nearest neighbour) to about ``size`` pixels high."""
    a = np.asarray(image)
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    im = Image.fromarray(np.ascontiguousarray(a))
    factor = max(1, size // max(1, im.height))
    return im.resize((im.width * factor, im.height * factor), Image.NEAREST)


def compare(
    sample: np.ndarray,
    train: np.ndarray,
    ids: Sequence[int],
    searched: np.ndarray | None = None,
    ratio_threshold: float = RATIO_THRESHOLD,
    size: int = VIEW_SIZE,
) -> Comparison:
    """The comparison of one sample with the training set.

    ``sample``: the sample as shown, (H, W, C) uint8 (a latent pair's decoded image may be larger than the
    training images); ``train``: the training images as the index holds them, (N, C, H, W) float in [-1, 1];
    ``searched``: the sample exactly as the index searched it, (C, H, W) float, when known; otherwise the shown
    image is resized to the training images' size.
    """
    train = np.asarray(train)
    if train.ndim != 4:
        raise ValueError(f"training images must be (N, C, H, W), got shape {train.shape}")
    if len(ids) != len(train):
        raise ValueError(f"{len(ids)} ids for {len(train)} training images")
    c, h, w = train.shape[1:]
    if searched is None:
        searched = to_float(resize_like(sample, h, w))[:c]
    searched = np.asarray(searched, dtype=np.float64)
    d1, d2, p1, p2 = pixel_distances(searched, train)
    shown = to_uint8(searched)
    near = to_uint8(train[p1])
    return Comparison(
        sample=upscale(shown, size),
        nearest=upscale(near, size),
        difference=upscale(difference_image(shown, near), size),
        d1=d1,
        d2=d2,
        ratio=ratio_of(d1, d2),
        nearest_position=p1,
        nearest_id=int(ids[p1]),
        second_id=None if p2 is None else int(ids[p2]),
        ratio_threshold=ratio_threshold,
    )


def caption_markdown(c: Comparison, title: str = "") -> str:
    """What the comparison shows, in words: the two distances, their ratio and the verdict."""
    third = "1/3" if abs(c.ratio_threshold - 1 / 3) < 1e-9 else f"{c.ratio_threshold:g}"
    if c.ratio != c.ratio:
        verdict = "no verdict: the training set has one image, so there is no second distance"
    elif c.is_copy:
        verdict = f"**COPY** by the ratio test: d1/d2 = {c.ratio:.3f} < {third}"
    else:
        verdict = f"**novel** by the ratio test: d1/d2 = {c.ratio:.3f} >= {third}"
    second = f"training image #{c.second_id}" if c.second_id is not None else "none"
    head = f"**{escape(title)}** against training image **#{c.nearest_id}**: " if title else ""
    return (
        f"{head}{verdict}.\n\n"
        f"- d1 = {c.d1:.2f}: pixel distance to the nearest training image (#{c.nearest_id})\n"
        f"- d2 = {c.d2:.2f}: pixel distance to the second nearest ({second})\n\n"
        "Slide over the two images; the difference: white where they agree, red where the sample is brighter, "
        "blue where darker. A copy is an image much closer to one training image than to any other."
    )
