"""JAX's persistent compilation cache for ``zoo`` commands and the server.

Compiling the prefill and decode programs dominates a cold start on small
models; with the cache on, the second run of the same command on the same shapes
loads every executable from disk and compiles nothing.

Where: ``--compile-cache DIR`` > ``$ZOO_COMPILE_CACHE`` > ``$XDG_CACHE_HOME/zoo/jax``
(``~/.cache/zoo/jax``). ``--no-compile-cache`` (or ``ZOO_COMPILE_CACHE=off``) turns it off.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ENV_VAR = "ZOO_COMPILE_CACHE"
OFF_VALUES = ("", "0", "off", "none", "false")

# Counts of JAX compilation-cache events in this process (filled once the listener is on).
_EVENTS: dict[str, int] = {}
_listening = False


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zoo" / "jax"


def resolve_cache_dir(flag: str | None = None, disabled: bool = False) -> Path | None:
    """The cache folder the flags and environment ask for, or None when it is off."""
    if disabled:
        return None
    if flag:
        return Path(flag).expanduser()
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return None if env.strip().lower() in OFF_VALUES else Path(env).expanduser()
    return default_cache_dir()


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compilation cache")
    group.add_argument("--compile-cache", metavar="DIR", default=None,
                       help=f"persistent JAX compilation cache folder (default: ${ENV_VAR} or {default_cache_dir()})")
    group.add_argument("--no-compile-cache", action="store_true", help="compile everything afresh, store nothing")


def enable_compile_cache(directory: str | os.PathLike | None) -> Path | None:
    """Point JAX's persistent cache at ``directory`` (None: leave it off). Call before compiling."""
    _listen()
    if directory is None:
        return None
    import jax

    if not cache_is_safe_here():
        print("[zoo] compile cache: off for this run (several CPU devices: XLA:CPU executables for more than "
              "one device abort when loaded back from the persistent cache)", file=sys.stderr, flush=True)
        return None
    path = Path(directory).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Small models compile in well under JAX's default 1 s threshold; cache them all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def cache_is_safe_here() -> bool:
    """False on a CPU backend with several devices (``--xla_force_host_platform_device_count``,
    or CPU multi-process runs): with jax 0.10 a multi-device CPU executable (e.g. a sharded
    train step) stored in the persistent cache aborts the process when a later run loads it
    (reproduced with the ZeRO recipe: second run, "Fatal Python error: Aborted")."""
    import jax

    return not (jax.default_backend() == "cpu" and jax.device_count() > 1)


def setup_from_args(args: argparse.Namespace) -> Path | None:
    return enable_compile_cache(resolve_cache_dir(getattr(args, "compile_cache", None),
                                                  getattr(args, "no_compile_cache", False)))


def _listen() -> None:
    global _listening
    if _listening:
        return
    from jax import monitoring

    def count(name: str, *_args, **_kw) -> None:
        if name.startswith("/jax/compilation_cache/"):
            key = name.rsplit("/", 1)[-1]
            _EVENTS[key] = _EVENTS.get(key, 0) + 1

    monitoring.register_event_listener(count)
    monitoring.register_event_duration_secs_listener(count)
    _listening = True


def compile_stats() -> dict[str, int]:
    """``{"hits": .., "misses": ..}`` for this process so far (misses = programs compiled)."""
    return {"hits": _EVENTS.get("cache_hits", 0), "misses": _EVENTS.get("cache_misses", 0)}


def report_compile_stats(stream=sys.stderr) -> None:
    """Printed at exit when ``ZOO_COMPILE_STATS=1`` (tests and the cold/warm measurement use it)."""
    s = compile_stats()
    if os.environ.get("ZOO_COMPILE_STATS") and (s["hits"] or s["misses"]):  # nothing to say after --help
        print(f"[zoo] compile cache: {s['hits']} hits, {s['misses']} misses", file=stream, flush=True)


def folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def describe_cache(flag: str | None = None, disabled: bool = False) -> str:
    path = resolve_cache_dir(flag, disabled)
    if path is None:
        return "compile cache: off"
    count, size = folder_size(path)
    state = f"{count} entries, {human_bytes(size)}" if path.exists() else "empty, created on first use"
    return f"compile cache: {path} ({state})"
