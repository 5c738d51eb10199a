"""Latent pairs (ambient.latent_pair, ``kind: "latent"`` in pairs.json): two pipelines fine-tuned here with each
loss on a TINY Stable-Diffusion-shaped pipeline (random weights, a tokenizer made locally: no hub), loaded as a pair,
sampled side by side in latent space through the app's handler and API, with the neighbours of the decoded images.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket

import numpy as np
import pytest
import torch

import ambient.latent_pair as lpmod
from ambient.cutoff import Cutoff
from ambient.latent import AMBIENT_JSON, FinetuneConfig, finetune, load_image
from ambient.latent_pair import (
    check_latent_folder,
    count_parameters,
    estimate_memory,
    load_latent_pair,
)
from ambient.sampling import CFGDenoiser
from demo.handlers import Handlers, InputError
from demo.pairs import PairError, PairRegistry
from tests.helpers import CAPTIONS, make_tiny_pipeline, write_images, write_sd15_configs

SIGMA_N = 0.5


def _finetune(pipe, images, out, loss: str):
    cfg = FinetuneConfig(
        pretrained=str(pipe),
        data=str(images),
        out=str(out),
        loss=loss,
        sigma_n=SIGMA_N if loss == "ambient" else 0.0,
        steps=3,
        batch=2,
        lr=1e-3,
        warmup=1,
        precision="fp32",
        checkpoint_every=3,
        progress=False,
        log_every=100,
    )
    return finetune(cfg)


@pytest.fixture(scope="module")
def lat(tmp_path_factory, tiny):
    """Two pipelines fine-tuned with each loss, a pairs.json with the latent pair, the tiny pixel-space pair, and
    one broken latent pair per way it can fail."""
    root = tmp_path_factory.mktemp("latent-pair")
    pipe = make_tiny_pipeline(root / "pipe")
    images = write_images(root / "images")
    amb = _finetune(pipe, images, root / "run-ambient", "ambient")
    base = _finetune(pipe, images, root / "run-baseline", "baseline")

    noweights = shutil.copytree(amb, root / "noweights")
    (noweights / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    other = shutil.copytree(amb, root / "othertrain")
    s = json.loads((other / AMBIENT_JSON).read_text())
    s["train_files"] = s["train_files"][:4]
    (other / AMBIENT_JSON).write_text(json.dumps(s))
    othervae = shutil.copytree(amb, root / "othervae")
    cfg = json.loads((othervae / "vae" / "config.json").read_text())
    cfg["scaling_factor"] = 0.5
    (othervae / "vae" / "config.json").write_text(json.dumps(cfg))

    good = {"name": "latent", "kind": "latent", "ambient": "run-ambient/model", "baseline": "run-baseline/model"}
    good |= {"train_data": "images", "index": "index", "embedder": "pixels", "steps": 6, "trajectory_points": 3}
    edm = json.loads(tiny.read_text())["pairs"][0]
    edm = {**edm, **{k: str(tiny.parent / edm[k]) for k in ("ambient", "baseline", "train_data", "index")}}
    edm = {k: v for k, v in edm.items() if k not in ("sweep", "sweep_plot", "frontier", "reference_data")}

    def variant(name, **kw):
        return {**good, "name": name, "index": None, **kw}

    pairs = [
        good,
        {**edm, "name": "edm"},
        variant("noweights", ambient="noweights"),
        variant("othertrain", ambient="othertrain"),
        variant("othervae", ambient="othervae"),
        variant("gpu", needs_gpu=True),
        variant("hub", ambient="hub:someone/sd15-ambient"),
        variant("nodata", train_data="nowhere"),
        variant("embedder", embedder="dinov2:facebook/dinov2-small-not-here"),
        {**edm, "name": "edmwithlatentkeys", "embedder": "pixels"},
    ]
    (root / "pairs.json").write_text(json.dumps({"default": "latent", "pairs": pairs}))
    return {"root": root, "config": root / "pairs.json", "ambient": amb, "baseline": base, "images": images}


@pytest.fixture(scope="module")
def handlers(lat):
    return Handlers(PairRegistry.from_path(lat["config"], [lat["config"].parent.parent]), bf16=False)


class Spy(torch.nn.Module):
    """Records the sigmas a denoiser is called at."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.sigmas = inner, []
        self.sigma_min, self.sigma_max = inner.sigma_min, inner.sigma_max

    def forward(self, x, sigma, cond=None):
        self.sigmas.append(float(torch.as_tensor(sigma).flatten()[0]))
        return self.inner(x, sigma, cond)


