"""Nearest-neighbour search, the ratio test, persistence and embedders (ambient.memorization.neighbours)."""

import json

import numpy as np
import pytest
import torch

from ambient.data import balanced_subset, load_fashion_mnist
from ambient.memorization.neighbours import (
    EfficientNetEmbedder,
    Embedder,
    PixelEmbedder,
    TrainingSetIndex,
    Verdict,
    get_embedder,
)


@pytest.fixture(scope="module")
def train():
    return balanced_subset(load_fashion_mnist("train"), 300, seed=0)


@pytest.fixture(scope="module")
def heldout_40():
    return balanced_subset(load_fashion_mnist("test"), 40, seed=1)


@pytest.fixture(scope="module")
def pixel_index(train):
    return TrainingSetIndex(train.images, train.ids, "pixels")


def random_images(n, seed, shape=(1, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g) * 2 - 1


def clustered_vectors(n, dim, clusters, seed, spread=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + spread * rng.standard_normal((n, dim))).astype(np.float32)


# --- embedders ------------------------------------------------------------------------------------


def test_pixel_embedder_is_centred_cosine_and_brightness_invariant():
    x = random_images(3, seed=0)
    e = PixelEmbedder()
    out = e.embed(x)
    assert out.shape == (3, 1024) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    a, b = (x[i].flatten().double() for i in (0, 1))
    a, b = a - a.mean(), b - b.mean()
    assert float(out[0] @ out[1]) == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-5)
    assert torch.allclose(e.embed((x + 0.2).clamp(max=5)), out, atol=1e-5)  # a constant shift changes nothing
    with pytest.raises(ValueError, match="shape"):
        e.embed(random_images(1, 0, (3, 32, 32)))


def test_get_embedder_caches_and_lists_valid_names():
    assert get_embedder("pixels") is get_embedder("pixels")
    assert isinstance(get_embedder(), Embedder)
    with pytest.raises(ValueError, match="valid names:.*efficientnet-lite0"):
        get_embedder("sscd")
    assert get_embedder("pixels:3x16x16").dim == 768


def test_hub_embedders_fail_clearly_without_weights(monkeypatch, tmp_path):
    # Empty caches: nothing may be downloaded, so these must refuse with a clear RuntimeError.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.cache/clip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    with pytest.raises(RuntimeError, match="not in the torch hub cache"):
        get_embedder("dinov2:dinov2_vits14")
    with pytest.raises(RuntimeError, match="not on this machine.*never downloads"):
        get_embedder("dinov2:facebook/dinov2-small")
    with pytest.raises(RuntimeError, match="not on this machine.*never downloads"):
        get_embedder("open_clip:ViT-B-32/openai")
    with pytest.raises(RuntimeError, match="no pretrained tag"):
        get_embedder("open_clip:ViT-B-32/no-such-tag")


def test_a_broken_local_dinov2_folder_is_reported_and_bugs_are_not_disguised(monkeypatch, tmp_path):
    config = {"model_type": "dinov2", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 16, "image_size": 14}))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="could not load DINOv2 weights.*SafetensorError"):
        get_embedder(f"dinov2:{tmp_path}")
    import transformers

    def bug(*args, **kwargs):
        raise TypeError("a bug, not a missing or broken checkpoint")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", bug)
    with pytest.raises(TypeError, match="a bug"):
        get_embedder(f"dinov2:{tmp_path}")  # failures are not cached


def test_efficientnet_embedder_offline_normalised_and_instance_sensitive(train):
    e = get_embedder("efficientnet-lite0")
    assert isinstance(e, EfficientNetEmbedder) and e.dim == 1280
    labels = train.labels.tolist()
    picks = [labels.index(c) for c in range(10)]  # one image per class
    src = train.images[picks]
    g = torch.Generator().manual_seed(0)
    noisy = (src + 0.02 * torch.randn(src.shape, generator=g)).clamp(-1, 1)
    a, b = e.embed(src), e.embed(noisy)
    assert a.shape == (10, 1280) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(10), atol=1e-5)
    sims = b @ a.T  # noisy copy of class c against the clean image of every class
    assert (sims.argmax(dim=1) == torch.arange(10)).all()
    assert (sims.diagonal() > 0.9).all()


# --- search ---------------------------------------------------------------------------------------


