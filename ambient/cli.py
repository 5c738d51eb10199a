"""Command line: ``python -m ambient train | sample | index | evaluate | grid``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to every option's help, except where there is nothing to show (required
    options, None or empty defaults, which the help text explains, and plain on/off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if (
            action.required
            or default is None
            or default in ((), "")
            or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))
        ):
            return action.help
        return super()._get_help_string(action)


def _parser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)


def add_config_options(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of a config dataclass, ``--field-name``, with the help text its field carries
    (``metadata["help"]``): switches for booleans, integer lists, words that mean None where the field says so."""
    for f in dataclasses.fields(cls):
        flag, help = "--" + f.name.replace("_", "-"), f.metadata.get("help")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.metadata.get("required"):
            p.add_argument(flag, required=True, help=help)
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
        elif isinstance(default, list):
            p.add_argument(flag, type=int, nargs="+", default=default, help=help)
        elif default is None or "none" in f.metadata:
            p.add_argument(flag, default=default, help=help)
        else:
            p.add_argument(flag, type=type(default), default=default, help=help)


def config_from_args(cls: type, args: argparse.Namespace) -> object:
    """The config dataclass of parsed options (words that mean None, where a field names them, become None)."""
    kw = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        kw[f.name] = None if v in f.metadata.get("none", ()) else v
    return cls(**kw)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from ambient.config import TrainConfig

    p = _parser(sub, "train", "train a baseline or Ambient model (resumes from OUT/checkpoint)")
    add_config_options(p, TrainConfig)


def _run_train(args: argparse.Namespace) -> int:
    from ambient.training import TrainConfig, train

    path = train(config_from_args(TrainConfig, args))
    print(f"model written to {path}")
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "sample", "generate images and write a PNG grid")
    p.add_argument("--model", required=True, help="model folder (or diffusers pipeline folder / hub id)")
    p.add_argument("--baseline", help="second model, used below sigma_c in handover mode (default: --model alone)")
    p.add_argument("--sigma-c", type=float, default=0.0, help="noise cutoff (hand-over or truncate)")
    p.add_argument(
        "--mode",
        choices=["handover", "truncate"],
        default="handover",
        help="handover: --model above sigma_c, --baseline below; truncate: stop at sigma_c and return --model's "
        "estimate of the clean image there",
    )
    p.add_argument("--prompt", default="", help="text prompt (default: '', unconditional)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="first seed (seeds are seed..seed+n-1)")
    p.add_argument("--steps", type=int, default=18, help="noise levels of the Karras schedule (Heun sampler)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: no guidance)")
    p.add_argument("--out", default="samples.png", help="PNG file for the grid of samples")


def _run_sample(args: argparse.Namespace) -> int:
    from ambient.denoiser import load_denoiser
    from ambient.evaluate import encode_prompts, generate, is_latent_folder
    from ambient.images import save_grid

    if is_latent_folder(args.model):
        print(
            f"error: {args.model} is a fine-tuned latent pipeline: sample it as a pair (python app.py with it in "
            "pairs.json, or python -m ambient evaluate --ambient ... --baseline ...)",
            file=sys.stderr,
        )
        return 2
    amb = load_denoiser(args.model)
    base = load_denoiser(args.baseline) if args.baseline else None
    cond = encode_prompts([args.prompt] * args.n, getattr(amb, "meta", {}).get("text_model"), amb.cond_dim)
    x = generate(
        amb, base, list(range(args.seed, args.seed + args.n)), cond, args.steps, args.sigma_c, args.mode, args.guidance
    )
    save_grid(x, args.out)
    print(f"{args.n} images written to {args.out}")
    return 0


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "index", "build the nearest-neighbour index over a model's training images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder: its config names the training ids and dataset")
    src.add_argument("--data", help="a .npz file, an image folder or 'fashion-mnist'")
    p.add_argument(
        "--embedder",
        default="pixels",
        help="feature space of the similarity test: pixels | efficientnet-lite0 | fmnist-cnn | open_clip:.. | dinov2:..",
    )
    p.add_argument(
        "--kind",
        choices=["flat", "ivf"],
        default="flat",
        help="flat: exact search; ivf: inverted lists, approximate and faster for large training sets",
    )
    p.add_argument("--threshold", type=float, default=0.95, help="cosine above which a sample counts as a copy")
    p.add_argument("--out", required=True, help="folder: train.npz and index/ are written into it")


