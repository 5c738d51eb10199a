"""Shared test doubles and builders: a memorizing denoiser, a tiny Stable-Diffusion-shaped pipeline made locally
(random weights, a CLIP tokenizer from a 74-token vocabulary: no hub), captioned image folders, and the
component configs of a full-size Stable Diffusion 1.5 pipeline (configs only, no weights)."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


class Memorizer(nn.Module):
    """The ideal denoiser of the training set's empirical distribution: it can only ever produce training images."""

    def __init__(self, images: torch.Tensor, cond_dim: int = 384):
        super().__init__()
        self.images, self.cond_dim, self.image_shape = images, cond_dim, tuple(images.shape[1:])

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax-weighted average of the training images at noise level sigma."""
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        d2 = torch.cdist(x.flatten(1).double(), self.images.flatten(1).double()) ** 2
        w = torch.softmax(-d2 / (2 * s * s), dim=1)
        return (w @ self.images.flatten(1).double()).float().view_as(x)


CAPTIONS = ["a red cat", "a blue dog", "a red cat", "green tree 1", "", "small house"]  # a repeat and an empty one
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def tiny_unet_config() -> dict:
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 16,
        "attention_head_dim": 2,
        "norm_num_groups": 4,
    }


def make_tiny_pipeline(folder: Path) -> Path:
    """A Stable-Diffusion-shaped pipeline of random weights (16 x 16 images, 4 x 8 x 8 latents), saved to folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = folder.parent / f"{folder.name}-vocab"
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*CHARS, *(c + "</w>" for c in CHARS)]:  # no merges: a word is its letters
        vocab[token] = len(vocab)  # one id each (a dict comprehension over len(vocab) gave them all one id)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=12)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=12,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            projection_dim=16,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**tiny_unet_config()),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def write_images(folder: Path, captions: list[str] = CAPTIONS, size: tuple[int, int] = (20, 24)) -> Path:
    """Random RGB images img_0.png ... with a .txt caption beside each (not square: the crop is exercised)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, text in enumerate(captions):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
        (folder / f"img_{i}.txt").write_text(text + "\n")
    return folder


def write_sd15_configs(folder: Path, ambient_settings: dict | None = None) -> Path:
    """The component configs of a Stable Diffusion 1.5 pipeline as its hub folder has them (no weights), and an
    ``ambient_latent.json`` when ``ambient_settings`` is given: a fine-tuned full-size pipeline's structure."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    unet = {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    }
    vae = {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    text = {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "vocab_size": 49408,
    }
    sched = {
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
    }
    files = {
        "model_index.json": index,
        "unet/config.json": unet,
        "vae/config.json": vae,
        "text_encoder/config.json": text,
        "scheduler/scheduler_config.json": sched,
        "tokenizer/tokenizer_config.json": {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"},
    }
    if ambient_settings is not None:
        files["ambient_latent.json"] = ambient_settings
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    return folder