def test_exact_search_finds_planted_duplicate():
    train = random_images(200, seed=1)
    ids = list(range(1000, 1200))
    index = TrainingSetIndex(train, ids)
    queries = torch.cat([train[[37, 150]], random_images(1, seed=2)])
    sims, pos = index.search(queries, k=3)
    assert sims.shape == (3, 3) and sims.dtype == np.float32 and pos.dtype == np.int64
    assert pos[0, 0] == 37 and pos[1, 0] == 150
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert sims[2, 0] < 0.5  # an unrelated noise image
    assert (np.diff(sims, axis=1) <= 1e-7).all()  # best first
    v = index.verdicts(queries[:1], k=3)[0]
    assert v.neighbours[0].position == 37 and v.neighbours[0].id == 1037 and v.is_copy
    assert v.copy_by_ratio and v.ratio == pytest.approx(0.0, abs=1e-9)


def test_ivf_recall_at_1():
    base = clustered_vectors(4000, 32, 40, seed=0)
    rng = np.random.default_rng(5)  # queries: perturbed database points
    queries = base[rng.choice(len(base), 300, replace=False)] + 0.3 * rng.standard_normal((300, 32)).astype(np.float32)
    flat = TrainingSetIndex.from_embeddings(base, kind="flat")
    ivf = TrainingSetIndex.from_embeddings(base, kind="ivf")
    assert 1 < ivf.nprobe < ivf.nlist  # a real approximate search, not an exhaustive one
    _, exact = flat.search_embeddings(queries, k=1)
    sims, approx = ivf.search_embeddings(queries, k=5)
    recall = float((approx[:, 0] == exact[:, 0]).mean())
    assert recall >= 0.95
    assert (approx >= 0).all()


def test_ivf_fills_short_result_lists_exhaustively():
    base = clustered_vectors(400, 16, 10, seed=1)
    ivf = TrainingSetIndex.from_embeddings(base, kind="ivf", nlist=10, nprobe=1)
    flat = TrainingSetIndex.from_embeddings(base)
    _, pos = ivf.search_embeddings(base[:20], k=150)  # one probed list holds fewer than 150 vectors
    _, exact = flat.search_embeddings(base[:20], k=150)
    assert (pos >= 0).all()
    assert all(set(a) == set(b) for a, b in zip(pos, exact, strict=True))


def test_ivf_nprobe_out_of_range_raises_and_the_default_fits_small_lists():
    base = clustered_vectors(400, 16, 10, seed=1)
    for bad in (0, 11, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"nprobe must be an integer in 1..nlist \(10\)"):
            TrainingSetIndex.from_embeddings(base, kind="ivf", nlist=10, nprobe=bad)
    assert TrainingSetIndex.from_embeddings(base, kind="ivf", nlist=10, nprobe=10).nprobe == 10
    small = TrainingSetIndex.from_embeddings(base, kind="ivf")  # nlist = 400 // 39 = 10 < the default 8 ...
    assert small.nlist == 10 and small.nprobe == 8
    tiny = TrainingSetIndex.from_embeddings(base[:100], kind="ivf")  # ... and 100 // 39 = 2: all lists
    assert tiny.nlist == 2 and tiny.nprobe == 2


def test_from_embeddings_has_no_ratio_test():
    index = TrainingSetIndex.from_embeddings(np.eye(4, dtype=np.float32), ids=[7, 8, 9, 10])
    sims, pos = index.search_embeddings(np.array([[0, 0, 2.0, 0]]), k=2)
    assert pos[0, 0] == 2 and sims[0, 0] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="training images"):
        index.ratio_test(random_images(1, 0))
    with pytest.raises(RuntimeError, match="search_embeddings"):
        index.search(random_images(1, 0), k=1)
    with pytest.raises(ValueError, match="embeddings must be"):
        index.search_embeddings(np.ones((1, 5)), k=1)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(1024), "N, C, H, W"),
        (torch.zeros(2, 3, 32, 32), "training images are"),
        (torch.zeros(2, 1, 28, 28), "training images are"),
        (torch.full((2, 1, 32, 32), float("nan")), "NaN"),
        (np.zeros((2, 1, 32, 32)), "torch.Tensor"),
    ],
)
def test_query_validation(pixel_index, bad, match):
    with pytest.raises(ValueError, match=match):
        pixel_index.search(bad)


