"""Training data: Fashion-MNIST IDX files, image folders, .npz; deterministic subsets; captions.

Images are float tensors (N, C, H, W) with pixels in [-1, 1].
"""

from __future__ import annotations

import gzip
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
# Names a person might type for each class; captions draw from these.
SYNONYMS: dict[str, list[str]] = {
    "t-shirt": ["t-shirt", "tee", "top", "short-sleeved shirt"],
    "trouser": ["trousers", "pants", "jeans", "slacks"],
    "pullover": ["pullover", "sweater", "jumper", "knit sweater"],
    "dress": ["dress", "gown", "summer dress", "frock"],
    "coat": ["coat", "jacket", "overcoat", "winter coat"],
    "sandal": ["sandal", "sandals", "flip-flop", "open shoe"],
    "shirt": ["shirt", "button-up shirt", "blouse", "long-sleeved shirt"],
    "sneaker": ["sneaker", "running shoes", "trainers", "sports shoe"],
    "bag": ["bag", "handbag", "purse", "tote bag"],
    "ankle boot": ["ankle boot", "boots", "bootie", "leather boot"],
}
TEMPLATES = [
    "{}",
    "a photo of a {}",
    "a {}",
    "a picture of {}",
    "a black and white photo of a {}",
    "product shot of {}",
]


