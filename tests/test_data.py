"""Fashion-MNIST IDX reading, image folders, .npz files, deterministic subsets and captions."""

import gzip
import random
import struct

import numpy as np
import pytest
import torch

from ambient.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    SYNONYMS,
    ImageDataset,
    balanced_subset,
    caption,
    class_prompt,
    downsample_pixels,
    from_uint8,
    heldout_reference,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
    pad_to,
    to_uint8,
    upsample_pixels,
)

torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP spin-waits on a busy machine

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def fmnist_test():
    return load_fashion_mnist("test")


def idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


@needs_fmnist
def test_fashion_mnist_test_split(fmnist_test):
    ds = fmnist_test
    assert ds.images.shape == (10_000, 1, 32, 32) and ds.images.dtype == torch.float32
    assert float(ds.images.min()) == -1.0 and float(ds.images.max()) == 1.0
    assert ds.labels.shape == (10_000,) and torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.ids == list(range(10_000)) and ds.class_names == FASHION_MNIST_CLASSES
    assert ds.source == "fashion-mnist/test"
    # a 2-pixel border of -1 (black) around the 28 x 28 digits, which are the raw bytes scaled to [-1, 1]
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert bool((ds.images[:, :, border] == -1).all())
    with gzip.open(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10_000, 28, 28)
    torch.testing.assert_close(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(raw.astype(np.float32)) / 127.5 - 1)
    assert load_fashion_mnist("test", size=28).images.shape == (10_000, 1, 28, 28)
    assert torch.equal(load_dataset("fashion-mnist", "test").images, ds.images)


@needs_fmnist
def test_fashion_mnist_train_split():
    ds = load_fashion_mnist("train")
    assert ds.images.shape == (60_000, 1, 32, 32) and torch.bincount(ds.labels).tolist() == [6000] * 10
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


