"""The shipped model pair: its files load through the app's code path and sample (quality is measured elsewhere)."""

import json
from pathlib import Path

import pytest
import torch

from ambient.data import load_npz
from ambient.denoiser import EDMDenoiser
from ambient.memorization.neighbours import TrainingSetIndex
from ambient.sampling import sample

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PAIR = ASSETS / "fmnist-100"


def test_pairs_config_names_the_embedded_pair():
    cfg = json.loads((ASSETS / "pairs.json").read_text())
    names = [p["name"] for p in cfg["pairs"]]
    assert cfg["default"] in names
    for p in cfg["pairs"]:
        for key in ("ambient", "baseline", "train_data", "index"):
            assert (ASSETS / p[key]).exists(), f"{p['name']}: {key} -> {p[key]} is missing"


SHIPPED = json.loads((ASSETS / "pairs.json").read_text())["pairs"]


@pytest.mark.parametrize("entry", SHIPPED, ids=[p["name"] for p in SHIPPED])
def test_shipped_models_load_and_sample(entry):
    amb = EDMDenoiser.from_pretrained(ASSETS / entry["ambient"])
    base = EDMDenoiser.from_pretrained(ASSETS / entry["baseline"])
    assert amb.meta["loss"] == "ambient" and amb.meta["sigma_n"] > 0
    assert base.meta["loss"] == "baseline"
    assert amb.meta["train_ids"] == base.meta["train_ids"]  # same data, only the loss differs
    assert amb.meta["steps"] > 0 and base.meta["steps"] > 0  # trained, not the tiny random pair
    cond = torch.zeros(2, amb.cond_dim)
    cond[0, 0] = 1.0
    x = sample(amb, base, [0, 1], amb.image_shape, cond, steps=3, sigma_c=1.0)
    assert x.shape == (2, *amb.image_shape) and torch.isfinite(x).all()
    assert x.std() > 0.05  # not a constant image


def test_shipped_index_matches_training_images():
    train = load_npz(PAIR / "train.npz")
    base = EDMDenoiser.from_pretrained(PAIR / "baseline")
    assert train.ids == base.meta["train_ids"]
    index = TrainingSetIndex.load(PAIR / "index", train.images)
    assert len(index) == len(train)
    sims, pos = index.search(train.images[:5], k=1)
    assert (pos[:, 0] == torch.arange(5).numpy()).all() and (sims[:, 0] > 0.999).all()


def test_shipped_evaluation_and_cards():
    for entry in SHIPPED:
        report = json.loads((ASSETS / entry["sweep"]).with_name("report.json").read_text())
        for name in ("reference", "baseline", "ambient"):
            assert 0 <= report[name]["rate_similarity"]["0.95"] <= 1
        assert len(report["sweep"]) >= 8
        assert (ASSETS / entry["sweep_plot"]).stat().st_size > 10_000
        assert (ASSETS / entry["card"]).is_file(), entry["name"]
        for side in ("ambient", "baseline"):
            card = (ASSETS / entry[side] / "README.md").read_text()
            assert "Reproduce" in card and "ratio test" in card, entry[side]


def test_every_shipped_model_folder_belongs_to_a_pair():
    """A model folder no pair in pairs.json uses is dead weight in the 50 MiB budget (retired pairs leave)."""
    used = {ASSETS / p[side] for p in SHIPPED for side in ("ambient", "baseline")}
    folders = {c.parent for c in ASSETS.rglob("ambient_config.json")}
    assert folders == used, f"model folders no pair uses: {sorted(map(str, folders - used))}"


def test_assets_stay_small():
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total < 50 * 2**20


def test_a_shipped_model_in_half_precision_was_measured_within_tolerance_first():
    """float16 weights only where scripts/half_weights.py measured both sides of every pair using the folder."""
    from safetensors import safe_open

    study = json.loads((PAIR / "studies" / "half_weights.json").read_text())
    root = ASSETS.parent
    for cfg in ASSETS.rglob("ambient_config.json"):
        folder = cfg.parent
        with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as h:
            dtypes = {str(h.get_slice(k).get_dtype()) for k in h.keys()}
        if dtypes == {"F32"}:
            continue
        rel = str(folder.relative_to(root))
        assert dtypes == {"F16"} and rel in study["written"], f"{rel} stores {dtypes} without a measurement"
        measured = [r[side] for r in study["pairs"].values() if "folders" in r for side in ("ambient", "baseline")
                    if r["folders"][side] == rel]  # fmt: skip
        assert measured and all(m["within_tolerance"] for m in measured)
        assert all(m["share_of_bf16"] <= study["tolerance"]["max_share_of_bf16"] for m in measured)


def test_every_shipped_pair_loads_through_the_app_and_is_labelled_honestly():
    from demo.pairs import PairRegistry

    reg = PairRegistry.from_path(ASSETS / "pairs.json")
    assert reg.config_error is None and len(reg.names()) >= 2
    for name in reg.names():
        pair = reg.get(name)  # PairError (with its reason) if anything is missing or inconsistent
        amb, base = pair.ambient.meta, pair.baseline.meta
        assert amb["train_ids"] == base["train_ids"], name
        if amb["steps"] != base["steps"]:  # an unequal-compute pair must say so where visitors choose it
            assert f"{amb['steps']:,} steps" in pair.spec.title, pair.spec.title
        sweep = json.loads((ASSETS / pair.spec.sweep).read_text())
        assert len(sweep["sweep"]) >= 8
        if amb.get("regime") == "high":  # a high-noise-only network is handed over at its sigma_n
            assert min(r["sigma_c"] for r in sweep["sweep"]) >= amb["sigma_n"] - 1e-9


def test_default_pair_generates_through_the_app_at_its_training_images_size():
    from demo.handlers import Handlers
    from demo.pairs import PairRegistry

    reg = PairRegistry.from_path(ASSETS / "pairs.json")
    H = Handlers(reg)
    p = H.pair(reg.default)
    r = H.generate(reg.default, "a sneaker", 3, 2, 3, 1.0, None, "handover")
    c, h, w = p.data_shape
    assert all(s.image.shape == (h, w, c) for s in r.ambient + r.baseline)
    assert all(0 < s.verdict.similarity <= 1 for s in r.ambient + r.baseline)
    assert len(r.ambient[0].trajectory) == 3 and r.ambient[0].trajectory[-1]["position"] in range(len(p.train))
