"""Attention: masks described by token indices, and a registry of implementations.

Model code never builds a dense mask itself. It describes which keys each query
may see with a :class:`MaskInfo` (absolute token indices, validity of each key
slot, optional packing segments) plus a causal flag and a sliding window, and
:func:`attention` hands that to the implementation picked by name. The XLA path
materialises a boolean mask; kernels turn the same description into block
skipping. Index-based masks also make static and rolling KV caches the same
problem: a cache slot simply carries the index of the token stored in it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "auto")


class MaskInfo(NamedTuple):
    """Which keys each query may attend to, as data (a pytree of arrays).

    q_index:   [batch, q_len]  absolute token index of each query
    kv_index:  [batch, kv_len] absolute token index held by each key slot
    kv_valid:  [batch, kv_len] False for padding and empty cache slots
    q_segment, kv_segment: optional packing ids; attention stays within a segment
    """

    q_index: jax.Array
    kv_index: jax.Array
    kv_valid: jax.Array
    q_segment: jax.Array | None = None
    kv_segment: jax.Array | None = None


def dense_mask(info: MaskInfo, *, causal: bool = True, sliding_window: Any = None) -> jax.Array:
    """Boolean [batch, q_len, kv_len] mask. ``sliding_window`` may be traced (0 = none); without
    ``causal`` the window is symmetric (keys within ``sliding_window - 1`` on either side)."""
    q = info.q_index[:, :, None]
    kv = info.kv_index[:, None, :]
    allowed = info.kv_valid[:, None, :]
    if causal:
        allowed = allowed & (kv <= q)
    if sliding_window is not None:
        # Bidirectional (encoder) windows reach as far right as left: |q - kv| < window.
        if isinstance(sliding_window, int):
            allowed = allowed & (kv > q - sliding_window)
            if not causal:
                allowed = allowed & (kv < q + sliding_window)
        else:  # traced per-layer window under lax.scan; 0 means "no window"
            w = jnp.asarray(sliding_window)
            inside = kv > q - w
            if not causal:
                inside = inside & (kv < q + w)
            allowed = allowed & ((w <= 0) | inside)
    if info.q_segment is not None:
        allowed = allowed & (info.q_segment[:, :, None] == info.kv_segment[:, None, :])
    return allowed


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    info: MaskInfo,
    *,
    causal: bool = True,
    sliding_window: Any = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> jax.Array:
    """Reference attention: grouped einsum, fp32 softmax, no repeated K/V."""
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    qg = q.reshape(b, t, hkv, hq // hkv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    allowed = dense_mask(info, causal=causal, sliding_window=sliding_window)[:, None, None]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, hq, v.shape[-1])


def cudnn_attention(q, k, v, info: MaskInfo, *, causal=True, sliding_window=None, scale=None, softcap=None):
    """cuDNN fused attention through ``jax.nn.dot_product_attention``."""
    if softcap is not None:
        raise ValueError("attn_implementation='cudnn' does not support logit soft-capping; use 'xla' or 'pallas'")
    mask = dense_mask(info, causal=causal, sliding_window=sliding_window)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")


def pallas_attention(q, k, v, info: MaskInfo, *, causal=True, sliding_window=None, scale=None, softcap=None):
    """Pallas flash attention from ``kernels`` (prefill and decode)."""
    from kernels import attention_from_mask_info  # kernels is the lower layer; imported lazily

    return attention_from_mask_info(
        q, k, v, info, causal=causal, sliding_window=sliding_window, scale=scale, softcap=softcap
    )


_REGISTRY: dict[str, Callable[..., jax.Array]] = {
    "xla": xla_attention,
    "cudnn": cudnn_attention,
    "pallas": pallas_attention,
}


def register_attention(name: str, fn: Callable[..., jax.Array]) -> None:
    """Add an implementation (e.g. ring or paged attention) under a name."""
    _REGISTRY[name] = fn


def _has_pallas_gpu() -> bool:
    """Whether this jax still ships the Pallas backend our GPU kernels lower through (see kernels/_compat.py)."""
    from kernels._compat import has_pallas_triton

    return has_pallas_triton()


def platform_supports(name: str, platform: str | None = None) -> bool:
    platform = platform or jax.default_backend()
    if name == "xla":
        return True
    if name == "cudnn":
        return platform == "gpu"
    if name == "pallas":  # GPU/TPU compiled, CPU through interpret mode
        return platform != "gpu" or _has_pallas_gpu()
    return name in _REGISTRY


def resolve_implementation(name: str) -> str:
    """Check that ``name`` can run here; 'auto' picks the fastest available, logging the choice."""
    platform = jax.default_backend()
    if name == "auto":
        if platform in ("gpu", "tpu") and platform_supports("pallas", platform):
            logger.info("attn_implementation='auto' -> 'pallas' (compiled kernels on %s)", platform)
            return "pallas"
        if platform == "gpu":
            logger.info("attn_implementation='auto': falling back to 'xla' (this jax has no Pallas Triton backend)")
            return "xla"
        # Pallas would only run interpreted here (orders of magnitude slower) and cudnn not at all.
        logger.info("attn_implementation='auto': falling back to 'xla' on %s "
                    "('pallas' is compiled only on gpu/tpu, 'cudnn' needs an NVIDIA GPU)", platform)
        return "xla"
    if name not in _REGISTRY:
        raise ValueError(f"unknown attn_implementation '{name}'; known: {sorted(_REGISTRY) + ['auto']}")
    if not platform_supports(name, platform):
        raise ValueError(
            f"attn_implementation='{name}' cannot run on platform '{platform}' "
            f"(cudnn needs an NVIDIA GPU; pallas on GPU needs jax's Pallas Triton backend); use 'xla' or 'auto'"
        )
    return name


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    info: MaskInfo,
    *,
    implementation: str = "xla",
    causal: bool = True,
    sliding_window: Any = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> jax.Array:
    """q [b, t, hq, d], k/v [b, s, hkv, d] -> [b, t, hq, d] with the named implementation."""
    fn = _REGISTRY[resolve_implementation(implementation)]
    return fn(q, k, v, info, causal=causal, sliding_window=sliding_window, scale=scale, softcap=softcap)