def test_fashion_mnist_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def write_idx_pair(folder, images, labels, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = arr if isinstance(arr, bytes) else idx_bytes(arr)
        if gz:
            with gzip.open(folder / (stem + ".gz"), "wb") as f:
                f.write(data)
        else:
            (folder / stem).write_bytes(data)


def test_idx_files_plain_and_gzipped(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labs = np.array([0, 3, 3, 9, 1], np.uint8)
    for gz in (True, False):
        write_idx_pair(tmp_path / str(gz), imgs, labs, gz)
        ds = load_fashion_mnist("test", tmp_path / str(gz), size=28)
        assert torch.equal(to_uint8_back(ds.images), torch.from_numpy(imgs))
        assert ds.labels.tolist() == [0, 3, 3, 9, 1]


def to_uint8_back(images):
    return torch.from_numpy(to_uint8(images))[..., 0]


def test_truncated_or_foreign_idx_is_a_value_error(tmp_path):
    imgs = np.zeros((4, 28, 28), np.uint8)
    labs = np.zeros(4, np.uint8)
    full = idx_bytes(imgs)
    cases = {
        "body": full[:-100],  # some pixels missing
        "header": full[:9],  # dimension sizes cut off
        "tiny": full[:2],
        "magic": b"\x00\x00\x0d\x03" + full[4:],  # float IDX, not unsigned bytes
    }
    for name, data in cases.items():
        write_idx_pair(tmp_path / name, data, labs)
        with pytest.raises(ValueError):
            load_fashion_mnist("test", tmp_path / name)


def test_pad_to():
    x = torch.zeros(2, 1, 28, 28)
    y = pad_to(x, 32)
    assert y.shape == (2, 1, 32, 32) and float(y[0, 0, 0, 0]) == -1 and float(y[0, 0, 2, 2]) == 0
    assert pad_to(torch.zeros(1, 1, 3, 5), 8, value=0.5)[0, 0, 0, 0] == 0.5
    with pytest.raises(ValueError):
        pad_to(x, 20)


def test_upsample_repeats_pixels_and_downsample_inverts_it():
    x = torch.randn(3, 1, 5, 5)
    up = upsample_pixels(x, 2)
    assert up.shape == (3, 1, 10, 10)
    assert torch.equal(up[:, :, 2:4, 6:8], x[:, :, 1:2, 3:4].expand(3, 1, 2, 2))  # each pixel a 2x2 block
    torch.testing.assert_close(downsample_pixels(up, 5), x)
    assert downsample_pixels(x, 5) is x  # already at that size: untouched
    # a noise field on the fine grid averages down to a quarter of its variance (5,000 values: the estimate is
    # within 0.25 +- 0.005 per standard deviation, not +- 0.04 as with 75)
    noise = torch.randn(200, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    assert 0.2 < downsample_pixels(noise, 5).var().item() < 0.3
    with pytest.raises(ValueError, match="multiple"):
        downsample_pixels(torch.zeros(1, 1, 10, 10), 4)
    with pytest.raises(ValueError, match="positive integer"):
        upsample_pixels(x, 0)


def test_uint8_conversions_round_trip():
    u8 = np.random.default_rng(1).integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    x = from_uint8(u8)
    assert x.shape == (3, 3, 6, 5) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert np.array_equal(to_uint8(x), u8)
    assert from_uint8(np.array([[[0, 255]]], np.uint8)).tolist() == [[[[-1.0, 1.0]]]]


def labelled(n_per_class=20, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * classes
    return ImageDataset(
        torch.rand(n, 1, 4, 4, generator=g) * 2 - 1,
        torch.arange(classes).repeat_interleave(n_per_class)[torch.randperm(n, generator=g)],
        list(range(1000, 1000 + n)),
        [f"c{i}" for i in range(classes)],
        "toy",
    )


def test_balanced_subset():
    ds = labelled()
    a, b = balanced_subset(ds, 12, seed=5), balanced_subset(ds, 12, seed=5)
    assert a.ids == b.ids and torch.equal(a.images, b.images)  # deterministic by seed
    assert torch.bincount(a.labels).tolist() == [3, 3, 3, 3]  # equal per class
    assert balanced_subset(ds, 12, seed=6).ids != a.ids  # another seed, another subset
    assert len(set(a.ids)) == 12 and a.ids == sorted(a.ids)
    for k, i in enumerate(a.ids):  # ids stay the source ids, and index the same images
        assert torch.equal(a.images[k], ds.images[i - 1000]) and a.labels[k] == ds.labels[i - 1000]
    assert torch.bincount(balanced_subset(ds, 14, seed=0).labels).tolist() == [4, 4, 3, 3]
    for bad in (0, 81):
        with pytest.raises(ValueError):
            balanced_subset(ds, bad)
    few = ImageDataset(torch.zeros(22, 1, 2, 2), torch.tensor([0] * 2 + [1] * 20))
    with pytest.raises(ValueError, match="only 2"):
        balanced_subset(few, 12)  # class 0 cannot give its 6
    unlabelled = ImageDataset(ds.images)
    u = balanced_subset(unlabelled, 10, seed=1)
    assert len(u) == 10 and u.ids == balanced_subset(unlabelled, 10, seed=1).ids


@needs_fmnist
def test_balanced_subset_of_fashion_mnist(fmnist_test):
    sub = balanced_subset(fmnist_test, 100, seed=0)
    assert torch.bincount(sub.labels).tolist() == [10] * 10
    assert torch.equal(sub.images, fmnist_test.images[sub.ids])


def test_image_dataset_validation():
    with pytest.raises(ValueError, match="N, C, H, W"):
        ImageDataset(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="differ"):
        ImageDataset(torch.zeros(3, 1, 4, 4), ids=[1, 2])


def test_image_folder(tmp_path):
    from PIL import Image

    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    Image.new("RGB", (40, 20), (255, 255, 255)).save(tmp_path / "cats" / "a.png")  # white, RGB, wide
    Image.new("L", (10, 10), 0).save(tmp_path / "cats" / "b.png")  # black, grey
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "dogs" / "c.jpg")
    (tmp_path / "notes.txt").write_text("not an image")

    ds = load_image_folder(tmp_path, size=16)
    assert ds.images.shape == (3, 1, 16, 16)
    assert ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 1]
    assert bool((ds.images[0] == 1).all()) and bool((ds.images[1] == -1).all())
    # pure red in grey is 0.299 * 255 = 76: (76 / 127.5 - 1), within JPEG error
    assert float(ds.images[2].mean()) == pytest.approx(76 / 127.5 - 1, abs=0.03)
    rgb = load_image_folder(tmp_path, size=8, channels=3)
    assert rgb.images.shape == (3, 3, 8, 8)
    assert float(rgb.images[2, 0].mean()) > 0.9 and float(rgb.images[2, 1].mean()) < -0.9  # red stays red
    assert load_dataset(str(tmp_path), size=16).images.shape == (3, 1, 16, 16)

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (5, 7), 128).save(flat / "x.png")
    f = load_image_folder(flat, size=4)
    assert f.labels is None and f.class_names is None and f.images.shape == (1, 1, 4, 4)

    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG"):
        load_image_folder(tmp_path / "empty")


def test_npz_round_trip(tmp_path):
    u8 = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    ds = ImageDataset(from_uint8(u8), torch.tensor([0, 1, 2, 0, 1, 2]), [5, 9, 11, 40, 41, 99], ["a", "b", "c"], "x")
    path = tmp_path / "sub" / "data.npz"
    ds.save_npz(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.npz"]  # no temporary file left
    back = load_npz(path)
    assert torch.equal(back.images, ds.images)  # exact: the images were uint8-representable
    assert torch.equal(back.labels, ds.labels) and back.ids == ds.ids and back.class_names == ["a", "b", "c"]
    assert load_dataset(str(path)).ids == ds.ids

    bare = ImageDataset(from_uint8(u8))
    bare.save_npz(tmp_path / "bare.npz")
    b2 = load_npz(tmp_path / "bare.npz")
    assert b2.labels is None and b2.class_names is None and b2.ids == list(range(6))

    np.savez(tmp_path / "float.npz", images=np.full((2, 1, 3, 3), 0.25, np.float32))
    assert torch.equal(load_npz(tmp_path / "float.npz").images, torch.full((2, 1, 3, 3), 0.25))
    np.savez(tmp_path / "noimg.npz", labels=np.zeros(3))
    with pytest.raises(ValueError, match="images"):
        load_npz(tmp_path / "noimg.npz")
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "missing.npz")


def test_captions_use_class_synonyms():
    rng = random.Random(0)
    caps = [caption("sneaker", rng) for _ in range(200)]
    used = {s for s in SYNONYMS["sneaker"] if any(s in c for c in caps)}
    assert len(used) == len(SYNONYMS["sneaker"])  # every synonym turns up in 200 draws
    for c in caps:
        assert any(s in c for s in SYNONYMS["sneaker"])
        assert not any(s in c for s in SYNONYMS["dress"])
    assert [caption("bag", random.Random(3)) for _ in range(3)] == [caption("bag", random.Random(3))] * 3
    assert "widget" in caption("widget", random.Random(0))  # unknown classes caption themselves
    assert class_prompt("ankle boot") == "a photo of a ankle boot"
    assert set(SYNONYMS) == set(FASHION_MNIST_CLASSES)


def test_heldout_reference_is_two_disjoint_halves_of_one_balanced_subset(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labs = np.repeat(np.arange(10, dtype=np.uint8), 6)
    write_idx_pair(tmp_path, imgs, labs)
    ref, held = heldout_reference(20, tmp_path)
    assert len(ref) == len(held) == 20 and not set(ref.ids) & set(held.ids)
    # the halves of the class-balanced 2n subset with seed 1: what every shipped evaluation and study scored
    both = balanced_subset(load_fashion_mnist("test", tmp_path), 40, seed=1)
    assert ref.ids + held.ids == both.ids
    assert torch.equal(torch.cat([ref.images, held.images]), both.images)
    assert torch.equal(torch.cat([ref.labels, held.labels]), both.labels)
    assert torch.bincount(torch.cat([ref.labels, held.labels])).tolist() == [4] * 10
    again, _ = heldout_reference(20, tmp_path)
    assert again.ids == ref.ids  # deterministic
    assert heldout_reference(20, tmp_path, seed=2)[0].ids != ref.ids
    assert heldout_reference(30, tmp_path)[1].images.shape == (30, 1, 32, 32)  # the whole split, halved
    with pytest.raises(ValueError, match="at most 30 samples"):
        heldout_reference(31, tmp_path)
    with pytest.raises(ValueError, match="at least 1"):
        heldout_reference(0, tmp_path)


@needs_fmnist
def test_heldout_reference_of_fashion_mnist_is_what_the_shipped_evaluations_scored(fmnist_test):
    ref, held = heldout_reference(1000)
    both = balanced_subset(fmnist_test, 2000, seed=1)  # evaluate_pair's n = 1000 (assets/fmnist-100/eval)
    assert torch.equal(ref.images, both.images[:1000]) and torch.equal(held.images, both.images[1000:])
    with pytest.raises(ValueError, match="at most 5000 samples"):
        heldout_reference(5001)


def test_images_or_blobs_falls_back_to_labelled_synthetic_blobs(monkeypatch):
    from ambient import tiny

    def missing(*args, **kwargs):
        raise FileNotFoundError("no data set here")

    monkeypatch.setattr(tiny, "load_fashion_mnist", missing)
    train, test = tiny.images_or_blobs(12, 0), tiny.images_or_blobs(12, 0, "test")
    assert (
        train.images.shape == (12, 1, 32, 32) and train.source == "synthetic/train" and test.source == "synthetic/test"
    )
    assert set(train.images.unique().tolist()) == {-1.0, 1.0}
    assert train.labels.tolist() == [i % 10 for i in range(12)] and train.class_names == FASHION_MNIST_CLASSES
    assert not torch.equal(train.images, test.images)  # the test split draws other blobs
    assert torch.equal(train.images, tiny.images_or_blobs(12, 0).images)
    with pytest.raises(ValueError, match="at least 1"):
        tiny.images_or_blobs(0, 0)


def test_make_tiny_pair_writes_a_pair_of_the_requested_architecture(tmp_path, monkeypatch):
    import json

    from ambient import tiny
    from ambient.denoiser import load_denoiser

    monkeypatch.setattr(tiny, "load_fashion_mnist", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError()))
    config = tiny.make_tiny_pair(
        tmp_path, name="t", n=10, sigma_n=0.5, reference_n=4, channels=(16, 16, 32), title="T", note="from a test"
    )
    entry = json.loads(config.read_text())["pairs"][0]
    assert entry["name"] == "t" and entry["title"] == "T" and entry["reference_data"] == "t/reference.npz"
    amb, base = load_denoiser(tmp_path / "t" / "ambient"), load_denoiser(tmp_path / "t" / "baseline")
    assert amb.net.unet.config.block_out_channels == base.net.unet.config.block_out_channels == [16, 16, 32]
    assert amb.meta["loss"] == "ambient" and amb.meta["sigma_n"] == 0.5 and base.meta["sigma_n"] is None
    assert amb.meta["note"] == "from a test" and len(amb.meta["train_ids"]) == 10
    assert len(load_npz(tmp_path / "t" / "reference.npz")) == 4
    with pytest.raises(ValueError, match="at least one resolution level"):
        tiny.make_tiny_pair(tmp_path, channels=())
