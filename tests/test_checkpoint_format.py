"""Model folders in diffusers' shape: ``unet/`` loads with ``UNet2DModel.from_pretrained``; the older layout
(config.json + model.safetensors) still loads and converts to the new one with identical outputs."""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from ambient.denoiser import (
    CARD_NAME,
    CONFIG_NAME,
    LEGACY_CONFIG_NAME,
    LEGACY_WEIGHTS_NAME,
    TEXT_PROJ_NAME,
    UNET_CONFIG_NAME,
    WEIGHTS_NAME,
    DDPMAdapter,
    EDMDenoiser,
    build_unet,
    is_model_dir,
    load_denoiser,
    read_model_config,
)

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
SHIPPED = sorted(p.parent for p in ASSETS.rglob(CONFIG_NAME) if not any(s.startswith(".") for s in p.parts))
META = {"loss": "ambient", "sigma_n": 1.0, "train_ids": [3, 1, 4], "dataset": "fashion-mnist/train", "steps": 7}


def _converter():
    spec = importlib.util.spec_from_file_location("convert_checkpoints", ROOT / "scripts" / "convert_checkpoints.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny(cond_dim: int = 6, seed: int = 0, meta: dict | None = None) -> EDMDenoiser:
    torch.manual_seed(seed)
    m = build_unet(cond_dim, 8, 1, (8, 16), meta=dict(META if meta is None else meta)).eval()
    with torch.no_grad():  # every weight away from its initial value, so a partial load would show
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return m


def fixed_input(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.tensor([0.002, 0.3, 2.0, 80.0])
    x = torch.randn(4, *model.image_shape, generator=g) * (1 + sigma).view(-1, 1, 1, 1)
    cond = torch.randn(4, model.cond_dim, generator=g) if model.cond_dim else None
    return x, sigma, cond


@torch.no_grad()
def outputs(model, seed: int = 0) -> torch.Tensor:
    x, sigma, cond = fixed_input(model, seed)
    return torch.stack([model(x, sigma, cond), model(x, sigma, None)])


@torch.no_grad()
def unet_output(unet, model) -> torch.Tensor:
    """The raw UNet on the input the EDM wrapper ``model`` gives it."""
    x, sigma, cond = fixed_input(model)
    labels = model.net.cond_proj(cond) if model.cond_dim else None
    c_in = 1 / (sigma.view(-1, 1, 1, 1) ** 2 + model.sigma_data**2).sqrt()
    x_in = c_in * x
    if model.net.patch > 1:  # a space-to-depth stem: the UNet sees each patch x patch block as channels
        x_in = torch.nn.functional.pixel_unshuffle(x_in, model.net.patch)
    return unet(x_in, sigma.log() / 4 * model.net.time_scale, class_labels=labels).sample


def write_legacy(model: EDMDenoiser, folder: Path) -> Path:
    """A model folder as save_pretrained wrote it before: nested config.json, one prefixed model.safetensors."""
    folder.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in model.net.state_dict().items()}
    save_file(state, str(folder / LEGACY_WEIGHTS_NAME))
    (folder / LEGACY_CONFIG_NAME).write_text(json.dumps(model.config(), indent=2))
    return folder


# ----------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("cond_dim", [0, 6])
def test_round_trip_gives_identical_outputs_and_diffusers_reads_the_unet(tmp_path, cond_dim):
    m = tiny(cond_dim)
    m.save_pretrained(tmp_path / "m")
    files = sorted(str(p.relative_to(tmp_path / "m")) for p in (tmp_path / "m").rglob("*") if p.is_file())
    want = [CARD_NAME, CONFIG_NAME, UNET_CONFIG_NAME, WEIGHTS_NAME] + ([TEXT_PROJ_NAME] if cond_dim else [])
    assert files == sorted(want)
    back = EDMDenoiser.from_pretrained(tmp_path / "m")
    assert back.meta == META and back.cond_dim == cond_dim and back.image_shape == (1, 8, 8) and not back.training
    assert torch.equal(outputs(m), outputs(back))
    assert isinstance(load_denoiser(tmp_path / "m"), EDMDenoiser)

    # diffusers' own loader: the same UNet, unprefixed keys, every constructor argument in its config
    unet = UNet2DModel.from_pretrained(tmp_path / "m", subfolder="unet").eval()
    assert torch.equal(unet_output(unet, m), unet_output(m.net.unet, m))
    cfg = json.loads((tmp_path / "m" / UNET_CONFIG_NAME).read_text())
    assert cfg["_class_name"] == "UNet2DModel" and "_diffusers_version" in cfg
    assert cfg["class_embed_type"] == ("identity" if cond_dim else None)
    assert set(cfg) - {"_class_name", "_diffusers_version"} == set(unet.config) - {"_use_default_values"} - {
        k for k in unet.config if k.startswith("_")
    }
    assert all(not k.startswith(("unet.", "cond_proj.")) for k in load_file(str(tmp_path / "m" / WEIGHTS_NAME)))
    if cond_dim:
        assert sorted(load_file(str(tmp_path / "m" / TEXT_PROJ_NAME))) == ["bias", "weight"]

    amb = read_model_config(tmp_path / "m")
    assert amb["type"] == "edm" and amb["sigma_data"] == 0.5 and amb["time_scale"] == 250.0
    assert amb["cond_dim"] == cond_dim and amb["meta"] == META
    assert amb["text_proj"] == ({"in_features": 6, "out_features": 32} if cond_dim else None)

    # saving what was loaded writes the same files again
    back.save_pretrained(tmp_path / "again")
    for name in want:
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "again" / name).read_bytes() or name == CARD_NAME


