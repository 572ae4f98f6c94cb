"""Translate a model's index-based mask description into Pallas kernel arguments.

This is the one place where ``zoo.nn.attention.MaskInfo`` (duck-typed here, so
``kernels`` stays the lowest layer) meets the kernels:

* ``q_index [b, q]`` -> ``q_positions``; ``kv_index [b, kv]`` and ``kv_valid``
  -> ``kv_positions`` with ``-1`` for padding and empty cache slots. That is
  all a static KV cache with left padding needs, and it is ``O(q + kv)`` data:
  no ``[q, kv]`` mask is ever built.
* ``causal`` and ``sliding_window`` (a Python int, or a traced per-layer scalar
  under ``lax.scan`` with ``<= 0`` meaning "none") become per-row visible key
  intervals inside the kernels; ``softcap`` and ``scale`` pass straight through.
* packing segments -> ``segment_ids=(q_segment, kv_segment)``.
* A few query tokens against a longer cache (decoding) go to flash-decoding
  (:func:`kernels.decode_attention`, split over the KV length); everything else
  (prefill, training) to :func:`kernels.flash_attention`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from kernels import reference as ref
from kernels.decode_attention import decode_attention
from kernels.flash_attention import flash_attention, resolve_backend

Array = jax.Array

# Up to this many query tokens against a longer cache count as decoding.
DECODE_MAX_Q_TOKENS = 8


def mask_info_positions(info: Any) -> tuple[Array, Array]:
    """``(q_positions [b, q], kv_positions [b, kv])``; empty or padding slots get -1."""
    q_pos = jnp.asarray(info.q_index, jnp.int32)
    kv_pos = jnp.where(info.kv_valid, jnp.asarray(info.kv_index, jnp.int32), -1)
    return q_pos, kv_pos


def use_decode_kernel(q_len: int, kv_len: int, causal: bool, has_segments: bool) -> bool:
    return causal and not has_segments and q_len <= DECODE_MAX_Q_TOKENS and q_len < kv_len


def attention_from_mask_info(q: Array, k: Array, v: Array, info: Any, *, causal: bool = True,
                             sliding_window: Any = None, scale: float | None = None,
                             softcap: float | None = None, backend: str | None = None,
                             interpret: bool | None = None) -> Array:
    """Pallas attention for model code: q ``[b, t, hq, d]``, k/v ``[b, s, hkv, d]``.

    ``info`` has ``q_index``, ``kv_index``, ``kv_valid`` and optional
    ``q_segment``/``kv_segment`` (see ``zoo.nn.attention.MaskInfo``). Differentiable:
    the flash path has its blockwise backward; the decode path (forward-only kernel)
    takes its gradient from the jnp reference, whose score matrix is small there.
    """
    q_pos, kv_pos = mask_info_positions(info)
    if isinstance(sliding_window, int) and sliding_window <= 0:
        sliding_window = None
    softcap = float(softcap) if softcap else None
    has_segments = getattr(info, "q_segment", None) is not None
    backend, interpret = resolve_backend(backend, interpret)
    if use_decode_kernel(q.shape[1], k.shape[1], causal, has_segments):
        window = None if sliding_window is None else jnp.asarray(sliding_window, jnp.int32)
        return _decode_with_reference_grad(q, k, v, q_pos, kv_pos, window,
                                           softcap=softcap, scale=scale, backend=backend,
                                           interpret=interpret)
    segments = (info.q_segment, info.kv_segment) if has_segments else None
    return flash_attention(q, k, v, causal=causal, segment_ids=segments,
                           sliding_window=sliding_window, softcap=softcap, scale=scale,
                           backend=backend, interpret=interpret,
                           q_positions=q_pos, kv_positions=kv_pos)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _decode_with_reference_grad(q, k, v, q_pos, kv_pos, window, softcap, scale, backend, interpret):
    return decode_attention(q, k, v, softcap=softcap, scale=scale, sliding_window=window,
                            backend=backend, interpret=interpret,
                            q_positions=q_pos, kv_positions=kv_pos)


def _decode_fwd(q, k, v, q_pos, kv_pos, window, softcap, scale, backend, interpret):
    out = _decode_with_reference_grad(q, k, v, q_pos, kv_pos, window, softcap, scale, backend,
                                      interpret)
    return out, (q, k, v, q_pos, kv_pos, window)


def _decode_bwd(softcap, scale, backend, interpret, residuals, g):
    q, k, v, q_pos, kv_pos, window = residuals

    def reference(q, k, v):
        return ref.decode_attention_reference(q, k, v, softcap=softcap, scale=scale,
                                              sliding_window=window, q_positions=q_pos,
                                              kv_positions=kv_pos)

    dq, dk, dv = jax.vjp(reference, q, k, v)[1](g)
    return dq, dk, dv, None, None, None


_decode_with_reference_grad.defvjp(_decode_fwd, _decode_bwd)