def _run_index(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ambient.data import load_dataset, training_set_of
    from ambient.memorization.neighbours import TrainingSetIndex

    ds = training_set_of(args.model) if args.model else load_dataset(args.data)
    out = Path(args.out)
    ds.save_npz(out / "train.npz")
    index = TrainingSetIndex(ds.images, ds.ids, args.embedder, args.kind, args.threshold)
    index.save(out / "index")
    print(f"{len(ds)} training images -> {out / 'train.npz'}, index ({args.embedder}, {args.kind}) -> {out / 'index'}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "evaluate", "memorization, quality and the sigma_c sweep of a model pair")
    p.add_argument("--ambient", help="Ambient model folder, or fine-tuned latent pipeline (used above sigma_c)")
    p.add_argument("--baseline", help="baseline model folder or pipeline (used below sigma_c)")
    p.add_argument(
        "--config",
        default=None,
        help="instead of --ambient/--baseline/--pair-dir: a pairs.json whose pair (--pair) is studied as the app "
        "serves it",
    )
    p.add_argument("--pair", default=None, help="with --config: the pair's name (default: the config's default)")
    p.add_argument(
        "--pair-dir",
        default=None,
        help="pixel pair: folder with train.npz and index/ (from 'index'); latent pair: folder whose index/ is "
        "loaded, or built and saved there the first time (default: built in memory)",
    )
    p.add_argument(
        "--embedder",
        default=None,
        help="latent pair: image embedder of a newly built index (default efficientnet-lite0; 'pixels' is fastest)",
    )
    p.add_argument("--n", type=int, default=1000, help="samples per model for the main comparison")
    p.add_argument("--sweep-n", type=int, default=256, help="samples per sigma_c in the sweep")
    p.add_argument("--sweep-points", type=int, default=9, help="log-spaced sigma_c values in [sigma_min, sigma_max]")
    p.add_argument("--sweep-min", type=float, default=None, help="lowest sigma_c of the sweep (default: sigma_min)")
    p.add_argument("--steps", type=int, default=18, help="noise levels of the Karras schedule (Heun sampler)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: no guidance)")
    p.add_argument("--seed", type=int, default=10_000, help="first sampling seed")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="sample under bf16 autocast")
    p.add_argument("--out", required=True, help="folder for report.json, sweep.json and sweep.png")


def _run_evaluate(args: argparse.Namespace) -> int:
    from ambient.evaluate import evaluate_loaded, evaluate_pair
    from ambient.pair import PairError

    study = {"n": args.n, "sweep_n": args.sweep_n, "sweep_points": args.sweep_points, "sweep_min": args.sweep_min}
    study |= {"steps": args.steps, "guidance": args.guidance, "seed": args.seed, "bf16": args.bf16}
    try:
        if args.config is not None:
            if args.ambient or args.baseline or args.pair_dir:
                raise PairError("--config names the pair: leave out --ambient, --baseline and --pair-dir.")
            from ambient.pairs_config import load_config, load_pair

            cfg = load_config(args.config)
            name = args.pair or cfg.default
            spec = next((s for s in cfg.specs if s.name == name), None)
            if spec is None:
                raise cfg.errors.get(name) or PairError(
                    f"{args.config} has no pair {name!r}.", f"Choose one of {[s.name for s in cfg.specs]}."
                )
            extra = {"config": str(args.config), "pair": name}
            report = evaluate_loaded(load_pair(spec), args.out, settings_extra=extra, **study)
        elif args.ambient and args.baseline:
            report = evaluate_pair(
                args.ambient, args.baseline, args.pair_dir, args.out, embedder=args.embedder, **study
            )
        else:
            raise PairError("name the pair: --ambient and --baseline (with --pair-dir), or --config (with --pair).")
    except PairError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in ("reference", "baseline", "ambient"):
        r = report[name]
        if not r:  # no held-out reference for this pair
            continue
        print(
            f"{name:10s} cos>0.95 {r['rate_similarity']['0.95']:.3f}  ratio<1/3 {r['rate_ratio']:.3f}  "
            f"FD {r.get('frechet_distance', float('nan')):.2f}"
        )
    print(f"report -> {args.out}/report.json")
    return 0


def _add_grid(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "grid", "train and score a grid of runs from a JSON file (resumable)")
    p.add_argument("file", help="grid JSON: name, runs_dir, studies_dir, defaults, eval, runs")
    p.add_argument("--jobs", type=int, default=1, help="training processes at once")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per training process (default: cores / jobs)")
    p.add_argument("--only", nargs="+", default=(), help="names of the runs to do (default: all)")
    p.add_argument("--no-train", dest="train", action="store_false", help="only score existing snapshots")
    p.add_argument("--no-eval", dest="evaluate", action="store_false", help="only train")


def _run_grid(args: argparse.Namespace) -> int:
    from ambient.research.grid import run_grid

    for path in run_grid(args.file, args.jobs, args.only, args.train, args.evaluate, args.threads):
        print(f"study -> {path}")
    return 0


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    from ambient.config import FinetuneConfig

    p = _parser(
        sub,
        "finetune",
        "fine-tune the UNet of a diffusers text-to-image pipeline on captioned images, baseline or Ambient loss in "
        "latent space (resumes from OUT/checkpoint)",
    )
    add_config_options(p, FinetuneConfig)


def _run_finetune(args: argparse.Namespace) -> int:
    from ambient.latent import FinetuneConfig, finetune

    path = finetune(config_from_args(FinetuneConfig, args))
    print(f"pipeline written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m ambient", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_index(sub)
    _add_evaluate(sub)
    _add_grid(sub)
    _add_finetune(sub)
    args = parser.parse_args(argv)
    runners = {
        "train": _run_train,
        "sample": _run_sample,
        "index": _run_index,
        "evaluate": _run_evaluate,
        "grid": _run_grid,
        "finetune": _run_finetune,
    }
    try:
        return runners[args.command](args)
    except (ValueError, OSError, RuntimeError) as e:  # bad settings, missing files, weights that do not load
        print(f"error: {e}", file=sys.stderr)
        return 2
