"""KV caches for generation, as pytrees (dicts of arrays) the model reads and returns.

Two layouts, chosen with ``cache_implementation`` as in Transformers:

* ``"static"`` (default; ``"dynamic"`` and ``None`` mean the same here): one buffer per
  layer, preallocated to prompt + new tokens. ``slot_index`` holds the token index stored
  in each slot, so masks (causal, padding, sliding window) are computed from indices.
* ``"sliding_window"`` (alias ``"rolling"``, and ``"hybrid"`` for models that mix layer
  kinds): windowed layers get a rolling buffer of ``window + chunk - 1`` slots reused
  modulo its length (``ring_slot_index``), so memory stops growing with the generation
  while full-attention layers keep the static buffer. ``chunk`` is the most tokens one
  forward writes (the prompt bucket, or ``k + 1`` when verifying k draft tokens); with
  that many spare slots, writing a chunk never evicts a key that one of its queries
  still sees, so attention stays exact.

A paged cache (block table + page pool) for continuous batching lives with the server.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

STATIC = ("static", "dynamic", "offloaded", "offloaded_static")
ROLLING = ("sliding_window", "rolling", "hybrid")


def window_of(cfg: Any) -> int | None:
    windows = [w for w in getattr(cfg, "layer_windows", lambda: ())() if w is not None]
    return max(windows) if windows else None


def rolling_length(cfg: Any, max_length: int, chunk: int) -> int | None:
    """Slots of the rolling buffer for a model, or None when it would not be shorter than static."""
    window = window_of(cfg)
    if window is None:
        return None
    n = window + chunk - 1
    return n if n < max_length else None


def check_implementation(name: str | None) -> str:
    if name is None or name in STATIC:
        return "static"
    if name in ROLLING:
        return "rolling"
    raise ValueError(f"unknown cache_implementation {name!r}; zoo supports {sorted(STATIC + ROLLING)}")


def init_cache(model: Any, batch_size: int, max_length: int, gen: Any = None, chunk: int | None = None) -> dict:
    """The cache ``generate`` uses: static, or rolling for windowed layers.

    ``chunk``: the most tokens written by one forward (default: ``max_length``, i.e. no saving).
    """
    kind = check_implementation(None if gen is None else gen.cache_implementation)
    family = model.family
    if kind == "rolling":
        n = rolling_length(model.config, max_length, chunk or max_length)
        if n is not None:
            return family.init_cache(model.config, batch_size, max_length, window_cache_length=n)
    return family.init_cache(model.config, batch_size, max_length)


def reorder_cache(cache: dict, rows: jax.Array) -> dict:
    """Select batch rows (beam search parents): every per-row array is gathered along batch."""
    out = dict(cache)
    for name in ("k", "v"):
        buf = cache[name]
        if isinstance(buf, (list, tuple)):
            out[name] = [x[rows] for x in buf]
        elif isinstance(buf, dict):  # stacked per layer kind (Gemma 2/3): {kind: [L_kind, B, ...]}
            out[name] = {kind: x[:, rows] for kind, x in buf.items()}
        else:  # stacked layers: [L, B, ...]
            out[name] = buf[:, rows]
    for name in ("slot_index", "ring_slot_index"):
        if name in cache:
            out[name] = cache[name][rows]
    return out


def truncate_cache(cache: dict, length: jax.Array) -> dict:
    """Forget every token at index >= ``length`` (rejected draft tokens): their slots become empty."""
    out = dict(cache)
    for name in ("slot_index", "ring_slot_index"):
        if name in cache:
            out[name] = jnp.where(cache[name] >= length, -1, cache[name])
    out["index"] = jnp.asarray(length, jnp.int32)
    return out


__all__ = ["init_cache", "reorder_cache", "truncate_cache", "rolling_length", "check_implementation"]
