"""Rewrite EDM model folders from the older layout (config.json + model.safetensors) into the diffusers-shaped one
(unet/, text_proj.safetensors, ambient_config.json, README.md), in place and atomically, without retraining.

Each folder is loaded, its outputs on a fixed input are recorded, the new layout is written to a temporary
sibling and checked there (our loader and diffusers' ``UNet2DModel.from_pretrained(..., subfolder="unet")`` must
give bit-identical outputs and weights), and only then renamed into place; a folder that fails the check is left
as it was. Folders already in the new layout are checked and left alone, so a second run changes nothing.
A README.md already in a folder keeps its text under refreshed Hub metadata.

python scripts/convert_checkpoints.py assets/fmnist-100/baseline assets/fmnist-100/ambient_high
python scripts/convert_checkpoints.py --dry-run runs/          # list what would be converted
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ambient.denoiser import (
    CARD_NAME,
    CONFIG_NAME,
    LEGACY_CONFIG_NAME,
    LEGACY_WEIGHTS_NAME,
    UNET_FOLDER,
    EDMDenoiser,
    is_model_dir,
)

LEGACY_FILES = {LEGACY_CONFIG_NAME, LEGACY_WEIGHTS_NAME, CARD_NAME}
SIGMAS = (0.002, 0.05, 0.5, 2.0, 80.0)  # one row per noise level, from the floor to the ceiling of EDM's range


def find_model_dirs(paths: list[str | Path]) -> list[Path]:
    """EDM model folders (either layout) at or under ``paths``, skipping hidden (temporary) folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if is_model_dir(p):
            found.append(p)
            continue
        for root, dirs, _ in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for d in list(dirs):
                if is_model_dir(Path(root) / d):
                    found.append(Path(root) / d)
                    dirs.remove(d)  # a model folder holds no other model folders
    return list(dict.fromkeys(found))


def fixed_input(model: EDMDenoiser, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A seeded batch (x, sigma, cond): one row per noise level in ``SIGMAS``, the last cond row zero (empty prompt)."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.tensor(SIGMAS)
    x = torch.randn(len(SIGMAS), *model.image_shape, generator=g) * (1 + sigma).view(-1, 1, 1, 1)
    cond = None
    if model.cond_dim:
        cond = torch.randn(len(SIGMAS), model.cond_dim, generator=g)
        cond[-1] = 0
    return x, sigma, cond


@torch.no_grad()
def denoiser_outputs(
    model: EDMDenoiser, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
) -> torch.Tensor:
    """D(x, sigma, cond) and D(x, sigma, None) on the fixed input, stacked."""
    x, sigma, cond = inputs
    return torch.stack([model(x, sigma, cond), model(x, sigma, None)])


@torch.no_grad()
def unet_outputs(
    unet: torch.nn.Module, model: EDMDenoiser, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
) -> torch.Tensor:
    """The raw UNet's output on the input ``model`` would give it (scaled x, timestep, projected prompt)."""
    x, sigma, cond = inputs
    s = sigma.view(-1, 1, 1, 1)
    c_in = 1 / (s**2 + model.sigma_data**2).sqrt()
    labels = model.net.cond_proj(cond) if model.cond_dim else None
    return unet(c_in * x, sigma.log() / 4 * model.net.time_scale, class_labels=labels).sample


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def check_folder(folder: Path, reference: EDMDenoiser) -> dict[str, Any]:
    """Load ``folder`` (new layout) with our loader and with diffusers and compare both to ``reference``."""
    from diffusers import UNet2DModel

    new = EDMDenoiser.from_pretrained(folder)
    inputs = fixed_input(reference)
    want = denoiser_outputs(reference, inputs)
    got = denoiser_outputs(new, inputs)
    unet = UNet2DModel.from_pretrained(folder, subfolder=UNET_FOLDER).eval()
    ref_unet = unet_outputs(reference.net.unet, reference, inputs)
    hf_unet = unet_outputs(unet, reference, inputs)
    old_sd, new_sd = reference.net.state_dict(), new.net.state_dict()
    same_weights = old_sd.keys() == new_sd.keys() and all(torch.equal(v, new_sd[k]) for k, v in old_sd.items())
    hf_sd = unet.state_dict()
    same_hf_weights = all(torch.equal(v, hf_sd[k]) for k, v in reference.net.unet.state_dict().items())
    result = {
        "max_abs_diff": _max_diff(want, got),
        "diffusers_unet_max_abs_diff": _max_diff(ref_unet, hf_unet),
        "identical": bool(torch.equal(want, got) and torch.equal(ref_unet, hf_unet)),
        "same_weights": bool(same_weights and same_hf_weights),
        "same_meta": new.meta == reference.meta and new.sigma_data == reference.sigma_data,
    }
    if not (result["identical"] and result["same_weights"] and result["same_meta"]):
        raise ValueError(f"the rewritten {folder} does not reproduce the original: {json.dumps(result)}")
    return result


def convert(folder: str | Path, dry_run: bool = False) -> dict[str, Any]:
    """Convert one model folder in place (atomically, checked); a folder already converted is only checked."""
    folder = Path(folder)
    if (folder / CONFIG_NAME).is_file():
        model = EDMDenoiser.from_pretrained(folder)
        return {"folder": str(folder), "status": "already in the new layout", **check_folder(folder, model)}
    extra = sorted(p.name for p in folder.iterdir() if p.name not in LEGACY_FILES)
    if extra:
        raise ValueError(f"{folder} holds files a model folder does not: {extra}; move them away first")
    model = EDMDenoiser.from_pretrained(folder).eval()
    if dry_run:
        return {"folder": str(folder), "status": "would convert"}
    before = denoiser_outputs(model, fixed_input(model))
    result: dict[str, Any] = {}

    def check(tmp: Path) -> None:
        result.update(check_folder(tmp, model))

    model.save_pretrained(folder, check=check)
    after = denoiser_outputs(EDMDenoiser.from_pretrained(folder), fixed_input(model))
    if not torch.equal(before, after):  # the folder in place, read back once more
        raise ValueError(f"{folder}: outputs changed after conversion (max abs diff {_max_diff(before, after)})")
    return {"folder": str(folder), "status": "converted", **result}


def main(argv: list[str] | None = None) -> int:
    """Convert every model folder at or under the given paths; prints one JSON line per folder."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="model folders, or folders to search for model folders")
    ap.add_argument("--dry-run", action="store_true", help="only list the folders that would be converted")
    args = ap.parse_args(argv)
    with torch.no_grad():  # not set_grad_enabled(False): main() is also called in-process by the tests
        return _convert_all(args)


def _convert_all(args: argparse.Namespace) -> int:
    try:
        folders = find_model_dirs(args.paths)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not folders:
        print("no model folders found", file=sys.stderr)
        return 1
    failed = 0
    for f in folders:
        try:
            print(json.dumps(convert(f, args.dry_run)), flush=True)
        except (OSError, ValueError) as e:
            failed += 1
            print(json.dumps({"folder": str(f), "status": "failed", "error": str(e)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
