"""``zoo env``: what this machine offers the zoo."""
from __future__ import annotations

import argparse
import platform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import jax
    import jaxlib

    from zoo import __version__
    from zoo.cli.cache import describe_cache
    from zoo.nn.attention import IMPLEMENTATIONS, platform_supports

    backend = jax.default_backend()
    print(f"zoo {__version__}, python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}")
    print(f"platform: {backend}; devices: {len(jax.devices())} x {jax.devices()[0].device_kind}")
    usable = [name for name in IMPLEMENTATIONS if name == "auto" or platform_supports(name, backend)]
    print(f"attention implementations here: {', '.join(usable)}"
          + (" (pallas runs in interpret mode on CPU)" if backend == "cpu" else ""))
    print(describe_cache(getattr(args, "compile_cache", None), getattr(args, "no_compile_cache", False)))
    return 0
