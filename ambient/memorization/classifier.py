"""A small Fashion-MNIST CNN: prompt fidelity (does a sample show the class it was asked for?), and a
feature space that lives on this machine for Frechet distances and nearest-neighbour search.

Inputs are (N, 1, 32, 32) in [-1, 1] (Fashion-MNIST padded to 32x32, as ``ambient.data`` loads it).
Weights are stored as ``model.safetensors`` + ``config.json`` (never pickles); the default ones live in
``assets/classifier`` and are made by ``python scripts/train_classifier.py``.
"""

from __future__ import annotations

import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ambient.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from ambient.denoiser import _atomic_write_dir

DEFAULT_CLASSIFIER_DIR = Path(__file__).resolve().parents[2] / "assets" / "classifier"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "ambient-fashion-classifier"


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionClassifier(nn.Module):
    """Four 3x3 conv blocks (32-64-64-128 channels, three 2x2 max-pools), global average pool, a
    ``feature_dim`` hidden layer (the penultimate features) and a linear head: about 150k parameters."""

    def __init__(
        self,
        channels: tuple[int, ...] | list[int] = (32, 64, 64, 128),
        feature_dim: int = 128,
        num_classes: int = 10,
        image_size: int = 32,
        in_channels: int = 1,
        dropout: float = 0.2,
        classes: list[str] | None = None,
    ):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"channels must list 4 widths, got {list(channels)}")
        c1, c2, c3, c4 = (int(c) for c in channels)
        self.channels = [c1, c2, c3, c4]
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.dropout = float(dropout)
        self.classes = list(classes) if classes is not None else list(FASHION_MNIST_CLASSES[:num_classes])
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes")
        self.body = nn.Sequential(
            _conv(self.in_channels, c1),
            nn.MaxPool2d(2),  # 16x16
            _conv(c1, c2),
            _conv(c2, c3),
            nn.MaxPool2d(2),  # 8x8
            _conv(c3, c4),
            nn.MaxPool2d(2),  # 4x4
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(nn.Linear(c4, self.feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(self.feature_dim, self.num_classes))
        self.meta: dict[str, Any] = {}

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"FashionClassifier expects (N, {want[0]}, {want[1]}, {want[2]}) images, got {tuple(x.shape)}"
            )
        p = next(self.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim): the ReLU hidden layer right before the logits."""
        return self.hidden(self.body(self._check(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes)."""
        return self.head(self.features(x))

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return {
            "channels": self.channels,
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "dropout": self.dropout,
            "classes": self.classes,
        }

    def save_pretrained(self, folder: str | Path) -> None:
        """Write model.safetensors + config.json (architecture, classes, and ``self.meta``: test accuracy etc.)."""
        cfg = {"format": FORMAT, "version": 1, **self.config(), **self.meta}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

        def write(tmp: Path) -> None:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
            for p in (tmp / WEIGHTS_NAME, tmp / CONFIG_NAME):
                os.chmod(p, 0o644)
            os.chmod(tmp, 0o755)  # a temporary folder starts private; this one is shipped

        _atomic_write_dir(Path(folder), write)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> FashionClassifier:
        """Load a classifier written by ``save_pretrained`` (in eval mode)."""
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} not found: a classifier folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                    "(create the default one with 'python scripts/train_classifier.py')"
                )
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
        if cfg.get("format") != FORMAT:
            raise ValueError(f"{cfg_path} is not a FashionClassifier config (format {cfg.get('format')!r})")
        keys = ("channels", "feature_dim", "num_classes", "image_size", "in_channels", "dropout")
        missing_keys = [k for k in keys if k not in cfg]
        if missing_keys:
            raise ValueError(f"{cfg_path} lacks {missing_keys}: rewrite it with save_pretrained")
        arch = {k: cfg[k] for k in keys}
        model = cls(**arch, classes=cfg.get("classes"))
        try:
            state = load_file(str(w_path))
        except SafetensorError as e:
            raise ValueError(f"{w_path} is not a readable safetensors file: {e}") from e
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{w_path} does not match the config: missing {missing}, unexpected {unexpected}")
        model.meta = {k: v for k, v in cfg.items() if k not in arch and k not in ("classes", "format", "version")}
        return model.eval()


@torch.no_grad()
def predict_logits(model: FashionClassifier, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits for many images, in batches, in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    try:
        out = [model(images[i : i + batch]).float().cpu() for i in range(0, len(images), batch)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, model.num_classes)


@torch.no_grad()
def extract_features(model: FashionClassifier, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Penultimate features for many images, in batches, in eval mode."""
    was = model.training
    model.eval()
    try:
        out = [model.features(images[i : i + batch]).float().cpu() for i in range(0, len(images), batch)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, model.feature_dim)


def accuracy(model: FashionClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose argmax class equals the label."""
    pred = predict_logits(model, images).argmax(1)
    return float((pred == labels.cpu()).float().mean())


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation: random horizontal flips and shifts of up to 2 pixels (background is -1)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift per batch: cheap, still varied
    h, w = x.shape[-2:]
    return pad[..., dy : dy + h, dx : dx + w]


def train_classifier(
    out: str | Path | None = None,
    epochs: int = 2,
    batch: int = 128,
    seed: int = 0,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    data_folder: str | Path | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a FashionClassifier on the Fashion-MNIST train split, measure it on the test split, save it.

    AdamW with a one-cycle learning rate, light augmentation (flips, 2-pixel shifts). ``limit`` and
    ``test_limit`` use only the first so many training / test images (for quick tests). Returns the summary that also goes into config.json.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train = load_fashion_mnist("train", data_folder)
    test = load_fashion_mnist("test", data_folder)
    x, y = train.images, train.labels
    if limit is not None:
        x, y = x[:limit], y[:limit]
    tx, ty = test.images[:test_limit], test.labels[:test_limit]
    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    t0 = time.time()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        running, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = perm[step * batch : (step + 1) * batch]
            xb = _augment(x[idx], gen)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            if progress and (step + 1) % 100 == 0:
                print(f"epoch {epoch + 1} step {step + 1}/{steps_per_epoch} loss {running / seen:.4f}", flush=True)
        if progress:
            print(f"epoch {epoch + 1} done: loss {running / seen:.4f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    test_acc = accuracy(model, tx, ty)
    summary = {
        "test_accuracy": round(test_acc, 4),
        "n_test": len(tx),
        "n_train": len(x),
        "epochs": epochs,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "train_seconds": round(time.time() - t0, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": "fashion-mnist (padded to 32x32, [-1, 1])",
    }
    model.meta = dict(summary)
    if out is not None:
        model.save_pretrained(out)
    if progress:
        print(f"test accuracy {test_acc:.4f} on {len(tx)} images", flush=True)
    return summary


@lru_cache(maxsize=1)
def _load_default() -> FashionClassifier:
    return FashionClassifier.from_pretrained(DEFAULT_CLASSIFIER_DIR)


def load_default_classifier() -> FashionClassifier:
    """The shipped classifier from assets/classifier (cached; eval mode)."""
    if not (DEFAULT_CLASSIFIER_DIR / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"no classifier weights in {DEFAULT_CLASSIFIER_DIR}; create them with 'python scripts/train_classifier.py'"
        )
    return _load_default()
