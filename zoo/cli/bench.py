"""``zoo bench [NAME] [ARGS...]``: run benchmarks/bench_NAME.py (lists them without a name)."""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path


def benchmarks_dir() -> Path:
    env = os.environ.get("ZOO_BENCHMARKS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> dict[str, Path]:
    folder = benchmarks_dir()
    return {p.stem[len("bench_"):]: p for p in sorted(folder.glob("bench_*.py"))} if folder.is_dir() else {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="benchmark name (omit to list them)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark script")


def run(args: argparse.Namespace) -> int:
    benches = available()
    if not args.name:
        if not benches:
            print(f"no benchmarks found in {benchmarks_dir()}")
            return 0
        print(f"benchmarks in {benchmarks_dir()}:")
        for name, path in benches.items():
            doc = _first_doc_line(path)
            print(f"  {name:<16} {doc}")
        return 0
    if args.name not in benches:
        raise ValueError(f"no benchmark '{args.name}'; available: {', '.join(benches) or 'none'}")
    path = benches[args.name]
    sys.argv = [str(path), *args.args]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    return 0


def _first_doc_line(path: Path) -> str:
    import ast

    try:
        doc = ast.get_docstring(ast.parse(path.read_text()))
    except (SyntaxError, OSError):
        return ""
    return (doc or "").strip().splitlines()[0] if doc else ""
