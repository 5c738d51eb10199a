"""Image helpers: tensors in [-1, 1] to PIL images and grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ambient.data import to_uint8


def to_pil(images: torch.Tensor, scale: int = 1) -> list[Image.Image]:
    """(N, C, H, W) in [-1, 1] to PIL images, optionally upscaled by an integer factor (nearest)."""
    out = []
    for a in to_uint8(images):
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        if scale > 1:
            im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        out.append(im)
    return out


def grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2) -> Image.Image:
    """A grid of images with a dark gap between them."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to put in a grid")
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    arr = to_uint8(images)
    h, w, c = arr.shape[1:]
    canvas = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for i, a in enumerate(arr):
        r, q = divmod(i, ncol)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = a
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def save_grid(images: torch.Tensor, path: str | Path, ncol: int | None = None) -> Path:
    """Write a PNG grid of the images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, ncol).save(path)
    return path
