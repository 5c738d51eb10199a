"""A tiny random model pair (untrained) with its training subset, index and pairs.json: for tests, development,
the app's fallback and the benchmarks' fallback; and the images they are built from."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ambient.data import FASHION_MNIST_CLASSES, ImageDataset, balanced_subset, load_fashion_mnist

# (16, 32), not (16, 16): with one channel per GroupNorm group (16 channels, 16 groups) the UNet's resnets
# normalise the time/text embedding shift away, and the prompt would have no effect at all.
TINY_CHANNELS = (16, 32)


def images_or_blobs(n: int, seed: int, split: str = "train") -> ImageDataset:
    """n class-balanced Fashion-MNIST images of ``split`` (subset seed ``seed``), or, when the data set is not
    installed, n synthetic 32 x 32 blobs (labels cycling through the classes, source ``synthetic/<split>``)."""
    if n < 1:
        raise ValueError(f"the number of images must be at least 1, got {n}")
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
    channels: tuple[int, ...] = TINY_CHANNELS,
    title: str | None = None,
    description: str = "Untrained random networks: their images are noise. For trying the interface only.",
    note: str = "tiny random pair (untrained) from ambient/tiny.py",
) -> Path:
    """Write ``folder/name/{ambient,baseline,train.npz,index}`` and ``folder/pairs.json``; returns the config path.

    ``upsample`` > 1: models that sample at that many times the side through a space-to-depth stem of that side,
    recorded as trained on the images upsampled (as ``--upsample K --patch K``); ``train.npz`` stays 32 x 32.
    ``channels``: the UNet's block_out_channels (the benchmarks' fallback uses the shipped pair's).
    """
    if not channels:
        raise ValueError("channels must name at least one resolution level")
    from ambient.denoiser import build_unet
    from ambient.memorization.neighbours import TrainingSetIndex

    folder = Path(folder)
    root = folder / name
    root.mkdir(parents=True, exist_ok=True)
    train = images_or_blobs(n, seed)
    common = {
        "train_ids": list(train.ids),
        "dataset": train.source,
        "class_names": train.class_names,
        "text_model": text_model,
        "seed": seed,
        "steps": 0,
        "note": note,
    }
    if upsample > 1:
        common["train_config"] = {"image_size": 32, "upsample": upsample, "patch": upsample}
    side = 32 * upsample
    torch.manual_seed(seed)
    amb = build_unet(384, side, 1, channels, meta={**common, "loss": "ambient", "sigma_n": sigma_n}, patch=upsample)
    torch.manual_seed(seed + 1)
    base = build_unet(384, side, 1, channels, meta={**common, "loss": "baseline", "sigma_n": None}, patch=upsample)
    amb.save_pretrained(root / "ambient")
    base.save_pretrained(root / "baseline")
    train.save_npz(root / "train.npz")
    TrainingSetIndex(train.images, list(train.ids)).save(root / "index")
    entry = {
        "name": name,
        "title": title or f"Tiny random pair ({n} images, untrained)",
        "kind": "edm",
        "ambient": f"{name}/ambient",
        "baseline": f"{name}/baseline",
        "train_data": f"{name}/train.npz",
        "index": f"{name}/index",
        "text_model": text_model,
        "description": description,
    }
    if reference_n:
        images_or_blobs(reference_n, seed + 1, "test").save_npz(root / "reference.npz")
        entry["reference_data"] = f"{name}/reference.npz"
    config = folder / "pairs.json"
    config.write_text(json.dumps({"default": name, "pairs": [entry]}, indent=2) + "\n")
    return config