@pytest.mark.parametrize("k", [0, 301, -1])
def test_k_validation(pixel_index, train, k):
    with pytest.raises(ValueError, match="k must be in 1..300"):
        pixel_index.search(train.images[:1], k=k)


def test_training_images_validation():
    with pytest.raises(ValueError, match="NaN"):
        TrainingSetIndex(torch.full((3, 1, 32, 32), float("nan")), [0, 1, 2])
    with pytest.raises(ValueError, match="ids"):
        TrainingSetIndex(random_images(3, 0), [0, 1])
    with pytest.raises(ValueError, match="kind"):
        TrainingSetIndex(random_images(3, 0), [0, 1, 2], kind="hnsw")


# --- ratio test -----------------------------------------------------------------------------------


def test_ratio_flags_a_noised_training_image_but_not_held_out_images(pixel_index, train, heldout_40):
    g = torch.Generator().manual_seed(3)
    copies = train.images[[5, 100, 250]] + 0.01 * torch.randn(3, 1, 32, 32, generator=g)
    ratios, nearest = pixel_index.ratio_test(copies)
    assert nearest.tolist() == [5, 100, 250]
    assert (ratios < 0.1).all()  # far below 1/3
    assert all(v.copy_by_ratio for v in pixel_index.verdicts(copies))
    held_ratios, _ = pixel_index.ratio_test(heldout_40.images)
    assert (held_ratios > 1 / 3).all()
    verdicts = pixel_index.verdicts(heldout_40.images)
    assert not any(v.copy_by_ratio for v in verdicts)