def test_a_patch_stem_round_trips_and_older_readers_are_told_it_is_newer(tmp_path):
    torch.manual_seed(0)
    m = build_unet(6, 16, 1, (8, 16), meta=dict(META), patch=2).eval()
    assert m.image_shape == (1, 16, 16) and m.net.unet_config["sample_size"] == 8
    m.save_pretrained(tmp_path / "m")
    amb = read_model_config(tmp_path / "m")
    assert amb["patch"] == 2 and amb["format_version"] == 3  # a reader of version 2 refuses it instead of misreading
    back = EDMDenoiser.from_pretrained(tmp_path / "m")
    assert back.image_shape == (1, 16, 16) and torch.equal(outputs(m), outputs(back))
    # the UNet inside sees 2 x 2 blocks as four channels: diffusers loads it as an 8 x 8, four-channel UNet
    unet = UNet2DModel.from_pretrained(tmp_path / "m", subfolder="unet").eval()
    assert unet.config.in_channels == 4 and unet.config.sample_size == 8
    # a folder without a stem is written as before: version 2, no patch key
    tiny(0).save_pretrained(tmp_path / "plain")
    plain = read_model_config(tmp_path / "plain")
    assert plain["format_version"] == 2 and "patch" not in plain
    with pytest.raises(ValueError, match="not a multiple of the patch side"):
        build_unet(0, 15, 1, (8, 16), patch=2)


def test_half_precision_weights_are_half_the_size_and_load_as_float32_rounded_weights(tmp_path):
    m = tiny(6)
    m.save_pretrained(tmp_path / "full")
    m.save_pretrained(tmp_path / "half", dtype=torch.float16)
    for name in (WEIGHTS_NAME, TEXT_PROJ_NAME):
        stored = load_file(str(tmp_path / "half" / name))
        assert {v.dtype for v in stored.values()} == {torch.float16}
    full, half = ((tmp_path / d / WEIGHTS_NAME).stat().st_size for d in ("full", "half"))
    assert half < 0.55 * full  # the UNet's weights (the small projection's file is mostly its header)
    back = EDMDenoiser.from_pretrained(tmp_path / "half")
    assert {p.dtype for p in back.parameters()} == {torch.float32}
    rounded = {k: v.half().float() for k, v in m.state_dict().items()}
    assert all(torch.equal(v, rounded[k]) for k, v in back.state_dict().items())
    assert not torch.equal(outputs(m), outputs(back))  # the rounding is real ...
    assert torch.allclose(outputs(m), outputs(back), atol=1e-2)  # ... and small
    # diffusers' loader reads the same float16 file into a float32 UNet
    unet = UNet2DModel.from_pretrained(tmp_path / "half", subfolder="unet").eval()
    assert {p.dtype for p in unet.parameters()} == {torch.float32}
    assert torch.equal(unet_output(unet, back), unet_output(back.net.unet, back))
    with pytest.raises(ValueError, match="dtype must be"):
        m.save_pretrained(tmp_path / "int", dtype=torch.int8)
    assert not (tmp_path / "int").exists()


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: str(p.relative_to(ASSETS)))
def test_every_shipped_model_loads_with_diffusers_and_gives_our_outputs(folder):
    ours = EDMDenoiser.from_pretrained(folder)
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
    assert torch.equal(unet_output(unet, ours), unet_output(ours.net.unet, ours))
    assert not (folder / LEGACY_CONFIG_NAME).exists() and not (folder / LEGACY_WEIGHTS_NAME).exists()
    card = ModelCard.load(folder / CARD_NAME)
    assert card.data.library_name == "diffusers" and card.data.license == "mit"
    assert {"ambient-diffusion", "edm", "memorization", "fashion-mnist"} <= set(card.data.tags)
    assert card.data.datasets == ["fashion_mnist"]
    assert card.text.startswith(f"# {folder.name}")  # the hand-written card's text under the metadata