# ---------------------------------------------------------------- loading


def test_fine_tuned_pipelines_load_as_a_latent_pair(lat, handlers):
    p = handlers.pair("latent")
    assert p.kind == "latent" and p.spec.kind == "latent" and p.default_steps == 6
    assert p.data_shape == (3, 16, 16) and p.image_shape == (4, 8, 8) and p.codec.resolution == 16
    assert p.sigma_n == SIGMA_N and p.regime == "all" and p.cond_dim == 16
    assert p.sigma_min == pytest.approx(0.0292, abs=1e-3) and p.sigma_max == pytest.approx(14.61, abs=0.01)
    assert len(p.train) == len(p.index) == len(CAPTIONS)
    want = torch.stack([load_image(lat["images"] / f"img_{i}.png", 16) for i in range(len(CAPTIONS))])
    assert torch.equal(p.train.images, want)  # the listed files, cropped as fine-tuning crops them
    assert p.index.kind == "flat" and p.index.embedder_name == "pixels"
    assert (lat["root"] / "index" / "meta.json").is_file()  # built once and saved where the config says
    assert any("saved it to" in w for w in p.warnings)
    again = PairRegistry.from_path(lat["config"]).get("latent")  # the second load reads it back
    assert not any("built" in w for w in again.warnings)
    assert again.sigma_n == SIGMA_N and again.info["settings"]["loss"] == "ambient"
    assert again.info["baseline_settings"]["loss"] == "baseline"
    st = handlers.pair_status("latent")
    assert "Latent pair" in st and "ambient loss" in st and "How to fix" not in st


def test_the_index_is_ivf_past_the_threshold(lat, monkeypatch):
    monkeypatch.setattr(lpmod, "IVF_ABOVE", 5)
    lp = load_latent_pair(lat["ambient"], lat["baseline"], lat["images"], embedder="pixels")
    assert lp.index.kind == "ivf"
    sims, pos = lp.index.search(lp.train.images, 1)
    assert pos[:, 0].tolist() == list(range(len(CAPTIONS))) and np.allclose(sims[:, 0], 1, atol=1e-5)


def test_neighbours_in_the_default_offline_embedder(lat):
    lp = load_latent_pair(lat["ambient"], lat["baseline"])  # training images from ambient_latent.json's "data"
    assert lp.index.embedder_name == "efficientnet-lite0" and lp.index.dim == 1280
    v = lp.index.verdicts(lp.train.images, k=3)
    assert [x.neighbours[0].position for x in v] == list(range(len(CAPTIONS)))
    assert all(x.similarity > 0.999 and x.neighbours[1].similarity < x.similarity for x in v)
    g = torch.Generator().manual_seed(0)
    noisy = (lp.train.images + 0.05 * torch.randn(lp.train.images.shape, generator=g)).clamp(-1, 1)
    sims, pos = lp.index.search(noisy, 2)  # a lightly noised copy still finds its training image, and only it
    assert pos[:, 0].tolist() == list(range(len(CAPTIONS))) and (sims[:, 0] < 0.999).all()
    assert (sims[:, 0] > lp.index.threshold).all() and (sims[:, 1] < lp.index.threshold).all()


# ---------------------------------------------------------------- side by side


