"""``zoo`` / ``python -m zoo``: one entry point, one module per sub-command.

Each sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can fix (missing model, bad flag, no network) print one line, not a
traceback; ``ZOO_DEBUG=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "demo": ("zoo.cli.demo", "run the embedded offline demo (no Hub access needed)"),
    "env": ("zoo.cli.env", "show jax version, devices, attention implementations, compile cache"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="zoo: Hugging Face Hub checkpoints as pure, jit-compiled JAX models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"zoo {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