def brute_force_ratio(train, queries):
    t = train.reshape(len(train), -1).numpy().astype(np.float64)
    q = queries.reshape(len(queries), -1).numpy().astype(np.float64)
    d = np.sqrt(((q[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    order = np.sort(d, axis=1)
    return order[:, 0] / order[:, 1], d.argmin(1)


@pytest.mark.parametrize("n_train", [2, 5, 400])
def test_ratio_matches_brute_force(n_train):
    train = random_images(n_train, seed=10)
    g = torch.Generator().manual_seed(11)
    queries = torch.cat([random_images(6, seed=12), train[:2] + 0.05 * torch.randn(2, 1, 32, 32, generator=g)])
    index = TrainingSetIndex(train, list(range(n_train)))
    ratios, nearest = index.ratio_test(queries)
    ref_ratio, ref_nearest = brute_force_ratio(train, queries)
    np.testing.assert_allclose(ratios, ref_ratio, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(nearest, ref_nearest)


def test_ratio_of_exact_copy_of_duplicated_image_is_zero():
    train = random_images(4, seed=0)
    train[3] = train[1]
    ratios, nearest = TrainingSetIndex(train, [0, 1, 2, 3]).ratio_test(train[1:2])
    assert ratios[0] == 0.0 and nearest[0] in (1, 3)


# --- persistence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    train = random_images(800, seed=4)
    ids = list(range(5000, 5800))
    index = TrainingSetIndex(train, ids, kind=kind, threshold=0.9)
    queries = torch.cat([train[:5], random_images(5, seed=6)])
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.faiss", "meta.json"]
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["count"] == 800 and meta["dim"] == 1024 and meta["embedder"] == "pixels" and meta["kind"] == kind
    loaded = TrainingSetIndex.load(tmp_path / "idx", train)
    assert len(loaded) == 800 and loaded.ids == ids and loaded.threshold == 0.9
    for a, b in zip(index.search(queries, k=4), loaded.search(queries, k=4), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(index.ratio_test(queries)[0], loaded.ratio_test(queries)[0])
    assert [v.is_copy for v in loaded.verdicts(queries)] == [True] * 5 + [False] * 5
    no_images = TrainingSetIndex.load(tmp_path / "idx", None)  # embeddings only: search works, ratio test not
    np.testing.assert_array_equal(no_images.search(queries, k=4)[1], index.search(queries, k=4)[1])
    with pytest.raises(RuntimeError, match="training images"):
        no_images.ratio_test(queries)


def test_load_errors_are_clear(tmp_path):
    train = random_images(50, seed=7)
    folder = tmp_path / "idx"
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        TrainingSetIndex.load(folder, train)
    TrainingSetIndex(train, list(range(50))).save(folder)
    with pytest.raises(ValueError, match="50 training images but 49"):
        TrainingSetIndex.load(folder, train[:49])
    with pytest.raises(ValueError, match="does not match these training images"):
        TrainingSetIndex.load(folder, random_images(50, seed=8))
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        TrainingSetIndex.load(folder, train)
    meta = json.loads((folder / "meta.json").read_text())
    meta.pop("index_sha256")
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a readable faiss index"):
        TrainingSetIndex.load(folder, train)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainingSetIndex.load(folder, train)
    (folder / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        TrainingSetIndex.load(folder, train)


def test_load_takes_the_construction_path_and_its_checks(tmp_path):
    base = clustered_vectors(400, 16, 10, seed=1)
    built = TrainingSetIndex.from_embeddings(base, ids=list(range(100, 500)), kind="ivf", nlist=10, nprobe=3)
    built.save(tmp_path / "idx")
    loaded = TrainingSetIndex.load(tmp_path / "idx", None)
    assert (loaded.nlist, loaded.nprobe, loaded.index.nprobe, loaded.ids) == (10, 3, 3, built.ids)
    meta_path = tmp_path / "idx" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for change, message in [
        ({"nprobe": 11}, r"nprobe must be an integer in 1..nlist \(10\)"),  # raised, not clamped, as when built
        ({"nlist": 12}, "the faiss index has 10 lists, not nlist=12"),
        ({"kind": "flat"}, "a 'flat' index is a faiss IndexFlatIP, got IndexIVFFlat"),
        ({"threshold": 2}, "threshold is a cosine similarity"),
    ]:
        meta_path.write_text(json.dumps({**meta, **change}))
        with pytest.raises(ValueError, match=message):
            TrainingSetIndex.load(tmp_path / "idx", None)


def test_the_split_modules_are_what_neighbours_re_exports():
    import ambient.memorization.embedders
    import ambient.memorization.neighbours
    import ambient.memorization.verdicts

    assert ambient.memorization.neighbours.Verdict is ambient.memorization.verdicts.Verdict
    assert ambient.memorization.neighbours.Neighbour is ambient.memorization.verdicts.Neighbour
    assert ambient.memorization.neighbours.get_embedder is ambient.memorization.embedders.get_embedder
    assert ambient.memorization.neighbours.PixelEmbedder is ambient.memorization.embedders.PixelEmbedder
    train = random_images(30, seed=3)
    queries = torch.cat([train[:2], random_images(3, seed=4)])
    index = TrainingSetIndex(train)
    direct = ambient.memorization.verdicts.pixel_ratio_test(train.flatten(1), queries.flatten(1))
    for a, b in zip(index.ratio_test(queries), direct, strict=True):
        np.testing.assert_array_equal(a, b)


def test_verdict_is_copy_is_the_similarity_test_unless_the_ratio_test_is_primary():
    v = Verdict(neighbours=[], similarity=0.5, ratio=0.1, copy_by_similarity=False, copy_by_ratio=True)
    assert not v.is_copy
    v = Verdict(neighbours=[], similarity=0.99, ratio=0.9, copy_by_similarity=True, copy_by_ratio=False)
    assert v.is_copy
    v = Verdict(
        neighbours=[], similarity=0.99, ratio=0.9, copy_by_similarity=True, copy_by_ratio=False, primary="ratio"
    )
    assert not v.is_copy  # close in cosine, but as near the second training image as the first: not a copy


def test_the_ratio_test_as_primary_marks_near_exact_copies_only(pixel_index, train, heldout_40):
    g = torch.Generator().manual_seed(4)
    copies = train.images[[5, 100]] + 0.01 * torch.randn(2, 1, 32, 32, generator=g)
    queries = torch.cat([copies, heldout_40.images])
    by_ratio = pixel_index.verdicts(queries, k=1, primary="ratio")
    by_sim = pixel_index.verdicts(queries, k=1)
    assert [v.is_copy for v in by_ratio] == [True, True] + [False] * len(heldout_40)
    assert [v.is_copy for v in by_sim] == [v.copy_by_similarity for v in by_ratio]  # the same figures, another test
    with pytest.raises(ValueError, match="copy test must be one of"):
        pixel_index.verdicts(queries, primary="cosine")