@dataclass
class ImageDataset:
    """Images in [-1, 1] with optional labels, the ids they carry in their source, and class names."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    ids: list[int] = field(default_factory=list)
    class_names: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if not self.ids:
            self.ids = list(range(len(self.images)))
        if len(self.ids) != len(self.images):
            raise ValueError("ids and images differ in length")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, positions: list[int]) -> ImageDataset:
        """The images at the given positions, keeping their source ids."""
        pos = torch.as_tensor(positions, dtype=torch.long)
        return ImageDataset(
            self.images[pos].clone(),
            None if self.labels is None else self.labels[pos].clone(),
            [self.ids[i] for i in positions],
            self.class_names,
            self.source,
        )

    def save_npz(self, path: str | Path) -> None:
        """Write images (uint8), labels, ids and class names to a .npz file (no pickles)."""
        u8 = to_uint8(self.images)
        arrays = {"images": u8, "ids": np.asarray(self.ids, dtype=np.int64)}
        if self.labels is not None:
            arrays["labels"] = self.labels.numpy().astype(np.int64)
        if self.class_names:
            arrays["class_names"] = np.asarray(self.class_names, dtype=np.str_)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float (N, C, H, W) to uint8 (N, H, W, C)."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, C]) to [-1, 1] float (N, C, H, W)."""
    if arr.ndim == 3:
        arr = arr[..., None]
    return torch.from_numpy(np.array(arr, copy=True)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path} is too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: its header is incomplete")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def pad_to(images: torch.Tensor, size: int, value: float = -1.0) -> torch.Tensor:
    """Pad (N, C, H, W) symmetrically to size x size with ``value`` (black)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top), value=value)


def upsample_pixels(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat each pixel factor x factor times: (N, C, H, W) -> (N, C, factor H, factor W), content unchanged."""
    if factor < 1:
        raise ValueError(f"the upsampling factor must be a positive integer, not {factor}")
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def downsample_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """Average size-aligned blocks back to size x size: the inverse of ``upsample_pixels`` (identity at size)."""
    h, w = images.shape[-2:]
    if h == size and w == size:
        return images
    if h != w or h % size:
        raise ValueError(f"cannot average {h}x{w} images down to {size}x{size}: the side must be a multiple of it")
    return torch.nn.functional.avg_pool2d(images, h // size)


def load_fashion_mnist(split: str = "train", folder: str | Path | None = None, size: int = 32) -> ImageDataset:
    """Fashion-MNIST from its IDX files, padded to ``size`` (the Debian package's folder by default)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = Path(folder) if folder is not None else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    img_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    lab_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lab_path is None:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found in {folder}. Install them with 'bash scripts/setup.sh' or "
            "'apt-get install dataset-fashion-mnist' (files land in /usr/share/datasets/fashion-mnist/) "
            "or pass the folder holding the IDX files."
        )
    imgs = _read_idx(img_path)
    labels = _read_idx(lab_path)
    x = from_uint8(imgs)
    if size != x.shape[-1]:
        x = pad_to(x, size)
    return ImageDataset(
        x, torch.from_numpy(labels.astype(np.int64)), [], list(FASHION_MNIST_CLASSES), f"fashion-mnist/{split}"
    )


def load_image_folder(folder: str | Path, size: int = 32, channels: int = 1) -> ImageDataset:
    """PNG/JPEG files of a folder (sorted by name), resized to size x size; labels from subfolders if any."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ValueError(f"{folder} holds no PNG or JPEG images")
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    mode = "L" if channels == 1 else "RGB"
    arrs, labels = [], []
    for p in files:
        with Image.open(p) as im:
            arrs.append(np.asarray(im.convert(mode).resize((size, size), Image.BICUBIC)))
        if classes:
            labels.append(classes.index(p.parent.name) if p.parent != folder else -1)
    lab = torch.tensor(labels) if classes else None
    return ImageDataset(from_uint8(np.stack(arrs)), lab, [], classes or None, str(folder))


def load_npz(path: str | Path) -> ImageDataset:
    """A .npz with ``images`` (uint8 N,H,W[,C] or float N,C,H,W in [-1,1]) and optional labels/ids/class_names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
            raise ValueError(f"{path} has no 'images' array")
        imgs = z["images"]
        x = from_uint8(imgs) if imgs.dtype == np.uint8 else torch.from_numpy(imgs).float()
        labels = torch.from_numpy(z["labels"].astype(np.int64)) if "labels" in z else None
        ids = z["ids"].astype(np.int64).tolist() if "ids" in z else []
        names = [str(s) for s in z["class_names"]] if "class_names" in z else None
    return ImageDataset(x, labels, ids, names, str(path))


def load_dataset(spec: str, split: str = "train", size: int = 32) -> ImageDataset:
    """'fashion-mnist', 'fashion-mnist:/folder', a .npz file, or an image folder."""
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        folder = spec.split(":", 1)[1] if ":" in spec else None
        return load_fashion_mnist(split, folder, size)
    if spec.endswith(".npz"):
        return load_npz(spec)
    return load_image_folder(spec, size)


def balanced_subset(ds: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """A deterministic subset of n images: equal shares per class when there are labels."""
    if not 0 < n <= len(ds):
        raise ValueError(f"subset size must be in 1..{len(ds)}, got {n}")
    rng = random.Random(seed)
    if ds.labels is None:
        pos = sorted(rng.sample(range(len(ds)), n))
        return ds.subset(pos)
    labels = ds.labels.tolist()
    classes = sorted(set(labels))
    by_class = {c: [i for i, lab in enumerate(labels) if lab == c] for c in classes}
    per, extra = divmod(n, len(classes))
    pos: list[int] = []
    for k, c in enumerate(classes):
        take = per + (1 if k < extra else 0)
        if take > len(by_class[c]):
            raise ValueError(f"class {c} has only {len(by_class[c])} images, {take} requested")
        pos += rng.sample(by_class[c], take)
    return ds.subset(sorted(pos))


HELDOUT_SEED = 1  # subset seed of the held-out test images every shipped evaluation and study used


def heldout_reference(
    n: int, folder: str | Path | None = None, size: int = 32, seed: int = HELDOUT_SEED
) -> tuple[ImageDataset, ImageDataset]:
    """The held-out real images of an evaluation of n samples: ``(reference, held_out)``, n Fashion-MNIST test
    images each, disjoint. Both halves of one class-balanced subset of 2n test images (subset seed 1): samples'
    Frechet distance is measured against ``reference``; ``held_out`` is scored like samples (the rates of a
    generator that never copies)."""
    if n < 1:
        raise ValueError(f"the number of held-out images must be at least 1, got {n}")
    test = load_fashion_mnist("test", folder, size)
    if 2 * n > len(test):
        raise ValueError(
            f"{n} samples need 2 x {n} held-out test images (a reference half and a held-out half), but the test "
            f"split has {len(test)}: use at most {len(test) // 2} samples"
        )
    both = balanced_subset(test, 2 * n, seed=seed)
    return both.subset(list(range(n))), both.subset(list(range(n, 2 * n)))


def caption(class_name: str, rng: random.Random) -> str:
    """A random caption for a class: a template around one of its synonyms."""
    names = SYNONYMS.get(class_name, [class_name])
    return rng.choice(TEMPLATES).format(rng.choice(names))


def class_prompt(class_name: str) -> str:
    """The canonical prompt for a class (used for evaluation)."""
    return f"a photo of a {class_name}"


def training_set_of(model_dir: str | Path) -> ImageDataset:
    """The exact training subset a model was trained on, from the ids and dataset in its config."""
    from ambient.denoiser import read_model_config

    meta = read_model_config(model_dir).get("meta", {})
    ids, source = meta.get("train_ids"), meta.get("dataset", "")
    if not ids:
        raise ValueError(f"{model_dir} does not record its training ids")
    tc = meta.get("train_config", {})
    if source.startswith("fashion-mnist/"):
        full = load_fashion_mnist(source.split("/", 1)[1], size=tc.get("image_size", 32))
    else:
        full = load_dataset(tc.get("data", source), "train", tc.get("image_size", 32))
    pos = {i: k for k, i in enumerate(full.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise ValueError(f"{len(missing)} training ids of {model_dir} are not in {source}")
    return full.subset([pos[i] for i in ids])
