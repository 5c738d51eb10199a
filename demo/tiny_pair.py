"""A tiny random model pair (untrained) with its training subset, index and pairs.json: for tests and development."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# (16, 32), not (16, 16): with one channel per GroupNorm group (16 channels, 16 groups) the UNet's resnets
# normalise the time/text embedding shift away, and the prompt would have no effect at all.
TINY_CHANNELS = (16, 32)


def _images(n: int, seed: int, split: str = "train") -> Any:
    """A balanced Fashion-MNIST subset, or synthetic blobs when the dataset is not installed."""
    from ambient.data import FASHION_MNIST_CLASSES, ImageDataset, balanced_subset, load_fashion_mnist

    try:
        return balanced_subset(load_fashion_mnist(split), n, seed=seed)
    except FileNotFoundError:
        g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        imgs = []
        for _ in range(n):
            cx, cy, r = torch.rand(3, generator=g) * torch.tensor([1.0, 1.0, 0.5]) + torch.tensor([-0.5, -0.5, 0.2])
            imgs.append(torch.where((xx - cx) ** 2 + (yy - cy) ** 2 < r**2, 1.0, -1.0))
        labels = torch.arange(n) % len(FASHION_MNIST_CLASSES)
        return ImageDataset(torch.stack(imgs)[:, None], labels, [], list(FASHION_MNIST_CLASSES), f"synthetic/{split}")


def make_tiny_pair(
    folder: str | Path,
    name: str = "tiny",
    n: int = 20,
    seed: int = 0,
    sigma_n: float = 1.0,
    reference_n: int = 0,
    text_model: str = "all-MiniLM-L6-v2",
    upsample: int = 1,
) -> Path:
    """Write ``folder/name/{ambient,baseline,train.npz,index}`` and ``folder/pairs.json``; returns the config path.

    ``upsample`` > 1: models that sample at that many times the side through a space-to-depth stem of that side,
    recorded as trained on the images upsampled (as ``--upsample K --patch K``); ``train.npz`` stays 32 x 32.
    """
    from ambient.denoiser import build_unet
    from ambient.memorization.neighbours import TrainingSetIndex

    folder = Path(folder)
    root = folder / name
    root.mkdir(parents=True, exist_ok=True)
    train = _images(n, seed)
    common = {
        "train_ids": list(train.ids),
        "dataset": train.source,
        "class_names": train.class_names,
        "text_model": text_model,
        "seed": seed,
        "steps": 0,
        "note": "tiny random pair (untrained) from demo/tiny_pair.py",
    }
    if upsample > 1:
        common["train_config"] = {"image_size": 32, "upsample": upsample, "patch": upsample}
    side = 32 * upsample
    torch.manual_seed(seed)
    amb = build_unet(
        384, side, 1, TINY_CHANNELS, meta={**common, "loss": "ambient", "sigma_n": sigma_n}, patch=upsample
    )
    torch.manual_seed(seed + 1)
    base = build_unet(384, side, 1, TINY_CHANNELS, meta={**common, "loss": "baseline", "sigma_n": None}, patch=upsample)
    amb.save_pretrained(root / "ambient")
    base.save_pretrained(root / "baseline")
    train.save_npz(root / "train.npz")
    TrainingSetIndex(train.images, list(train.ids)).save(root / "index")
    entry = {
        "name": name,
        "title": f"Tiny random pair ({n} images, untrained)",
        "kind": "edm",
        "ambient": f"{name}/ambient",
        "baseline": f"{name}/baseline",
        "train_data": f"{name}/train.npz",
        "index": f"{name}/index",
        "text_model": text_model,
        "description": "Untrained random networks: their images are noise. For trying the interface only.",
    }
    if reference_n:
        _images(reference_n, seed + 1, "test").save_npz(root / "reference.npz")
        entry["reference_data"] = f"{name}/reference.npz"
    config = folder / "pairs.json"
    config.write_text(json.dumps({"default": name, "pairs": [entry]}, indent=2) + "\n")
    return config
