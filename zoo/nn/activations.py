"""Activation functions by their HF ``hidden_act`` names."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


def _gelu_exact(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def _relu2(x: jax.Array) -> jax.Array:
    return jnp.square(jax.nn.relu(x))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_python": _gelu_exact,
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "relu2": _relu2,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def _in_float32(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """Evaluate in fp32 and round once, as PyTorch does for bf16/fp16 tensors: silu's
    ``x * sigmoid(x)`` in bf16 rounds twice and differs from Transformers in ~40% of
    outputs, enough to flip a mixture-of-experts router on a near tie."""
    def act(x: jax.Array) -> jax.Array:
        if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
            return fn(x.astype(jnp.float32)).astype(x.dtype)
        return fn(x)

    return act


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """Gemma 2's logit soft-capping ``cap * tanh(x / cap)``; identity when ``cap`` is None."""
    if cap is None:
        return x
    return jnp.tanh(x / cap) * cap


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return _in_float32(ACTIVATIONS[name])
    except KeyError:
        raise ValueError(f"unknown activation '{name}'; known: {sorted(ACTIVATIONS)}") from None


__all__ = ["ACTIVATIONS", "get_activation", "softcap"]