def test_generate_side_by_side_through_the_handler(handlers):
    seen = []
    r = handlers.generate(
        "latent", "a red cat", 3, 2, 6, 2.0, None, "handover", on_step=lambda s, i: seen.append((s, i))
    )
    assert r.steps == 6 and r.cutoff == Cutoff.ambient_alone() and r.sigma_n == SIGMA_N
    for side in (r.ambient, r.baseline):
        assert [s.seed for s in side] == [3, 4]
        for s in side:
            assert s.image.shape == (16, 16, 3) and s.image.dtype == np.uint8
            sims = [n.similarity for n in s.verdict.neighbours]
            assert len(sims) == 4 and sims == sorted(sims, reverse=True) and all(-1 <= x <= 1 + 1e-6 for x in sims)
            assert len(s.trajectory) == 3  # trajectory_points: the decoded estimate at 3 of the 6 steps
            sig = [t["sigma"] for t in s.trajectory]
            assert sig == sorted(sig, reverse=True) and sig[0] == pytest.approx(14.61, abs=0.01)
            assert all(0 <= t["position"] < 6 and -1 <= t["similarity"] <= 1 + 1e-6 for t in s.trajectory)
    assert not np.array_equal(r.ambient[0].image, r.baseline[0].image)  # two different UNets
    assert [s for s, _ in seen] == ["ambient"] * 3 + ["baseline"] * 3
    assert all(i["denoised"].shape == (2, 3, 16, 16) and i["total"] == 6 for _, i in seen)

    right_end = handlers.pair("latent").sigma_max
    alone = handlers.generate("latent", "a red cat", 3, 2, 6, 2.0, right_end, "handover")  # the baseline alone
    assert alone.cutoff.is_baseline_alone
    for a, b, b0 in zip(alone.ambient, alone.baseline, r.baseline, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(b.image, b0.image)  # same seeds, same noise
    with pytest.raises(InputError, match="guidance scale"):
        handlers.generate("latent", "a red cat", 0, 1, 2, 25.0)
    c = handlers.check_training_image("latent", 2, 3)
    assert c.verdict.neighbours[0].position == 2 and c.verdict.similarity == pytest.approx(1, abs=1e-5)


def test_handover_and_truncate_differ(handlers):
    lp = handlers.pair("latent")
    runs = {}
    for mode in ("handover", "truncate"):
        spy = dataclasses.replace(lp, ambient=Spy(lp.ambient), baseline=Spy(lp.baseline))
        out = spy.side_by_side([0, 1], "a blue dog", 6, Cutoff(1.0, mode), guidance=1.0, trajectory_points=0)
        runs[mode] = (out, spy.ambient.sigmas, spy.baseline.sigmas)
    (ho, ho_a, ho_b), (tr, tr_a, tr_b) = runs["handover"], runs["truncate"]
    n_base = len(tr_b)  # the baseline panel's own run; the hand-over adds the baseline's steps below sigma_c
    n_full = 2 * 6 - 1  # a whole Heun run of 6 sigmas
    # each model's run alone is recorded once (for every cutoff); the hand-over then runs the baseline below sigma_c
    assert n_base == n_full and len(ho_b) > n_base
    assert n_full <= len(ho_a) <= n_full + 1 and min(ho_a[n_full:], default=1.0) >= 1.0  # + the step that straddles
    assert max(ho_b[n_base:]) < 1.0  # the hand-over's own baseline steps: all below sigma_c
    assert len(tr_a) > n_full and min(tr_a[n_full:]) == 1.0  # truncated: a step into sigma_c and D there, no baseline
    assert not torch.allclose(ho.ambient, tr.ambient, atol=1e-3)
    assert torch.equal(ho.baseline, tr.baseline)  # the baseline panel does not depend on the cutoff
    assert ho.ambient.shape == (2, 3, 16, 16) and ho.ambient.abs().max() <= 1
    assert lp.record_steps(6, 3) == [0, 2, 5] and lp.record_steps(4, 8) == [0, 1, 2, 3]
    assert lpmod.default_steps(16) == 18  # the pair's own default (its config sets 6)
    assert lpmod.default_steps(512) == 8  # a full-size pair starts with fewer steps (the README's 10 s estimate)
    z = lp.sample([0, 1], lp.prompts.cond("a blue dog", 2), 6, Cutoff(1.0, "truncate"))
    assert torch.equal(lp.codec.decode(z), tr.ambient)  # the output is the decoded estimate D(z, sigma_c)


def test_classifier_free_guidance_scale_one_is_the_conditional_model(handlers):
    lp = handlers.pair("latent")
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, 4, 8, 8, generator=g)
    sigma = torch.tensor(3.0)
    cond, uncond = lp.prompts.encode(["a red cat", "small house"]), lp.prompts.uncond()
    assert uncond.shape == (1, 12, 16) and not torch.equal(uncond[0], cond[0])
    with torch.no_grad():
        d_c, d_u = lp.ambient(x, sigma, cond), lp.ambient(x, sigma, uncond.expand(2, -1, -1))
        assert torch.equal(CFGDenoiser(lp.ambient, 1.0, uncond)(x, sigma, cond), d_c)
        torch.testing.assert_close(CFGDenoiser(lp.ambient, 0.0, uncond)(x, sigma, cond), d_u, atol=1e-5, rtol=1e-5)
        got = CFGDenoiser(lp.ambient, 3.0, uncond)(x, sigma, cond)
        torch.testing.assert_close(got, d_u + 3.0 * (d_c - d_u), atol=1e-5, rtol=1e-5)
    for bad in (-1.0, 20.5, float("nan"), True):
        with pytest.raises(ValueError, match="guidance scale"):
            CFGDenoiser(lp.ambient, bad, uncond)
    with pytest.raises(ValueError, match="does not fit"):
        CFGDenoiser(lp.ambient, 2.0, torch.zeros(1, 12, 8))(x, sigma, cond)

    red = lp.prompts.cond("a red cat", 1)
    plain = lp.sample([5], red, 4, Cutoff.ambient_alone(), guidance=1.0)
    direct = lp.sample([5], red, 4, Cutoff.ambient_alone(), guidance=4.0)
    assert not torch.allclose(plain, direct, atol=1e-4)
    empty1 = lp.side_by_side([5], "", 4, Cutoff.ambient_alone(), guidance=1.0, trajectory_points=0)
    empty4 = lp.side_by_side([5], "", 4, Cutoff.ambient_alone(), guidance=4.0, trajectory_points=0)
    assert torch.equal(empty1.ambient, empty4.ambient)  # the empty prompt is the unconditional input: nothing to guide


