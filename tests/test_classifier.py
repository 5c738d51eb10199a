"""The Fashion-MNIST classifier: persistence, the shipped weights, training (ambient.classifier)."""

import json

import pytest
import torch

import ambient.classifier as clf
from ambient.classifier import (
    DEFAULT_CLASSIFIER_DIR,
    FashionClassifier,
    accuracy,
    load_default_classifier,
    train_classifier,
)
from ambient.data import FASHION_MNIST_CLASSES, balanced_subset, load_fashion_mnist


@pytest.fixture(scope="module")
def test_1000():
    return balanced_subset(load_fashion_mnist("test"), 1000, seed=0)


def test_round_trip_gives_identical_logits_and_config(tmp_path):
    torch.manual_seed(0)
    model = FashionClassifier().eval()
    model.meta = {"test_accuracy": 0.5}
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    model.save_pretrained(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["classes"] == FASHION_MNIST_CLASSES and cfg["test_accuracy"] == 0.5
    loaded = FashionClassifier.from_pretrained(tmp_path / "c")
    assert not loaded.training
    assert torch.equal(model(x), loaded(x))
    assert torch.equal(model.features(x), loaded.features(x))
    assert loaded.meta["test_accuracy"] == 0.5


def test_shapes_and_input_validation():
    model = FashionClassifier().eval()
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 300_000
    x = torch.zeros(3, 1, 32, 32)
    assert model(x).shape == (3, 10) and model.features(x).shape == (3, model.feature_dim)
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        model(torch.zeros(3, 1, 28, 28))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_classifier.py"):
        FashionClassifier.from_pretrained(tmp_path / "missing")
    FashionClassifier().save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a FashionClassifier config"):
        FashionClassifier.from_pretrained(tmp_path / "c")


def test_shipped_classifier_is_accurate(test_1000):
    weights = DEFAULT_CLASSIFIER_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 2_000_000
    model = load_default_classifier()
    assert load_default_classifier() is model  # cached
    assert model.meta["test_accuracy"] >= 0.88  # measured on all 10,000 test images at training time
    assert accuracy(model, test_1000.images, test_1000.labels) >= 0.85


def test_load_default_classifier_explains_how_to_create_it(monkeypatch, tmp_path):
    monkeypatch.setattr(clf, "DEFAULT_CLASSIFIER_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="scripts/train_classifier.py"):
        load_default_classifier()


def test_train_classifier_learns_and_saves(tmp_path):
    torch.set_num_threads(1)
    summary = train_classifier(tmp_path / "c", epochs=2, batch=64, limit=1024, test_limit=1000, progress=False)
    assert summary["n_train"] == 1024 and summary["n_test"] == 1000
    assert summary["test_accuracy"] > 0.4  # chance is 0.1
    loaded = FashionClassifier.from_pretrained(tmp_path / "c")
    assert loaded.meta["test_accuracy"] == summary["test_accuracy"]
