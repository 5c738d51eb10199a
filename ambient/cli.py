"""Command line: ``python -m ambient train | sample | index | evaluate``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence


def _add_train(sub: argparse._SubParsersAction) -> None:
    from ambient.training import TrainConfig

    p = sub.add_parser("train", help="train a baseline or Ambient model (resumes from out/checkpoint)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, list):
            p.add_argument(flag, type=int, nargs="+", default=default)
        elif f.name == "text_model":
            p.add_argument(flag, default=default, help="sentence encoder name, or 'none' for unconditional")
        else:
            p.add_argument(flag, type=type(default), default=default)


def _run_train(args: argparse.Namespace) -> int:
    from ambient.training import TrainConfig, train

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if kw["text_model"] in ("none", "", "None"):
        kw["text_model"] = None
    path = train(TrainConfig(**kw))
    print(f"model written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m ambient", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    args = parser.parse_args(argv)
    try:
        return {"train": _run_train}[args.command](args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