# ---------------------------------------------------------------- what cannot load


@pytest.mark.parametrize(
    ("name", "problem", "fix"),
    [
        ("noweights", "no safetensors weights .*configs only", "ambient finetune"),
        ("othertrain", "different training images", "same --data"),
        ("othervae", "different vae components", "same --pretrained"),
        ("gpu", "needs a GPU", "GPU Space"),
        ("hub", "hub id someone/sd15-ambient, but HF_HUB_OFFLINE=1", "huggingface-cli download someone/sd15-ambient"),
        ("nodata", "training image folder .*nowhere does not exist", '"train_data"'),
        ("embedder", "embedder 'dinov2:facebook/dinov2-small-not-here' cannot be used", "efficientnet-lite0"),
        ("edmwithlatentkeys", r"\['embedder'\] apply to latent pairs only", "kind"),
    ],
)
def test_a_latent_pair_that_cannot_load_says_what_to_do(lat, monkeypatch, name, problem, fix):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reg = PairRegistry.from_path(lat["config"], [lat["config"].parent.parent])
    with pytest.raises(PairError) as e:
        if name in reg.config.errors:
            raise reg.config.errors[name]
        reg.get(name)
    assert re.search(problem, e.value.problem), e.value.problem
    assert re.search(fix, e.value.fix), e.value.fix


