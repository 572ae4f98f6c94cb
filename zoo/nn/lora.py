"""Low-rank adapters on a projection: ``y = x W + scale * dropout(x) A B``.

An adapted projection's params hold, beside ``kernel``, ``lora_a`` ([kernel's input dims..., r]),
``lora_b`` ([r, kernel's output dims...]) and ``lora_scale`` (alpha / r, a frozen scalar);
``lora_dropout_key`` + ``lora_dropout`` (rate) are added only while training. Because
``zoo.nn.dense.project`` adds the low-rank path whenever ``lora_a`` is present, adapters go
on any family built from ``project`` without touching its model code (see ``zoo.peft``).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

LORA_KEYS = ("lora_a", "lora_b", "lora_scale", "lora_dropout_key", "lora_dropout")


def _split_equation(eq: str) -> tuple[str, str, str]:
    inputs, out = eq.replace(" ", "").split("->")
    x_sub, k_sub = inputs.split(",")
    return x_sub, k_sub, out


def lora_delta(x: jax.Array, p: Mapping[str, Any], eq: str) -> jax.Array:
    """The low-rank term of ``einsum(eq, x, kernel)``, in x's dtype."""
    x_sub, k_sub, out = _split_equation(eq)
    k_in = "".join(c for c in k_sub if c not in out)   # contracted with x
    k_out = "".join(c for c in k_sub if c in out)      # kept in the output
    if k_sub != k_in + k_out:
        raise ValueError(f"LoRA needs a kernel laid out [inputs..., outputs...]; '{eq}' is not")
    rank = next(c for c in "rzyxwvuqponmlj" if c not in eq)
    lead = "".join(c for c in x_sub if c not in k_sub)
    if "lora_dropout_key" in p:
        rate = jnp.asarray(p["lora_dropout"], jnp.float32)
        keep = jax.random.bernoulli(p["lora_dropout_key"], 1.0 - rate, x.shape)
        x = jnp.where(keep, x / (1.0 - rate).astype(x.dtype), jnp.zeros((), x.dtype))
    h = jnp.einsum(f"{x_sub},{k_in}{rank}->{lead}{rank}", x, p["lora_a"].astype(x.dtype))
    y = jnp.einsum(f"{lead}{rank},{rank}{k_out}->{out}", h, p["lora_b"].astype(x.dtype))
    return y * jnp.asarray(p["lora_scale"]).astype(x.dtype)


def merged_kernel(p: Mapping[str, Any]) -> jax.Array:
    """``kernel + scale * A B`` (one layer, or stacked layers when the kernel has a leading axis
    that the adapters share)."""
    kernel, a, b, scale = p["kernel"], p["lora_a"], p["lora_b"], jnp.asarray(p["lora_scale"])
    if scale.ndim:  # stacked layers: merge each
        return jax.vmap(lambda k, a_, b_, s: merged_kernel(
            {"kernel": k, "lora_a": a_, "lora_b": b_, "lora_scale": s}))(kernel, a, b, scale)
    delta = jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1) * scale
    return (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)


__all__ = ["lora_delta", "merged_kernel", "LORA_KEYS"]
