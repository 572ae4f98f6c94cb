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
    "download": ("zoo.cli.download", "download a Hub repository into the local cache"),
    "convert": ("zoo.cli.convert", "convert a checkpoint: Hugging Face <-> orbax param tree"),
    "generate": ("zoo.cli.generate", "complete a prompt, streaming tokens as they come"),
    "chat": ("zoo.cli.chat", "chat in the terminal with the model's chat template"),
    "serve": ("zoo.cli.serve", "OpenAI-compatible HTTP server with continuous batching"),
    "train": ("zoo.cli.train", "train or fine-tune (arguments go to zoo.train)"),
    "bench": ("zoo.cli.bench", "run a benchmark script from benchmarks/ (lists them without a name)"),
}
# Commands that run no JAX program get no compile-cache flags.
NO_COMPILE = ("download",)
# Commands that take the compile-cache flags only to describe the cache (must not create it).
DESCRIBE_CACHE = ("env",)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (plus where to find help)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zoo",
        description="zoo: Hugging Face Hub checkpoints as pure, jit-compiled JAX models.",
    )
    parser.subcommands = {}  # name -> its parser, so errors name the sub-command
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        doc = (mod.__doc__ or "").split("\n\n", 1)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=doc[1].strip() if len(doc) > 1 else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        parser.subcommands[name] = p
        if name not in NO_COMPILE:
            from zoo.cli.cache import add_cache_arguments

            add_cache_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["train"]:  # everything after `train`, --help included, belongs to the trainer
        args = argparse.Namespace(command="train", argv=argv[1:])
    else:
        args, extra = parser.parse_known_args(argv)
        if extra:  # argparse would blame the top-level `zoo`; name the sub-command and its help
            parser.subcommands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        if args.command not in NO_COMPILE + DESCRIBE_CACHE:
            from zoo.cli.cache import setup_from_args

            setup_from_args(args)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a user-facing command: one line, no traceback (ZOO_DEBUG=1 shows it)
        if os.environ.get("ZOO_DEBUG"):
            raise
        known = isinstance(err, (OSError, ValueError, TypeError, RuntimeError, KeyError, ImportError))
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"zoo {args.command}: error: {text if known else f'{type(err).__name__}: {text}'}", file=sys.stderr)
        return 1
    finally:
        if args.command not in NO_COMPILE + DESCRIBE_CACHE:
            from zoo.cli.cache import report_compile_stats

            report_compile_stats()


if __name__ == "__main__":
    sys.exit(main())