def test_too_little_memory_is_refused_and_the_other_pairs_keep_working(lat, monkeypatch):
    monkeypatch.setattr(lpmod, "available_memory", lambda device: 100 * 2**20)
    H = Handlers(PairRegistry.from_path(lat["config"], [lat["config"].parent.parent]), bf16=False)
    status = H.pair_status("latent")
    assert "too little memory" in status and "0.1 GiB are free" in status and "How to fix" in status
    with pytest.raises(InputError, match="Model pair 'latent'.*too little memory"):
        H.generate("latent", "a red cat", 0, 1, 2)
    for bad in ("noweights", "gpu"):
        with pytest.raises(InputError, match=f"Model pair '{bad}'"):
            H.generate(bad, "", 0, 1, 2)
    r = H.generate("edm", "", 0, 2, 3)  # the pixel-space pair is unaffected
    assert len(r.ambient) == 2 and r.ambient[0].image.shape == (32, 32, 1)
    monkeypatch.undo()
    H.registry.forget("latent")
    assert len(H.generate("latent", "a red cat", 0, 1, 2).ambient) == 1  # once memory is there, it loads


# ---------------------------------------------------------------- a full-size pipeline's structure


def test_a_stable_diffusion_15_folder_passes_the_structure_check_and_missing_weights_say_so(lat, tmp_path):
    """SD-1.5's configs (no weights): the structure check passes and counts the parameters of the README's
    estimate; loading it as a pair says the weights are missing and what to do."""
    settings = json.loads((lat["ambient"] / AMBIENT_JSON).read_text())
    settings |= {"resolution": 512, "latent_shape": [4, 64, 64], "pretrained": "runwayml/stable-diffusion-v1-5"}
    sd = write_sd15_configs(tmp_path / "sd15-ambient", settings)
    checked = check_latent_folder(sd, need_weights=False)
    assert checked["settings"]["resolution"] == 512
    params = count_parameters(checked["configs"])
    assert params["unet"] == pytest.approx(859.5e6, rel=1e-3)
    assert params["vae"] == pytest.approx(83.65e6, rel=1e-3)
    assert params["text_encoder"] == pytest.approx(123.06e6, rel=1e-3)
    gpu = estimate_memory(checked["configs"], "cuda", images=4, guidance=True, params=params)
    assert gpu.bytes_per_param == 2 and gpu.weights / 2**30 == pytest.approx(3.59, abs=0.01)
    assert gpu.unet_activations / 2**30 == pytest.approx(0.47, abs=0.01)  # 24 maps x 8 rows x 64x64x320 fp16
    assert gpu.vae_activations / 2**30 == pytest.approx(1.0, abs=0.01)  # 8 maps x 2 images x 512x512x128 fp16
    assert gpu.total / 2**30 == pytest.approx(5.59, abs=0.01)
    assert estimate_memory(checked["configs"], "cpu", params=params).weights == 2 * gpu.weights  # fp32 on a CPU
    with pytest.raises(FileNotFoundError, match="unet has no safetensors weights .*configs only"):
        check_latent_folder(sd)
    (sd / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="pickles are never loaded"):
        check_latent_folder(sd)
    base = write_sd15_configs(tmp_path / "sd15-baseline", {**settings, "loss": "baseline", "sigma_n": None})
    with pytest.raises(lpmod.PairProblem, match="ambient pipeline cannot be used: .*no safetensors weights") as e:
        load_latent_pair(sd, base, lat["images"], embedder="pixels")
    assert "python -m ambient finetune" in e.value.fix


# ---------------------------------------------------------------- through the API