def test_the_shipped_pair_is_all_in_the_new_layout():
    pairs = json.loads((ASSETS / "pairs.json").read_text())["pairs"]
    named = {ASSETS / p[side] for p in pairs for side in ("ambient", "baseline")}
    assert named and named <= set(SHIPPED)  # every folder a pair names is a model in the new layout
    old = [p for p in ASSETS.rglob(LEGACY_CONFIG_NAME) if is_model_dir(p.parent)]
    assert old == [], f"model folders still in the older layout: {old}"


# ----------------------------------------------------------------------------- the older layout


def test_older_layout_loads_and_converts_with_identical_outputs(tmp_path):
    conv = _converter()
    m = tiny(6, seed=2)
    legacy = write_legacy(m, tmp_path / "models" / "old")
    (legacy / CARD_NAME).write_text("# old\n\nA hand-written card.\n")
    assert is_model_dir(legacy) and read_model_config(legacy)["meta"] == META
    loaded = EDMDenoiser.from_pretrained(legacy)
    assert torch.equal(outputs(loaded), outputs(m))
    assert isinstance(load_denoiser(legacy), EDMDenoiser)

    assert conv.find_model_dirs([tmp_path / "models"]) == [legacy]
    res = conv.convert(legacy)
    assert res["status"] == "converted" and res["max_abs_diff"] == 0.0 and res["diffusers_unet_max_abs_diff"] == 0.0
    assert not (legacy / LEGACY_CONFIG_NAME).exists() and (legacy / WEIGHTS_NAME).is_file()
    assert torch.equal(outputs(EDMDenoiser.from_pretrained(legacy)), outputs(m))
    card = ModelCard.load(legacy / CARD_NAME)
    assert card.text == "# old\n\nA hand-written card.\n" and card.data.library_name == "diffusers"
    files = {p: p.read_bytes() for p in legacy.rglob("*") if p.is_file()}
    assert conv.convert(legacy)["status"] == "already in the new layout"  # idempotent: nothing rewritten
    assert {p: p.read_bytes() for p in legacy.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["old"]  # no temporary folders left


def test_converter_refuses_unknown_files_and_a_bad_folder_keeps_its_old_files(tmp_path):
    conv = _converter()
    legacy = write_legacy(tiny(0), tmp_path / "old")
    (legacy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        conv.convert(legacy)
    assert (legacy / LEGACY_WEIGHTS_NAME).is_file() and not (legacy / CONFIG_NAME).exists()
    assert conv.main([str(tmp_path / "nowhere")]) == 2


def test_a_failed_check_keeps_the_previous_folder(tmp_path):
    tiny(0, seed=1, meta={"v": 1}).save_pretrained(tmp_path / "m")
    before = {p: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()}

    def reject(tmp: Path) -> None:
        assert (tmp / WEIGHTS_NAME).is_file()
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        tiny(0, seed=2, meta={"v": 2}).save_pretrained(tmp_path / "m", check=reject)
    assert {p: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ----------------------------------------------------------------------------- model card


def test_model_card_front_matter_is_added_and_a_hand_written_card_is_kept(tmp_path):
    m = tiny(6)
    m.save_pretrained(tmp_path / "m")
    text = (tmp_path / "m" / CARD_NAME).read_text()
    assert text.startswith("---\n")
    card = ModelCard(text)
    assert card.data.library_name == "diffusers" and card.data.license == "mit"
    assert card.data.datasets == ["fashion_mnist"]
    assert set(card.data.tags) >= {"ambient-diffusion", "edm", "memorization", "fashion-mnist", "text-conditional"}
    assert "UNet2DModel.from_pretrained" in card.text and 'subfolder="unet"' in card.text

    # a card written by hand, with its own metadata: the text stays, its keys are merged, not dropped
    (tmp_path / "m" / CARD_NAME).write_text("---\nlicense: apache-2.0\ntags:\n- mine\n---\n# Mine\n\nBody.\n")
    m.save_pretrained(tmp_path / "m")
    card = ModelCard((tmp_path / "m" / CARD_NAME).read_text())
    assert card.text == "# Mine\n\nBody.\n" and card.data.license == "apache-2.0"
    assert card.data.tags[0] == "mine" and "edm" in card.data.tags and card.data.library_name == "diffusers"

    # not Fashion-MNIST: no such dataset claimed
    other = tiny(0, meta={"dataset": "synthetic/train"})
    other.save_pretrained(tmp_path / "o")
    data = ModelCard((tmp_path / "o" / CARD_NAME).read_text()).data
    assert data.datasets is None and "fashion-mnist" not in data.tags and "text-conditional" not in data.tags


# ----------------------------------------------------------------------------- bad folders


def _break(folder: Path, how: str) -> None:
    def edit(name: str, fn) -> None:
        cfg = json.loads((folder / name).read_text())
        fn(cfg)
        (folder / name).write_text(json.dumps(cfg))

    if how == "no-unet-config":
        (folder / UNET_CONFIG_NAME).unlink()
    elif how == "no-unet-weights":
        (folder / WEIGHTS_NAME).unlink()
    elif how == "no-text-proj":
        (folder / TEXT_PROJ_NAME).unlink()
    elif how == "corrupt-unet":
        (folder / WEIGHTS_NAME).write_bytes(b"\x00not safetensors" * 8)
    elif how == "truncated-unet":
        data = (folder / WEIGHTS_NAME).read_bytes()
        (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    elif how == "corrupt-text-proj":
        (folder / TEXT_PROJ_NAME).write_bytes(b"")
    elif how == "wrong-shape":
        edit(UNET_CONFIG_NAME, lambda c: c.update(block_out_channels=[8, 8]))
    elif how == "missing-unet-key":
        edit(UNET_CONFIG_NAME, lambda c: c.pop("block_out_channels"))
    elif how == "not-a-unet":
        edit(UNET_CONFIG_NAME, lambda c: c.update(_class_name="UNet2DConditionModel"))
    elif how == "unknown-unet-key":
        edit(UNET_CONFIG_NAME, lambda c: c.update(warp_drive=True))
    elif how == "class-embed":
        edit(UNET_CONFIG_NAME, lambda c: c.update(class_embed_type=None))
    elif how == "bad-json":
        (folder / CONFIG_NAME).write_text('{"type": "edm", ')
    elif how == "not-edm":
        edit(CONFIG_NAME, lambda c: c.update(type="flow"))
    elif how == "no-type":
        (folder / CONFIG_NAME).write_text("{}")
    elif how == "bad-cond-dim":
        edit(CONFIG_NAME, lambda c: c.update(cond_dim="six"))
    elif how == "text-proj-dims":
        edit(CONFIG_NAME, lambda c: c.update(text_proj={"in_features": 6, "out_features": 99}))
    elif how == "wrong-text-proj-shape":
        save_file({"weight": torch.zeros(32, 5), "bias": torch.zeros(32)}, str(folder / TEXT_PROJ_NAME))
    elif how == "newer-format":
        edit(CONFIG_NAME, lambda c: c.update(format_version=99))
    elif how == "bad-patch":
        edit(CONFIG_NAME, lambda c: c.update(patch=0))
    elif how == "patch-misfits-unet":
        edit(CONFIG_NAME, lambda c: c.update(patch=2))  # a one-channel UNet cannot take 2 x 2 blocks


@pytest.mark.parametrize(
    ("how", "error", "match"),
    [
        ("no-unet-config", FileNotFoundError, "has no unet/config.json"),
        ("no-unet-weights", FileNotFoundError, "has no unet/diffusion_pytorch_model.safetensors"),
        ("no-text-proj", FileNotFoundError, "has no text_proj.safetensors; ambient_config.json says cond_dim = 6"),
        ("corrupt-unet", ValueError, "diffusion_pytorch_model.safetensors is not a readable safetensors file"),
        ("truncated-unet", ValueError, "diffusion_pytorch_model.safetensors is not a readable safetensors file"),
        ("corrupt-text-proj", ValueError, "text_proj.safetensors is not a readable safetensors file"),
        ("wrong-shape", ValueError, "diffusion_pytorch_model.safetensors does not match .*config.json"),
        ("missing-unet-key", ValueError, r"does not state \['block_out_channels'\]; diffusers would silently"),
        ("not-a-unet", ValueError, "is not a diffusers UNet2DModel config"),
        ("unknown-unet-key", ValueError, r"does not take: \['warp_drive'\]"),
        ("class-embed", ValueError, "class_embed_type None, but cond_dim is 6"),
        ("bad-json", ValueError, "ambient_config.json is not valid JSON"),
        ("not-edm", ValueError, "config type 'flow' is not an EDM denoiser"),
        ("no-type", ValueError, "not a valid model config"),
        ("bad-cond-dim", ValueError, "cond_dim must be a whole number"),
        ("text-proj-dims", ValueError, "text_proj .* does not fit"),
        ("wrong-text-proj-shape", ValueError, "text_proj.safetensors does not match"),
        ("newer-format", ValueError, "format_version 99"),
        ("bad-patch", ValueError, "patch must be a whole number >= 1, not 0"),
        ("patch-misfits-unet", ValueError, "a 2 x 2 patch stem needs UNet channels divisible by 4"),
    ],
)
def test_bad_folders_raise_clear_errors(tmp_path, how, error, match):
    tiny(6).save_pretrained(tmp_path / "m")
    _break(tmp_path / "m", how)
    with pytest.raises(error, match=match):
        EDMDenoiser.from_pretrained(tmp_path / "m")
    with pytest.raises(error, match=match):
        load_denoiser(tmp_path / "m")


def test_other_folders_are_refused(tmp_path):
    tiny(0).save_pretrained(tmp_path / "u")
    save_file({"weight": torch.zeros(32, 6), "bias": torch.zeros(32)}, str(tmp_path / "u" / TEXT_PROJ_NAME))
    with pytest.raises(ValueError, match="has a text_proj.safetensors, but ambient_config.json says cond_dim = 0"):
        EDMDenoiser.from_pretrained(tmp_path / "u")

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no ambient_config.json"):
        EDMDenoiser.from_pretrained(tmp_path / "empty")
    assert not is_model_dir(tmp_path / "empty") and not is_model_dir(ROOT / "assets" / "classifier")

    # pickled UNet weights beside a valid config are never read
    tiny(0).save_pretrained(tmp_path / "p")
    (tmp_path / "p" / WEIGHTS_NAME).unlink()
    sentinel = tmp_path / "UNPICKLED"
    (tmp_path / "p" / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Boom(str(sentinel))))
    with pytest.raises(FileNotFoundError, match="has no unet/diffusion_pytorch_model.safetensors"):
        EDMDenoiser.from_pretrained(tmp_path / "p")
    assert not sentinel.exists()


class _Boom:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


# ----------------------------------------------------------------------------- DDPM pipeline folders


def _pipeline(folder: Path) -> UNet2DModel:
    from diffusers import DDPMPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(folder)
    return unet


def test_pipeline_and_edm_folders_are_told_apart(tmp_path):
    _pipeline(tmp_path / "pipe")
    tiny(0).save_pretrained(tmp_path / "edm")
    ad = load_denoiser(tmp_path / "pipe")
    assert isinstance(ad, DDPMAdapter) and isinstance(load_denoiser(tmp_path / "edm"), EDMDenoiser)
    assert not is_model_dir(tmp_path / "pipe")
    with pytest.raises(ValueError, match="is an EDM model folder"):
        DDPMAdapter.from_pretrained(tmp_path / "edm")
    with pytest.raises(ValueError, match="is a diffusers pipeline folder"):
        EDMDenoiser.from_pretrained(tmp_path / "pipe")
    shutil.rmtree(tmp_path / "pipe" / "scheduler")
    with pytest.raises(FileNotFoundError, match="needs unet/ and scheduler/"):
        load_denoiser(tmp_path / "pipe")


def test_unconditional_ddpm_adapter_refuses_a_prompt(tmp_path):
    unet = _pipeline(tmp_path / "pipe")
    ad = DDPMAdapter.from_scheduler(unet, DDPMScheduler(num_train_timesteps=50))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.isfinite(ad(x, 1.0)).all()
        with pytest.raises(ValueError, match="unconditional .*pass cond=None"):
            ad(x, 1.0, torch.zeros(2, 4))


def test_ddpm_adapter_passes_a_prompt_to_a_conditional_unet():
    """A UNet2DConditionModel takes cond as encoder_hidden_states (its decorated forward hides the name in __code__)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from ambient.denoiser import DDPMAdapter

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    d = DDPMAdapter.from_scheduler(unet.eval(), DDPMScheduler(num_train_timesteps=100))
    x = torch.randn(2, 1, 8, 8)
    a, b = d(x, 1.0, torch.zeros(2, 12)), d(x, 1.0, torch.ones(2, 12))
    assert a.shape == x.shape and (a - b).abs().max() > 0  # the prompt reaches the network
