"""Projections with named dimensions (einsum), MLPs and embeddings.

Weights are stored input-dims-first (``[embed, heads, head_dim]``), the layout
that einsum and sharding rules read naturally; the converters transpose from
PyTorch's ``[out, in]`` once at load.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from zoo.nn.activations import get_activation
from zoo.nn.lora import lora_delta


def project(x: jax.Array, p: Mapping[str, jax.Array], eq: str) -> jax.Array:
    """``einsum(eq, x, p['kernel']) (+ p['bias'])`` in x's dtype, plus a LoRA adapter's low-rank
    term when ``p`` carries one (``zoo.nn.lora``)."""
    y = jnp.einsum(eq, x, p["kernel"].astype(x.dtype))
    if "lora_a" in p:
        y = y + lora_delta(x, p, eq)
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y


def gated_mlp(p: Mapping[str, Any], x: jax.Array, act: str) -> jax.Array:
    """SwiGLU / GeGLU: down(act(gate(x)) * up(x))."""
    fn = get_activation(act)
    gate = project(x, p["gate_proj"], "btd,df->btf")
    up = project(x, p["up_proj"], "btd,df->btf")
    return project(fn(gate) * up, p["down_proj"], "btf,fd->btd")


def embed(table: jax.Array, ids: jax.Array, dtype: Any) -> jax.Array:
    return jnp.take(table, ids, axis=0).astype(dtype)


def scaled_embed(table: jax.Array, ids: jax.Array, scale: float, dtype: Any) -> jax.Array:
    """Embeddings times ``scale`` (Gemma: sqrt(hidden)), multiplied in the table's dtype as
    Transformers does: in bf16 the factor itself rounds (sqrt(3072) = 55.43 becomes 55.5)."""
    rows = jnp.take(table, ids, axis=0)
    return (rows * jnp.asarray(scale, table.dtype)).astype(dtype)


def unembed(x: jax.Array, params: Mapping[str, Any], tie_word_embeddings: bool) -> jax.Array:
    """Logits from hidden states with a tied (embedding^T) or separate head."""
    if tie_word_embeddings:
        table = params["embed_tokens"]["embedding"]
        return jnp.einsum("btd,vd->btv", x, table.astype(x.dtype))
    return project(x, params["lm_head"], "btd,dv->btv")