def test_generate_through_the_api(handlers):
    from gradio_client import Client

    from demo import handlers as h
    from demo.ui import build_app, launch_kwargs

    demo = build_app(handlers, h.device_banner("cpu"), "", max_concurrency=1)
    demo.queue(max_size=4, default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        r = client.predict(
            pair="latent",
            prompt="a red cat",
            seed=7,
            n_images=2,
            steps=4,
            guidance=2.0,
            sigma_c=SIGMA_N,
            mode="handover",
            api_name="/generate",
        )
        assert r["pair"] == "latent" and r["seeds"] == [7, 8] and r["sigma_c"] == SIGMA_N
        assert set(r["copies"]) == {"ambient", "baseline"}
        for side in ("ambient", "baseline"):
            for item in r[side]:
                assert len(item["neighbours"]) == 4 and item["png_base64"]
                assert all(-1 <= n["similarity"] <= 1 for n in item["neighbours"])
    finally:
        demo.close()


# ---------------------------------------------------------------- one Pair: the study, the sweep and the trajectories


def test_the_live_sweep_runs_on_a_latent_pair(handlers):
    p = handlers.pair("latent")
    sv = handlers.live_sweep("latent", n_seeds=2, points=2, steps=2)
    models = [r["models"] for r in sv.rows]
    assert models[-1] == "the baseline alone" and sv.rows[-1]["sigma_c"] is None
    assert sv.rows[0]["sigma_c"] == pytest.approx(p.sigma_min, rel=1e-4)  # the left end: where the range starts
    assert any(r["sigma_c"] == SIGMA_N for r in sv.rows)  # the training cutoff is always one of them
    assert all(r["n"] == 2 and 0 <= r["rate_ratio"] <= 1 for r in sv.rows)
    # the baseline-alone row scores the images the library makes of those seeds, by the same verdicts
    x = p.generate([10_000, 10_001], p.prompts.encode(["", ""]), 2, Cutoff.baseline_alone())
    assert x.shape == (2, *p.data_shape)
    v = p.verdicts(x, k=2)
    assert sv.rows[-1]["rate_ratio"] == pytest.approx(sum(bool(x.copy_by_ratio) for x in v) / 2)
    assert sv.rows[-1]["mean_similarity"] == pytest.approx(sum(float(x.similarity) for x in v) / 2, abs=1e-4)


def test_python_m_ambient_evaluate_runs_on_a_latent_pair(lat, tmp_path, capsys):
    from ambient.cli import main
    from ambient.pair import read_sweep

    out, pair_dir = tmp_path / "eval", tmp_path / "pair"
    argv = ["evaluate", "--ambient", str(lat["ambient"]), "--baseline", str(lat["baseline"])]
    argv += ["--pair-dir", str(pair_dir), "--out", str(out), "--n", "3", "--sweep-n", "2", "--sweep-points", "2"]
    argv += ["--steps", "2", "--embedder", "pixels", "--no-bf16"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["kind"] == "latent" and report["settings"]["embedder"] == "pixels"
    assert report["baseline"]["n"] == report["ambient"]["n"] == 3
    sweep = read_sweep(out / "sweep.json")["sweep"]
    assert sweep[-1]["sigma_c"] is None and sweep[0]["sigma_c"] == pytest.approx(0.0292, abs=1e-3)
    assert SIGMA_N in [r["sigma_c"] for r in sweep]
    assert (out / "sweep.png").is_file() and (out / "samples_ambient.png").is_file()
    assert (pair_dir / "index" / "meta.json").is_file()  # built once, kept beside the study
    assert "report ->" in capsys.readouterr().out


def test_the_moment_of_copying_is_one_function_for_the_app_and_the_study(handlers):
    from ambient.evaluate import copy_trajectory

    p = handlers.pair("latent")
    r = handlers.generate("latent", "a red cat", 3, 1, 6, 1.0, None, "handover")
    rows = copy_trajectory(p, 3, "a red cat", 6, sampler=handlers.sampler)
    assert rows == r.ambient[0].trajectory and len(rows) == 3  # trajectory_points: 3 of the 6 steps
    assert [t["model"] for t in rows] == ["ambient"] * 3
    base = copy_trajectory(p, 3, "a red cat", 6, side="baseline", sampler=handlers.sampler)
    assert base == r.baseline[0].trajectory and {t["model"] for t in base} == {"baseline"}


def test_the_description_publishes_no_server_path(lat, handlers):
    status = handlers.pair_status("latent")
    assert str(lat["root"]) not in status and "/tmp" not in status
    assert "from pipe," in status  # the pretrained pipeline, relative to the config's folder
    assert lpmod.public_source("/srv/models/sd15") == "a local folder .../sd15"
    assert lpmod.public_source("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert lpmod.public_source("hub:owner/name") == "owner/name"


def test_the_ends_a_user_is_told_are_the_ends_that_act(handlers):
    from demo import handlers as h

    p = handlers.pair("latent")
    with pytest.raises(InputError) as e:
        handlers.generate("latent", "a red cat", 0, 1, 2, 1.0, 100.0)
    m = re.search(r"from ([\d.]+) \(Ambient alone\) to ([\d.]+) \(baseline alone\)", str(e.value))
    lo, hi = float(m.group(1)), float(m.group(2))
    assert hi != p.sigma_max and lo != p.sigma_min  # printed to 6 digits, not the floats themselves
    assert h.check_cutoff(hi, "handover", p).is_baseline_alone
    assert h.check_cutoff(lo, "handover", p) == Cutoff.ambient_alone()
    assert h.check_cutoff(lo, "truncate", p) == Cutoff(0.0, "truncate")
    inside = h.check_cutoff(hi * 0.999, "handover", p)
    assert not inside.is_baseline_alone and inside.sigma_c == pytest.approx(hi * 0.999)

    def panels(value):
        r = p.side_by_side([0], "a red cat", 4, h.check_cutoff(value, "handover", p), trajectory_points=0)
        return r.ambient, r.baseline

    top, base = panels(hi)
    assert torch.equal(top, base)  # the told top: the baseline alone, no Ambient step
    inside, _ = panels(hi * 0.999)
    assert not torch.allclose(inside, base, atol=1e-4)  # just inside it, the Ambient model makes the first step
    bottom, _ = panels(lo)
    alone = p.side_by_side([0], "a red cat", 4, Cutoff.ambient_alone(), trajectory_points=0).ambient
    assert torch.equal(bottom, alone)  # the told bottom: the Ambient model alone, no baseline step


def test_sample_on_a_latent_pipeline_says_how_to_sample_it(lat, tmp_path, capsys):
    from ambient.cli import main

    assert main(["sample", "--model", str(lat["ambient"]), "--out", str(tmp_path / "x.png"), "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert "fine-tuned latent pipeline" in err and "ambient evaluate" in err and "cross_attention_dim" not in err
    assert not (tmp_path / "x.png").exists()


def test_evaluate_studies_a_pair_of_a_config_as_the_app_serves_it(lat, tmp_path, capsys):
    from ambient.cli import main

    out = tmp_path / "eval"
    small = ["--n", "2", "--sweep-n", "2", "--sweep-points", "2", "--steps", "2", "--no-bf16"]
    assert main(["evaluate", "--config", str(lat["config"]), "--pair", "latent", "--out", str(out), *small]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["pair"] == "latent" and report["settings"]["kind"] == "latent"
    assert report["settings"]["embedder"] == "pixels"  # the index the config names, as the app loads it
    for argv, says in (
        (["--config", str(lat["config"]), "--pair", "nope"], "has no pair 'nope'"),
        (["--config", str(lat["config"]), "--pair", "othertrain"], "different training images"),
        (["--config", str(lat["config"]), "--ambient", "x"], "leave out --ambient"),
        ([], "name the pair"),
    ):
        assert main(["evaluate", *argv, "--out", str(tmp_path / "bad"), *small]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
