"""EDM preconditioning, save/load of EDM model folders, and the DDPM adapter (local diffusers folders only)."""

import json
import math
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ambient.denoiser import (
    CONFIG_NAME,
    TEXT_PROJ_NAME,
    UNET_CONFIG_NAME,
    WEIGHTS_NAME,
    DDPMAdapter,
    EDMDenoiser,
    build_unet,
    load_denoiser,
    resolve_model_dir,
)
from ambient.sampling import sample

torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP spin-waits on a busy machine

SD = 0.5  # sigma_data


class StubNet(nn.Module):
    """F(x, c_noise, cond) returning a constant and recording what it was given."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.calls = []

    def forward(self, x, c_noise, cond=None):
        self.calls.append((x.clone(), c_noise.clone()))
        return torch.full_like(x, self.value)


def coefficients(sigma):
    """method.md: c_skip, c_out, c_in, c_noise for sigma_data = 0.5 (float64 reference)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    c_skip = SD**2 / (s**2 + SD**2)
    c_out = s * SD / (s**2 + SD**2).sqrt()
    c_in = 1 / (s**2 + SD**2).sqrt()
    c_noise = s.log() / 4
    return c_skip, c_out, c_in, c_noise


def tiny(cond_dim=0, seed=0, meta=None):
    torch.manual_seed(seed)
    return build_unet(cond_dim, sample_size=8, channels=1, block_out_channels=(8, 16), meta=meta).eval()


@pytest.mark.parametrize("sigma", [0.002, 0.3, 0.5, 2.0, 80.0])
def test_preconditioning_matches_method(sigma):
    torch.manual_seed(1)
    x = torch.randn(3, 1, 4, 4) * (1 + sigma)
    c_skip, c_out, c_in, c_noise = (float(c) for c in coefficients(sigma))

    zero = EDMDenoiser(StubNet(0.0))
    d0 = zero(x, sigma)
    torch.testing.assert_close(d0, c_skip * x, rtol=1e-5, atol=1e-6)  # F = 0: D = c_skip x
    x_in, cn = zero.net.calls[0]
    torch.testing.assert_close(x_in, c_in * x, rtol=1e-5, atol=1e-6)  # F sees c_in x ...
    torch.testing.assert_close(cn, torch.full((3,), c_noise), rtol=1e-5, atol=1e-6)  # ... and ln(sigma)/4

    one = EDMDenoiser(StubNet(1.0))
    torch.testing.assert_close(one(x, sigma) - c_skip * x, torch.full_like(x, c_out), rtol=1e-5, atol=1e-6)


