"""Model cards (the README.md of a model folder), in one place: the short card generated for any saved model, and
the card of a shipped model with its measured numbers. ``EDMDenoiser.model_card`` puts the Hub metadata front matter
over either."""

from __future__ import annotations

from typing import Any


def generated_card(model: Any, title: str) -> str:
    """The short card ``save_pretrained`` writes for a model folder that has none, from the model's meta."""
    from ambient.denoiser import CONFIG_NAME, TEXT_PROJ_NAME, UNET_FOLDER

    m = model.meta
    loss = m.get("loss", "not recorded")
    sn = f", sigma_n = {m['sigma_n']}" if m.get("sigma_n") is not None else ""
    regime = f", regime {m['regime']}" if m.get("regime") else ""
    n = len(m.get("train_ids") or [])
    data = f"{n} images of {m.get('dataset', 'an unrecorded dataset')}" if n else "data not recorded"
    cond = (
        f"prompt embeddings of {m.get('text_model') or 'a text encoder (not recorded)'} ({model.cond_dim}-d), projected by `{TEXT_PROJ_NAME}` to "
        "the UNet's `class_labels` (`class_embed_type` identity); a zero vector is the empty prompt"
        if model.cond_dim
        else "none (unconditional)"
    )
    return f"""# {title}

An EDM denoiser D(x, sigma, cond) from the Ambient Diffusion memorization project: a diffusers `UNet2DModel`
(in `{UNET_FOLDER}/`) inside EDM preconditioning (sigma_data {model.sigma_data:g}).

- Loss: {loss}{sn}{regime}.
- Training: {m.get("steps", "?")} steps; {data} (ids in `{CONFIG_NAME}`, `meta.train_ids`).
- Text conditioning: {cond}.

Load the denoiser with `ambient.denoiser.EDMDenoiser.from_pretrained(folder)`. The raw network alone loads with
`diffusers.UNet2DModel.from_pretrained(folder, subfolder="{UNET_FOLDER}")`; it takes c_in(sigma) x and the
timestep {model.net.time_scale:g} * log(sigma) / 4, and returns F with D = c_skip x + c_out F.
"""


def _pct(x: float | None) -> str:
    """A rate as a percentage with one decimal; "n/a" for None."""
    return "n/a" if x is None else f"{100 * x:.1f} %"


def measured_card(name: str, model: Any, report: dict[str, Any], command: str) -> str:
    """The card of a shipped model folder: how it was trained, and its numbers from ``report`` (``evaluate_pair``'s
    report.json: the model's row, the held-out reference row, the settings) with the command that measured them."""
    meta = model.meta
    tc = meta.get("train_config", {})
    row = report["baseline" if model.meta.get("loss") == "baseline" else "ambient"]
    ref = report.get("reference", {})
    s = report["settings"]
    loss = meta.get("loss")
    regime = meta.get("regime", "all")
    what = {
        ("baseline", "all"): "plain EDM loss on the clean images at every noise level",
        ("ambient", "all"): f"Ambient loss, one network: fixed noisy copies (sigma_n = {meta.get('sigma_n')}) above "
        "sigma_n, clean images below",
        ("ambient", "high"): f"Ambient loss, high-noise-only network: trained only at sigma >= sigma_n = "
        f"{meta.get('sigma_n')} on the fixed noisy copies; sampled with a hand-over to the baseline at sigma_n",
    }[(loss, regime)]
    k = tc.get("upsample", 1)
    grid = (
        f"\n- Grid: trained on the images upsampled {k} x {k} (each pixel repeated: {32 * k}x{32 * k}, so a fixed noisy "
        f"copy holds {k * k} times the noise numbers of the same content) through a {tc.get('patch', 1)} x "
        f"{tc.get('patch', 1)} space-to-depth stem; it samples at {32 * k}x{32 * k}, and its samples are averaged back "
        f"to 32x32 to be scored, searched and shown. Noise levels are on the fine grid: sigma there is {k} times "
        "sigma on the 32x32 content."
        if k > 1
        else ""
    )
    return f"""# {name}

- Loss: {what}.
- Data: {len(meta.get("train_ids", []))} Fashion-MNIST training images (class-balanced subset, seed
  {tc.get("subset_seed")}), 32x32, one channel; ids in `ambient_config.json` (`meta.train_ids`) and `../train.npz`.
- Text conditioning: prompt embeddings from {meta.get("text_model")} (captions from class names, templates
  and synonyms; caption dropout {tc.get("caption_dropout")} so the empty prompt samples unconditionally).{grid}
- Network: diffusers UNet2DModel, block_out_channels {tc.get("block_out_channels")}, no attention, EDM
  preconditioning (sigma_data 0.5).
- Training: {meta.get("steps")} steps, batch {tc.get("batch")}, Adam lr {tc.get("lr")} (warm-up {tc.get("warmup")}),
  EMA {tc.get("ema")}, bf16 autocast, seed {meta.get("seed")}; training noise levels ln sigma ~ N({tc.get("p_mean", -1.2)},
  {tc.get("p_std", 1.2)}), loss weight above sigma_n: {tc.get("high_weight", "edm")}.

## Measured ({s["n"]} samples, EDM Heun {s["steps"]} steps, guidance {s["guidance"]})

| | this model | held-out real images |
|---|---|---|
| nearest training image, cosine > 0.95 ({s["embedder"]}) | {_pct(row["rate_similarity"]["0.95"])} | {_pct(ref.get("rate_similarity", {}).get("0.95"))} |
| nearest training image, cosine > 0.9 | {_pct(row["rate_similarity"]["0.9"])} | {_pct(ref.get("rate_similarity", {}).get("0.9"))} |
| pixel-L2 ratio test d1/d2 < 1/3 | {_pct(row["rate_ratio"])} | {_pct(ref.get("rate_ratio"))} |
| mean nearest cosine | {row["mean_similarity"]:.3f} | {ref.get("mean_similarity", float("nan")):.3f} |
| Frechet distance (fmnist-cnn features) | {row.get("frechet_distance", float("nan")):.2f} | {ref.get("frechet_distance", float("nan")):.2f} |
| prompt fidelity (classifier accuracy) | {_pct(row.get("prompt_fidelity"))} | {_pct(ref.get("prompt_fidelity"))} |

Reproduce: `{command}`
"""
