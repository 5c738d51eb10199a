"""Ambient Explorer: the Gradio app. Runs locally (``python app.py``) and as a Hugging Face Space.

Settings come from the command line, or from the environment on a Space:
GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, AMBIENT_CONFIG, AMBIENT_ALLOWED_DIRS (os.pathsep-separated),
AMBIENT_DEVICE, AMBIENT_MAX_CONCURRENCY, AMBIENT_CACHE (where a fallback tiny pair is written).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "assets" / "pairs.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (imports nothing heavy, so ``--help`` is instant)."""
    env = os.environ
    ap = argparse.ArgumentParser(
        prog="python app.py",
        description="Ambient Explorer: Ambient Diffusion vs. a baseline trained on the same small dataset, "
        "side by side, with their nearest training images.",
    )
    ap.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on")
    ap.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", "7860")), help="port (7860)")
    ap.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    ap.add_argument(
        "--config", default=env.get("AMBIENT_CONFIG", str(DEFAULT_CONFIG)), help="pairs.json (assets/pairs.json)"
    )
    ap.add_argument(
        "--max-concurrency",
        type=int,
        default=int(env.get("AMBIENT_MAX_CONCURRENCY", "2")),
        help="requests that sample at the same time (2)",
    )
    ap.add_argument("--max-queue", type=int, default=16, help="requests that may wait in the queue (16)")
    ap.add_argument(
        "--allow-dir",
        action="append",
        default=[d for d in env.get("AMBIENT_ALLOWED_DIRS", "").split(os.pathsep) if d],
        help="a folder outside the config's own that pairs may load from (repeatable)",
    )
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default=env.get("AMBIENT_DEVICE", "auto"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: cores / max-concurrency)")
    ap.add_argument("--no-fallback", action="store_true", help="no tiny random pair when the default pair is missing")
    ap.add_argument(
        "--sampler",
        choices=("heun", "dpmpp_2m"),
        default=env.get("AMBIENT_SAMPLER", "dpmpp_2m"),
        help="the solver of every request that names none (dpmpp_2m: DPM-Solver++ 2M)",
    )
    args = ap.parse_args(argv)
    if args.max_concurrency < 1 or args.max_queue < 1:
        ap.error("--max-concurrency and --max-queue must be at least 1")
    if not 0 < args.port < 65536:
        ap.error("--port must be in 1..65535")
    return args


def _fallback_pair(registry: Any, cache: Path) -> str:
    """Write (once) and register a tiny random pair; returns its name."""
    from demo.pairs import PairError, load_config, load_pair
    from demo.tiny_pair import make_tiny_pair

    config = cache / "pairs.json"
    for attempt in range(2):
        if attempt or not config.is_file():
            make_tiny_pair(cache, name="tiny-random")
        spec = load_config(config).specs[0]
        try:
            load_pair(spec)  # a stale or damaged cached pair is rebuilt once
            break
        except PairError:
            if attempt:
                raise
    registry.allowed_dirs.append(cache)
    registry.add(spec, make_default=True)
    return spec.name


def setup(args: argparse.Namespace) -> tuple[Any, str, str]:
    """The handlers over the configured pairs, the device banner and a warning banner (empty when all is well)."""
    import torch

    from demo.handlers import Handlers, device_banner
    from demo.pairs import ConfigError, PairError, PairRegistry

    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.max_concurrency)
    torch.set_num_threads(threads)
    try:  # faiss has its own OpenMP pool: keep it from fighting torch's over the same cores
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    registry = PairRegistry.from_path(args.config, args.allow_dir, device)
    warning = ""
    problem = registry.config_error
    if problem is None:
        try:
            registry.get(registry.default)
        except PairError as e:
            problem = str(e)
    if problem:
        warning = f"**The model pair from {args.config} is not available.** {problem}"
        if not args.no_fallback:
            cache = Path(os.environ.get("AMBIENT_CACHE", Path.home() / ".cache" / "ambient-explorer")) / "tiny-pair"
            try:
                name = _fallback_pair(registry, cache)
                registry.get(name)
                warning += (
                    f"\n\nShowing **{name}**, a tiny *untrained* random pair, so that the interface can be tried: its"
                    " images are noise. Put the trained pair into assets/ (see demo/pairs.py) and restart."
                )
            except (PairError, ConfigError, OSError, ValueError, RuntimeError, ImportError) as e:
                # the fallback is a convenience (a full disk, a missing text encoder...): say why, go on without it
                warning += f"\n\nA tiny fallback pair could not be made either ({type(e).__name__}: {e})."
        print(warning, file=sys.stderr)  # the operator sees the full paths; visitors see them redacted
    return Handlers(registry, sampler=args.sampler), device_banner(device), registry.redact(warning)


def _warm_up(handlers: Any) -> None:
    """Load the text encoder and run one tiny sample in the background so the first click is fast."""
    from demo.pairs import PairError

    try:
        pair = handlers.registry.get(handlers.registry.default)
        handlers.generate(pair.name, "warm up" if pair.cond_dim else "", 0, 1, 2)  # loads the text encoder too
    except (
        ValueError,
        PairError,
        OSError,
        RuntimeError,
        ImportError,
    ) as e:  # only an optimisation; InputError is a ValueError
        print(f"warm-up skipped: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Start the app."""
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    handlers, banner, warning = setup(args)
    from demo.ui import build_app, launch_kwargs

    demo = build_app(handlers, banner, warning, args.max_concurrency)
    demo.queue(max_size=args.max_queue, default_concurrency_limit=args.max_concurrency)
    threading.Thread(target=_warm_up, args=(handlers,), daemon=True).start()
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True, **launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