def test_preconditioning_per_sample_sigma():
    sig = torch.tensor([0.01, 0.5, 7.0])
    x = torch.ones(3, 1, 2, 2)
    c_skip, c_out, _, c_noise = coefficients(sig)
    net = StubNet(1.0)
    d = EDMDenoiser(net)(x, sig)
    want = (c_skip + c_out).float().reshape(3, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(d, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.calls[0][1], c_noise.float(), rtol=1e-5, atol=1e-6)


def test_low_noise_limit_is_identity_and_high_noise_ignores_input():
    """c_skip -> 1, c_out -> 0 as sigma -> 0; c_skip -> 0 as sigma -> inf (only F's output remains)."""
    x = torch.randn(2, 1, 3, 3)
    torch.testing.assert_close(EDMDenoiser(StubNet(5.0))(x, 1e-6), x, atol=1e-4, rtol=0)
    d = EDMDenoiser(StubNet(1.0))(x * 1000, 1e4)
    torch.testing.assert_close(d, torch.full_like(x, 0.5), atol=1e-2, rtol=0)  # c_out -> sigma_data


def test_save_load_round_trip(tmp_path):
    meta = {"loss": "ambient", "sigma_n": 0.5, "train_ids": [4, 8, 15, 16, 23, 42], "seed": 7, "steps": 123}
    m = tiny(cond_dim=6, seed=3, meta=meta)
    with torch.no_grad():  # make every weight non-default so a partial load would show
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.save_pretrained(tmp_path / "model")
    files = sorted(str(p.relative_to(tmp_path / "model")) for p in (tmp_path / "model").rglob("*") if p.is_file())
    assert files == sorted(["README.md", CONFIG_NAME, TEXT_PROJ_NAME, UNET_CONFIG_NAME, WEIGHTS_NAME])
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folders left beside it
    umask = os.umask(0o022)
    os.umask(umask)
    # readable by others as any folder would be (not mkdtemp's 0700 or safetensors' 0600)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "model" / "unet").stat().st_mode) == 0o777 & ~umask
    for name in (WEIGHTS_NAME, TEXT_PROJ_NAME, CONFIG_NAME):
        assert stat.S_IMODE((tmp_path / "model" / name).stat().st_mode) == 0o666 & ~umask

    back = EDMDenoiser.from_pretrained(tmp_path / "model")
    assert back.meta == meta
    assert back.cond_dim == 6 and back.image_shape == (1, 8, 8) and back.sigma_data == 0.5
    assert not back.training
    x = torch.randn(4, 1, 8, 8)
    sig = torch.tensor([0.01, 0.4, 3.0, 60.0])
    cond = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(m(x, sig, cond), back(x, sig, cond))
    assert isinstance(load_denoiser(tmp_path / "model"), EDMDenoiser)

    # saving over an existing folder replaces it atomically
    m2 = tiny(seed=4, meta={"steps": 1})
    m2.save_pretrained(tmp_path / "model")
    assert EDMDenoiser.from_pretrained(tmp_path / "model").meta == {"steps": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EDMDenoiser.from_pretrained(tmp_path / "nope")

    m = tiny()
    good = tmp_path / "good"
    m.save_pretrained(good)

    no_weights = tmp_path / "no_weights"
    m.save_pretrained(no_weights)
    (no_weights / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        EDMDenoiser.from_pretrained(no_weights)

    bad_json = tmp_path / "bad_json"
    m.save_pretrained(bad_json)
    (bad_json / CONFIG_NAME).write_text('{"type": "edm", "network": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        EDMDenoiser.from_pretrained(bad_json)

    bad_cfg = tmp_path / "bad_cfg"
    m.save_pretrained(bad_cfg)
    (bad_cfg / CONFIG_NAME).write_text("{}")
    with pytest.raises(ValueError, match="not a valid model config"):
        EDMDenoiser.from_pretrained(bad_cfg)

    wrong_shape = tmp_path / "wrong_shape"
    m.save_pretrained(wrong_shape)
    state = load_file(str(wrong_shape / WEIGHTS_NAME))
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    save_file(state, str(wrong_shape / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="does not match"):
        EDMDenoiser.from_pretrained(wrong_shape)

    garbage = tmp_path / "garbage"
    m.save_pretrained(garbage)
    (garbage / WEIGHTS_NAME).write_bytes(b"\x00not safetensors at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        EDMDenoiser.from_pretrained(garbage)

    with pytest.raises(ValueError, match="is a file"):
        EDMDenoiser.from_pretrained(good / CONFIG_NAME)
    EDMDenoiser.from_pretrained(good)  # the untouched copy still loads


def test_hub_ids_refused_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_model_dir("some-user/some-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_dir("not/a/hub/id")


@pytest.mark.parametrize("flag", ["1", "true", "on"])
def test_offline_hub_ids_load_from_the_local_cache(monkeypatch, tmp_path, flag):
    """One offline rule for model folders and pipelines (ambient.io): 1/true/yes/on, and the cache is used."""
    from huggingface_hub import constants

    m = tiny(cond_dim=3, seed=4)
    commit = "1" * 40
    repo = tmp_path / "cache" / "models--some-user--edm-model"
    m.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", flag)
    for name in ("some-user/edm-model", "hub:some-user/edm-model"):
        assert resolve_model_dir(name).resolve() == (repo / "snapshots" / commit).resolve()
        loaded = EDMDenoiser.from_pretrained(name)
        x = torch.randn(2, 1, 8, 8)
        with torch.no_grad():
            assert torch.equal(loaded(x, 0.7, torch.ones(2, 3)), m(x, 0.7, torch.ones(2, 3)))


def test_text_conditioning():
    m = tiny(cond_dim=5, seed=2)
    x = torch.randn(2, 1, 8, 8)
    c1, c2 = torch.randn(2, 5), torch.randn(2, 5)
    with torch.no_grad():
        d1, d2 = m(x, 1.0, c1), m(x, 1.0, c2)
        assert (d1 - d2).abs().max() > 1e-4  # the output depends on cond
        assert torch.equal(m(x, 1.0, None), m(x, 1.0, torch.zeros(2, 5)))  # None is the empty prompt
        # cond is per row: changing row 1's cond leaves row 0 alone
        c3 = c1.clone()
        c3[1] = c2[1]
        d3 = m(x, 1.0, c3)
    torch.testing.assert_close(d3[0], d1[0], rtol=0, atol=1e-6)
    assert (d3[1] - d1[1]).abs().max() > 1e-4


# ---------------------------------------------------------------- DDPM adapter


def tiny_ddpm(prediction_type, seed=0):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
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
    sched = DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type)
    return unet, sched


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_adapter_matches_scheduler_formulas(prediction_type):
    unet, sched = tiny_ddpm(prediction_type)
    ad = DDPMAdapter.from_scheduler(unet, sched).eval()
    ac = sched.alphas_cumprod.double()
    torch.manual_seed(5)
    for t in (0, 37, 99):
        a = ac[t]
        sigma_t = float(((1 - a) / a).sqrt())
        assert float(ad.sigma_to_t(torch.tensor([sigma_t]))[0]) == pytest.approx(t, abs=1e-3)
        x = torch.randn(2, 1, 8, 8) * math.sqrt(1 + sigma_t**2)  # VE sample x0 + sigma eps
        x_t = a.sqrt().float() * x  # the VP sample the UNet was trained on
        with torch.no_grad():
            out = unet(x_t, torch.tensor([t, t])).sample
            got = ad(x, sigma_t)
        a32, b32 = a.sqrt().float(), (1 - a).sqrt().float()
        if prediction_type == "epsilon":
            want = (x_t - b32 * out) / a32  # x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
        else:
            want = a32 * x_t - b32 * out  # x0 = sqrt(a) x_t - sqrt(1 - a) v
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_ddpm_sigma_to_t_interpolates_log_sigma():
    unet, sched = tiny_ddpm("epsilon")
    ad = DDPMAdapter.from_scheduler(unet, sched)
    ac = sched.alphas_cumprod.double()
    s = ((1 - ac) / ac).sqrt()
    mid = (s[10] * s[11]).sqrt()  # geometric mean: halfway in log sigma
    assert float(ad.sigma_to_t(mid.float().reshape(1))[0]) == pytest.approx(10.5, abs=1e-3)
    assert ad.sigma_min == pytest.approx(float(s[0]), rel=1e-4)
    assert ad.sigma_max == pytest.approx(float(s[-1]), rel=1e-4)
    # outside the table: clamped to its ends
    t = ad.sigma_to_t(torch.tensor([1e-6, 1e6]))
    assert t.tolist() == [0.0, 99.0]


def test_ddpm_adapter_rejects_unknown_prediction_type():
    unet, sched = tiny_ddpm("epsilon")
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMAdapter(unet, sched.alphas_cumprod, "flow")


def test_ddpm_pipeline_folder_load_and_sample(tmp_path):
    from diffusers import DDPMPipeline

    unet, sched = tiny_ddpm("v_prediction", seed=9)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe", safe_serialization=True)
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    ad = load_denoiser(tmp_path / "pipe")
    assert isinstance(ad, DDPMAdapter)
    assert ad.prediction_type == "v_prediction" and ad.image_shape == (1, 8, 8)
    ref = DDPMAdapter.from_scheduler(unet, sched)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ad(x, 0.7), ref(x, 0.7), rtol=1e-5, atol=1e-5)

    imgs = sample(ad, None, [0, 1, 2], ad.image_shape, steps=4, sigma_min=ad.sigma_min, sigma_max=ad.sigma_max)
    assert imgs.shape == (3, 1, 8, 8) and torch.isfinite(imgs).all()
    assert imgs.min() >= -1 and imgs.max() <= 1
    # an EDM model and the DDPM model share the samplers: hand-over between them runs
    pair = sample(tiny(), ad, [0, 1], (1, 8, 8), steps=4, sigma_c=0.5)
    assert torch.isfinite(pair).all()

    with pytest.raises(FileNotFoundError):
        DDPMAdapter.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="pipeline folder"):
        DDPMAdapter.from_pretrained(tmp_path / "empty")


def test_config_json_is_plain_json(tmp_path):
    tiny(meta={"train_ids": [1, 2]}).save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert cfg["type"] == "edm" and cfg["sigma_data"] == 0.5 and cfg["cond_dim"] == 0
    assert json.loads((tmp_path / "m" / UNET_CONFIG_NAME).read_text())["block_out_channels"] == [8, 16]
    assert cfg["meta"]["train_ids"] == [1, 2]
