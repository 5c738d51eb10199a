"""The Fashion-MNIST classifier: persistence, the shipped weights, training (ambient.memorization.classifier)."""

import json

import pytest
import torch

import ambient.memorization.classifier as clf
from ambient.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from ambient.memorization.classifier import (
    DEFAULT_CLASSIFIER_DIR,
    FashionClassifier,
    accuracy,
    load_default_classifier,
    train_classifier,
)


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
    FashionClassifier().save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    del cfg["feature_dim"]
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"lacks \['feature_dim'\]"):
        FashionClassifier.from_pretrained(tmp_path / "c")
    FashionClassifier().save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        FashionClassifier.from_pretrained(tmp_path / "c")


def test_shipped_classifier_is_accurate_as_its_config_says():
    weights = DEFAULT_CLASSIFIER_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 2_000_000
    model = load_default_classifier()
    assert load_default_classifier() is model  # cached
    test = load_fashion_mnist("test")
    assert model.meta["n_test"] == len(test) == 10_000
    measured = accuracy(model, test.images, test.labels)
    assert measured >= 0.88
    assert measured == pytest.approx(model.meta["test_accuracy"], abs=1e-4)  # the stored figure is these weights'


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
    test = load_fashion_mnist("test")
    measured = accuracy(loaded, test.images[:1000], test.labels[:1000])  # the saved weights are the measured ones
    assert measured == pytest.approx(summary["test_accuracy"], abs=1e-4)
