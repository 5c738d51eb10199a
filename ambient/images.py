"""Image helpers: tensors in [-1, 1] to PIL images, grids and PNGs; untrusted image files to model inputs."""

from __future__ import annotations

import base64
import binascii
import io
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ambient.data import to_uint8

MAX_BYTES = 20 * 2**20
MAX_PIXELS = 4096 * 4096
# What PIL's decoders raise on a broken or hostile file (PIL.UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, KeyError)


class BadImage(ValueError):
    """An image that cannot be read or converted; the message says why, in words for a person."""


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


def open_image(source: Any, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A PIL image from a path, bytes or a base64 / data-URL string, size-checked before decoding."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    if isinstance(source, bytes | bytearray):
        if len(source) > max_bytes:
            raise BadImage(f"The file is {len(source) / 2**20:.1f} MB; the limit is {max_bytes >> 20} MB.")
        fp: Any = io.BytesIO(source)
    elif isinstance(source, str | Path):
        p = Path(source)
        if not p.is_file():
            raise BadImage("The uploaded file could not be found on the server; upload it again.")
        if p.stat().st_size > max_bytes:
            raise BadImage(f"The file is {p.stat().st_size / 2**20:.1f} MB; the limit is {max_bytes >> 20} MB.")
        fp = p
    else:
        raise BadImage(f"Expected an image file, got {type(source).__name__}.")
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as e:  # PIL refuses sizes far above ours before we can look at them
        raise BadImage(
            f"The image has too many pixels to be decoded safely; the limit is 4096x4096 ({max_pixels:,})."
        ) from e
    except DECODE_ERRORS as e:  # any decoder failure on an untrusted file means: not a readable image
        raise BadImage("This file is not an image that can be read (use PNG, JPEG, WebP, BMP or GIF).") from e
    w, h = im.size
    if w * h > max_pixels:
        raise BadImage(f"The image is {w}x{h} = {w * h:,} pixels; the limit is 4096x4096 ({max_pixels:,}).")
    if w < 1 or h < 1:
        raise BadImage("The image is empty (0 pixels).")
    try:
        im.load()
    except DECODE_ERRORS as e:  # truncated data, broken chunks, decoder errors
        raise BadImage(f"The image file is truncated or corrupt and cannot be decoded ({e}).") from e
    return im


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images to 8 bits by their value range (PIL's own conversion clips them)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if im.mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im


def image_to_model_input(
    source: Any, shape: Sequence[int], max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> torch.Tensor:
    """Any readable image as a (1, C, H, W) tensor in [-1, 1]: oriented, flattened on black, resized with its
    aspect ratio kept and padded with black (the training images' background)."""
    from ambient.data import from_uint8

    c, h, w = (int(s) for s in shape)
    im = open_image(source, max_bytes, max_pixels)
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    try:
        im = ImageOps.exif_transpose(im)
    except DECODE_ERRORS:  # broken EXIF: keep the pixels as they are
        pass
    mode = im.mode
    try:
        im = to_8bit(im)
        if im.mode in ("P", "PA", "LA", "RGBA") or "transparency" in im.info:
            im = im.convert("RGBA")
            canvas = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(canvas, im)
        im = im.convert("L" if c == 1 else "RGB")
    except (ValueError, OSError) as e:  # colour modes PIL cannot convert (LAB, HSV, ...)
        raise BadImage(
            f"The image's colour mode {mode} cannot be converted to {'greyscale' if c == 1 else 'RGB'} ({e}); "
            "save it as an ordinary RGB or greyscale PNG or JPEG."
        ) from e
    scale = min(w / im.width, h / im.height)
    size = (max(1, min(w, round(im.width * scale))), max(1, min(h, round(im.height * scale))))
    im = im.resize(size, Image.LANCZOS if scale < 1 else Image.BICUBIC)
    canvas = Image.new(im.mode, (w, h), 0)
    canvas.paste(im, ((w - size[0]) // 2, (h - size[1]) // 2))
    arr = np.asarray(canvas, dtype=np.uint8)
    return from_uint8(arr[None])


def decode_base64_image(data: Any, max_bytes: int = MAX_BYTES) -> bytes:
    """Bytes of a base64 string or data URL (``data:image/png;base64,...``)."""
    if not isinstance(data, str) or not data.strip():
        raise BadImage("image must be a non-empty base64 string (or a data: URL) of a PNG/JPEG file.")
    if len(data) > max_bytes * 4 // 3 + 1024:
        raise BadImage(f"The image is larger than {max_bytes >> 20} MB.")
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage("image is not valid base64.") from e


def upscale(image: np.ndarray, size: int = 128) -> Image.Image:
    """A (H, W, C) uint8 image as a PIL image scaled by nearest neighbour to ``size`` pixels high."""
    a = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    im = Image.fromarray(np.ascontiguousarray(a))
    factor = max(1, size // max(1, im.height))
    return im.resize((im.width * factor, im.height * factor), Image.NEAREST)


def png_base64(image: np.ndarray) -> str:
    """A (H, W, C) uint8 image as base64 PNG text at its own size."""
    buf = io.BytesIO()
    upscale(image, image.shape[0]).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
