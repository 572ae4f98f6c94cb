"""``zoo train ...``: hands its arguments to ``zoo.train.loop.main(argv) -> int`` (the recipe runner that
``python -m zoo.train.main`` also runs)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="arguments for the trainer (see `zoo train --help`)")


def run(args: argparse.Namespace) -> int:
    try:
        from zoo.train.loop import main as train_main
    except ImportError as err:
        raise RuntimeError(f"training is not available in this build (zoo.train could not be imported: {err})") \
            from None
    return int(train_main(list(args.argv)) or 0)
