"""Model pairs from a config: loading, every way a pair can be broken, diffusers pipelines, the app's fallback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ambient.data import ImageDataset
from ambient.denoiser import UNET_CONFIG_NAME, WEIGHTS_NAME
from demo.handlers import Handlers
from demo.pairs import ConfigError, PairError, PairRegistry, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def broken(tiny, tmp_path_factory):
    """A config folder with the good tiny pair and one broken pair per failure mode."""
    src = tiny.parent / "tiny"
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(src, root / "tiny")
    good = json.loads(tiny.read_text())["pairs"][0]
    # corrupt weights
    shutil.copytree(src / "ambient", root / "corrupt")
    (root / "corrupt" / WEIGHTS_NAME).write_bytes(b"\x00garbage" * 10)
    # weights that do not fit the config (wrong shapes)
    shutil.copytree(src / "ambient", root / "wrongshape")
    cfg = json.loads((root / "wrongshape" / UNET_CONFIG_NAME).read_text())
    cfg["block_out_channels"] = [16, 16]
    (root / "wrongshape" / UNET_CONFIG_NAME).write_text(json.dumps(cfg))
    # training images of the wrong size
    ImageDataset(torch.zeros(20, 1, 28, 28)).save_npz(root / "train28.npz")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(src / "ambient", outside / "ambient")

    def variant(name, **kw):
        return {**good, "name": name, "title": name, **kw}

    pairs = [
        good,
        variant("missing", ambient="nowhere/ambient"),
        variant("corrupt", ambient="corrupt"),
        variant("wrongshape", baseline="wrongshape"),
        variant("noindex", index="tiny/no-index-here"),
        variant("escape", ambient=f"../{outside.name}/ambient"),
        variant("hub", kind="diffusers", ambient="hub:google/ddpm-cifar10-32"),
        variant("badtrain", train_data="train28.npz"),
        variant("nosuchkind", kind="stable-cascade"),
        {"name": "incomplete", "kind": "edm", "ambient": "tiny/ambient"},
        variant("dup"),
        variant("dup"),
        variant("typo", ambeint="x"),
        variant("badsigma", sigma_n=-1),
    ]
    (root / "pairs.json").write_text(json.dumps({"default": "tiny", "pairs": pairs}))
    return root / "pairs.json", outside


def test_tiny_pair_loads(tiny):
    reg = PairRegistry.from_path(tiny)
    p = reg.get()
    assert p.name == "tiny" and p.image_shape == (1, 32, 32) and p.cond_dim == 384
    assert p.sigma_n == 1.0 and p.sigma_min == 0.002 and p.sigma_max == 80.0 and len(p.index) == len(p.train) == 20
    assert "sigma_n = 1" in p.describe() and "CPU" in p.describe()
    assert reg.get("tiny") is p  # loaded once


@pytest.mark.parametrize(
    ("name", "problem", "fix"),
    [
        ("missing", "ambient model folder .*nowhere/ambient does not exist", "ambient_config.json \\+ unet/"),
        ("corrupt", "ambient model could not be loaded: .*safetensors", "save_pretrained"),
        ("wrongshape", "baseline model could not be loaded: .*does not match", "save_pretrained"),
        ("noindex", "index folder .*no-index-here does not exist", "Rebuild it"),
        ("escape", "outside the allowed folders", "--allow-dir"),
        ("hub", "HF_HUB_OFFLINE=1", "huggingface-cli download google/ddpm-cifar10-32"),
        ("badtrain", r"training images are \(1, 28, 28\) but the models make \(1, 32, 32\)", "same size"),
        ("nosuchkind", "kind 'stable-cascade' is not supported", "edm"),
        ("dup", "appears twice", "own name"),
        ("typo", "unknown keys \\['ambeint'\\]", "Use only"),
        ("badsigma", "sigma_n.*positive number", "Fix or remove"),
        ("incomplete", '"baseline" is missing', "Add"),
    ],
)
def test_broken_pair_says_what_is_wrong_and_how_to_fix_it(broken, monkeypatch, name, problem, fix):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reg = PairRegistry.from_path(broken[0])
    with pytest.raises(PairError) as e:
        if name in reg.config.errors:
            raise reg.config.errors[name]
        reg.get(name)
    import re

    assert re.search(problem, e.value.problem), e.value.problem
    assert re.search(fix, e.value.fix), e.value.fix
    assert "How to fix" in e.value.markdown()


def test_app_keeps_working_with_the_good_pair_among_broken_ones(broken, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    H = Handlers(PairRegistry.from_path(broken[0]))
    names = H.registry.names()
    assert {"tiny", "missing", "corrupt", "hub", "dup", "typo"} <= set(names)
    for bad in ("missing", "corrupt", "wrongshape", "noindex", "escape", "hub", "badtrain"):
        assert "How to fix" in H.pair_status(bad)
        with pytest.raises(ValueError, match=f"Model pair '{bad}'"):
            H.generate(bad, "", 0, 1, 2)
    r = H.generate("tiny", "", 0, 2, 3)
    assert len(r.ambient) == 2
    assert "20 training images" in H.pair_status("tiny") and "How to fix" not in H.pair_status("tiny")


def test_visitors_see_no_server_paths_but_the_operator_log_has_them(broken, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    H = Handlers(PairRegistry.from_path(broken[0]))
    config_dir = str(Path(broken[0]).resolve().parent)
    for bad in ("missing", "noindex", "escape", "corrupt"):
        with caplog.at_level("WARNING", logger="ambient.demo"):
            status = H.pair_status(bad)
        with pytest.raises(ValueError) as e:
            H.generate(bad, "", 0, 1, 2)
        for shown in (status, str(e.value)):
            assert "How to fix" in shown or "Model pair" in shown
            assert config_dir not in shown and str(Path.home()) + "/" not in shown, shown
    assert "nowhere/ambient does not exist" in H.pair_status("missing")  # still says which folder
    assert config_dir in caplog.text  # the operator's log keeps the full path


def test_allowed_dirs_let_a_pair_load_from_outside(broken):
    cfg, outside = broken
    reg = PairRegistry.from_path(cfg, allowed_dirs=[outside])
    assert reg.get("escape").name == "escape"


def test_config_file_problems_leave_an_empty_registry_with_the_reason(tmp_path):
    reg = PairRegistry.from_path(tmp_path / "nope.json")
    assert reg.names() == [] and "does not exist" in reg.config_error
    with pytest.raises(PairError, match="does not exist.*--config"):
        reg.get()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match='"pairs" list'):
        parse_config([1, 2], tmp_path)
    assert "not readable JSON" in PairRegistry.from_path(tmp_path / "bad.json").config_error


def test_shipped_config_names_the_embedded_pair():
    cfg = load_config(ROOT / "assets" / "pairs.json")
    assert cfg.errors == {} and cfg.default == cfg.specs[0].name == "fmnist-100-64-seed1"  # listed first in the menu
    spec = cfg.specs[0]
    assert spec.kind == "edm" and spec.index and spec.sweep and spec.sweep_plot and spec.text_model


def _tiny_ddpm(folder: Path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)


def test_diffusers_pipeline_pair(tiny, tmp_path):
    _tiny_ddpm(tmp_path / "pipe_a")
    shutil.copytree(tmp_path / "pipe_a", tmp_path / "pipe_b")
    shutil.copy(tiny.parent / "tiny" / "train.npz", tmp_path / "train.npz")
    entry = {"name": "ddpm", "kind": "diffusers", "ambient": "pipe_a", "baseline": "pipe_b", "train_data": "train.npz"}
    (tmp_path / "pairs.json").write_text(json.dumps({"pairs": [entry]}))
    H = Handlers(PairRegistry.from_path(tmp_path / "pairs.json"))
    p = H.pair("ddpm")
    assert p.cond_dim == 0 and p.image_shape == (1, 32, 32) and p.sigma_n is None
    assert 0 < p.sigma_min < 0.1 and p.sigma_max > 20  # the scheduler's own sigma range
    assert any("index" in w for w in p.warnings) and any("sigma_n" in w for w in p.warnings)
    r = H.generate("ddpm", "a photo of a bag", 0, 2, 4, 1.0, p.sigma_max, "handover")
    assert "unconditional: the prompt is ignored" in " ".join(r.notes)
    assert all((a.image == b.image).all() for a, b in zip(r.ambient, r.baseline, strict=True))  # identical nets
    assert np.isfinite([s.verdict.similarity for s in r.ambient]).all()
    # the pipeline folder missing its weights: a clear message
    (tmp_path / "pipe_b" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    H.registry.forget("ddpm")
    with pytest.raises(ValueError, match="baseline model could not be loaded.*DDPM pipeline folder"):
        H.pair("ddpm")


def test_app_falls_back_to_a_tiny_pair_with_a_banner(tmp_path, monkeypatch):
    import app

    monkeypatch.setenv("AMBIENT_CACHE", str(tmp_path / "cache"))
    args = app.parse_args(["--config", str(tmp_path / "missing" / "pairs.json"), "--max-concurrency", "2"])
    H, banner, warning = app.setup(args)
    assert "CPU" in banner
    assert "is not available" in warning and "does not exist" in warning and "untrained" in warning
    assert str(tmp_path) not in warning and "pairs.json is not available" in warning  # no server paths shown
    assert H.registry.default == "tiny-random" and len(H.pair(None).train) == 20
    _, _, none = app.setup(app.parse_args(["--config", str(tmp_path / "cache" / "tiny-pair" / "pairs.json")]))
    assert none == ""
    # a damaged cached fallback pair is rebuilt
    (tmp_path / "cache" / "tiny-pair" / "tiny-random" / "ambient" / WEIGHTS_NAME).write_bytes(b"junk")
    H, _, warning = app.setup(args)
    assert "untrained" in warning and H.pair(None).name == "tiny-random"
    _, _, no_fb = app.setup(app.parse_args(["--config", str(tmp_path / "x.json"), "--no-fallback"]))
    assert "is not available" in no_fb and "untrained" not in no_fb


def test_help_is_fast_and_lists_the_options():
    t = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and time.perf_counter() - t < 10
    for opt in ("--host", "--port", "--share", "--config", "--max-concurrency", "--allow-dir"):
        assert opt in out.stdout
    light = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, app; app.parse_args([]); print('torch' in sys.modules, 'gradio' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert light.stdout.split() == ["False", "False"]  # --help imports neither torch nor gradio
    bad = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--max-concurrency", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_on_device_wrapper_keeps_the_denoiser_face(tiny):
    from demo.pairs import OnDevice

    p = PairRegistry.from_path(tiny).get()
    wrapped = OnDevice(p.ambient, "cpu")
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(wrapped(x, 3.0), p.ambient(x, 3.0))
    assert wrapped.image_shape == (1, 32, 32) and wrapped.cond_dim == 384 and wrapped.meta["sigma_n"] == 1.0


def test_an_unknown_default_pair_is_refused_not_swapped(tmp_path):
    from demo.pairs import ConfigError, PairRegistry, parse_config

    entry = {"name": "a", "ambient": "x", "baseline": "y", "train_data": "t.npz"}
    with pytest.raises(ConfigError, match="'nope', which is not a pair there"):
        parse_config({"default": "nope", "pairs": [entry]}, tmp_path)
    assert parse_config({"pairs": [entry]}, tmp_path).default == "a"  # no default given: the first pair
    broken = {"name": "b", "ambient": "x"}  # missing keys: listed as an error, still the default
    assert parse_config({"default": "b", "pairs": [entry, broken]}, tmp_path).default == "b"
    (tmp_path / "pairs.json").write_text('{"default": "nope", "pairs": []}')
    assert "not a pair there" in PairRegistry.from_path(tmp_path / "pairs.json").config_error


def test_summary_and_card_are_parsed_checked_and_shown(tiny, tmp_path):
    """``summary`` (one line) and ``card`` (a markdown file beside the models) of an entry; ``description`` still
    works for files that have no card; a card that cannot be read falls back to it with a note."""
    from ambient.pairs_config import load_pair

    src = json.loads(tiny.read_text())["pairs"][0]
    entry = {**src, **{k: str(tiny.parent / src[k]) for k in ("ambient", "baseline", "train_data", "index")}}
    entry = {k: v for k, v in entry.items() if k not in ("sweep", "sweep_plot", "frontier", "reference_data")}
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "tiny.md").write_text("## The tiny pair\n\nTwo random networks; *nothing* is learned.\n")

    def spec(**kw):
        cfg = parse_config({"pairs": [{**entry, "name": "p", **kw}]}, tmp_path)
        return cfg.specs[0] if cfg.specs else cfg.errors["p"]

    both = spec(summary="The baseline copies 50 %, the Ambient model 5 %.", card="cards/tiny.md", description="old")
    assert both.summary == "The baseline copies 50 %, the Ambient model 5 %."
    assert both.card_text.startswith("## The tiny pair") and "*nothing*" in both.card_text
    pair = load_pair(both)
    assert pair.summary == both.summary and pair.card_text == both.card_text
    assert "*nothing* is learned" in pair.describe() and "old" not in pair.describe().split("\n\n", 1)[1]
    old = load_pair(spec(description="An older entry, described inline."))
    assert old.card_text == "An older entry, described inline." and old.summary == ""
    assert "An older entry, described inline." in old.describe()

    missing = spec(card="cards/gone.md", description="fallback")
    assert missing.card_text == "fallback"
    with pytest.raises(PairError, match='card "cards/gone.md" cannot be read'):
        missing.read_card()
    assert any("no card" in w for w in load_pair(missing).warnings)
    (tmp_path / "cards" / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(PairError, match="not UTF-8"):
        spec(card="cards/latin1.md").read_card()

    for bad, msg in (
        ({"summary": "two\nlines"}, "one line"),
        ({"summary": "x" * 301}, "one line of at most 300"),
        ({"summary": 3}, '"summary" must be a string'),
        ({"card": "/etc/passwd.md"}, "relative path of a .md file"),
        ({"card": "../outside/card.md"}, "relative path of a .md file"),
        ({"card": "cards/tiny.txt"}, "relative path of a .md file"),
        ({"card": ["cards/tiny.md"]}, '"card" must be a string'),
    ):
        err = spec(**bad)
        assert isinstance(err, PairError) and err.pair == "p", bad
        assert msg in err.problem, (bad, err.problem)
