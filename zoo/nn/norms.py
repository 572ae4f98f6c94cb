"""Normalisation layers as pure functions of (params, x)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(scale: jax.Array, x: jax.Array, eps: float, *, offset: float = 0.0,
             scale_in_fp32: bool = False) -> jax.Array:
    """RMSNorm computed in fp32 and cast back, as Transformers does.

    ``offset=1.0`` gives Gemma's ``(1 + w)`` variant, whose checkpoints store w - 1.
    The weight multiplies after the cast back to the input dtype (Llama semantics), or
    before it with ``scale_in_fp32`` (OLMo-2); Gemma's offset variant always does the latter.
    """
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if offset or scale_in_fp32:
        # Gemma and OLMo-2 multiply in fp32 before casting back.
        return (normed * (offset + scale.astype(jnp.float32))).astype(dtype)
    return scale.astype(dtype) * normed.astype(dtype)


def layer_norm(scale: jax.Array, bias: jax.Array | None, x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm in fp32 (BERT, GPT-2 and friends)."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(dtype)
