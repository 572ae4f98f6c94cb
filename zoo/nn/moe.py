"""Mixture-of-experts: top-k routing, the expert FFNs without a Python loop over experts,
and the Switch-Transformer load-balancing loss, as Transformers computes them.

Expert weights are stacked on a leading ``expert`` axis (``[E, embed, mlp]``), so the
``expert`` mesh axis shards them through the ordinary sharding rules ("ep" preset).
Two ways to run the experts, same numbers:

* ``"dense"``: every token through every expert, weighted by a mostly-zero [tokens, E]
  combine matrix. E/k times the FLOPs, but plain einsums: best for few experts, on CPU
  (where ragged matmuls lower to the same masked dense work anyway) and under GSPMD
  expert sharding, which partitions the ``e`` dimension of the einsums directly.
* ``"ragged"``: the (token, choice) pairs sorted by expert and run as grouped matmuls
  (``jax.lax.ragged_dot``): the FLOPs of the k chosen experts only (GPU/TPU).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from zoo.nn.activations import get_activation
from zoo.nn.params import ParamSpec, normal
from zoo.sharding import active_mesh, constrain

MOE_IMPLEMENTATIONS = ("auto", "dense", "ragged")


def moe_spec(hidden: int, intermediate: int, num_experts: int, init_std: float) -> dict[str, Any]:
    """Router [embed, E] and the stacked SwiGLU experts [E, embed, mlp] / [E, mlp, embed]."""
    w = normal(init_std)
    e, d, f = num_experts, hidden, intermediate
    return {
        "router": {"kernel": ParamSpec((d, e), ("embed", "router"), w)},
        "gate_proj": {"kernel": ParamSpec((e, d, f), ("expert", "embed", "mlp"), w)},
        "up_proj": {"kernel": ParamSpec((e, d, f), ("expert", "embed", "mlp"), w)},
        "down_proj": {"kernel": ParamSpec((e, f, d), ("expert", "mlp", "embed"), w)},
    }


def route(router_logits: jax.Array, top_k: int, *, normalize: bool,
          weights_dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Softmax over experts (fp32), top-k, optional renormalisation over the chosen k.

    Returns weights [N, k] (in ``weights_dtype``) and expert ids [N, k] (int32).
    Mixtral always renormalises and keeps fp32 weights; Qwen3-MoE renormalises only
    with ``norm_topk_prob`` and casts the weights back to the router's dtype.
    """
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights.astype(weights_dtype), experts.astype(jnp.int32)


def resolve_moe_implementation(name: str, num_experts: int, top_k: int) -> str:
    if name not in MOE_IMPLEMENTATIONS:
        raise ValueError(f"unknown moe_implementation '{name}'; known: {MOE_IMPLEMENTATIONS}")
    if name != "auto":
        return name
    active = active_mesh()
    expert_sharded = active is not None and active[0].shape.get("expert", 1) > 1
    if expert_sharded or jax.default_backend() == "cpu" or num_experts <= 2 * top_k:
        return "dense"
    return "ragged"


def _dense_experts(p: Mapping[str, Any], x: jax.Array, weights: jax.Array, experts: jax.Array, act) -> jax.Array:
    n, e = x.shape[0], p["gate_proj"]["kernel"].shape[0]
    combine = jnp.zeros((n, e), weights.dtype).at[jnp.arange(n)[:, None], experts].add(weights)
    gate = jnp.einsum("nd,edf->nef", x, p["gate_proj"]["kernel"].astype(x.dtype))
    up = jnp.einsum("nd,edf->nef", x, p["up_proj"]["kernel"].astype(x.dtype))
    h = constrain(act(gate) * up, (None, "expert", "act_mlp"))
    y = jnp.einsum("nef,efd->ned", h, p["down_proj"]["kernel"].astype(x.dtype))
    y = y.astype(jnp.promote_types(y.dtype, combine.dtype)) * combine[:, :, None]
    return jnp.sum(y.astype(x.dtype), axis=1)


def _ragged_experts(p: Mapping[str, Any], x: jax.Array, weights: jax.Array, experts: jax.Array, act) -> jax.Array:
    n, k = experts.shape
    e = p["gate_proj"]["kernel"].shape[0]
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)       # (token, choice) pairs grouped by expert
    token = order // k
    group_sizes = jnp.bincount(flat, length=e).astype(jnp.int32)
    xs = x[token]
    gate = jax.lax.ragged_dot(xs, p["gate_proj"]["kernel"].astype(x.dtype), group_sizes)
    up = jax.lax.ragged_dot(xs, p["up_proj"]["kernel"].astype(x.dtype), group_sizes)
    y = jax.lax.ragged_dot(act(gate) * up, p["down_proj"]["kernel"].astype(x.dtype), group_sizes)
    w = weights.reshape(-1)[order]
    y = (y.astype(jnp.promote_types(y.dtype, w.dtype)) * w[:, None]).astype(x.dtype)
    return jnp.zeros_like(x).at[token].add(y)


def expert_mlp(p: Mapping[str, Any], x: jax.Array, weights: jax.Array, experts: jax.Array, act: str,
               implementation: str = "auto") -> jax.Array:
    """sum_k weights[n, k] * SwiGLU_{experts[n, k]}(x[n]) for tokens x [N, d]."""
    fn = get_activation(act)
    impl = resolve_moe_implementation(implementation, p["gate_proj"]["kernel"].shape[0], experts.shape[-1])
    return (_dense_experts if impl == "dense" else _ragged_experts)(p, x, weights, experts, fn)


def sparse_moe_block(p: Mapping[str, Any], x: jax.Array, *, top_k: int, normalize: bool, act: str,
                     weights_in_router_dtype: bool = False,
                     implementation: str = "auto") -> tuple[jax.Array, jax.Array]:
    """The MoE MLP of a decoder layer: x [b, t, d] -> (y [b, t, d], router logits [b*t, E])."""
    b, t, d = x.shape
    flat = x.reshape(b * t, d)
    logits = jnp.einsum("nd,de->ne", flat, p["router"]["kernel"].astype(x.dtype))
    weights, experts = route(logits, top_k, normalize=normalize,
                             weights_dtype=x.dtype if weights_in_router_dtype else jnp.float32)
    y = expert_mlp(p, flat, weights, experts, act, implementation)
    return y.reshape(b, t, d), logits


def load_balancing_loss(router_logits: jax.Array, num_experts: int, top_k: int,
                        attention_mask: jax.Array | None = None) -> jax.Array:
    """Transformers' ``load_balancing_loss_func`` for router logits [layers, batch*seq, E].

    Per expert: the share of top-k assignments it receives and its mean router
    probability, both pooled over layers (and over non-padding tokens when a
    [batch, seq] mask is given); the loss is E * sum(share * probability).
    """
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)      # [L, N, E]
    _, chosen = jax.lax.top_k(probs, top_k)                                  # [L, N, k]
    counts = jax.nn.one_hot(chosen, num_experts, dtype=jnp.float32).sum(axis=2)  # [L, N, E]
    if attention_mask is None:
        rows = jnp.float32(probs.shape[0] * probs.shape[1])
        tokens_per_expert = counts.sum(axis=(0, 1)) / rows
        prob_per_expert = probs.sum(axis=(0, 1)) / rows
    else:
        keep = attention_mask.reshape(-1).astype(jnp.float32)[None, :, None]
        rows = keep.sum() * probs.shape[0]
        tokens_per_expert = (counts * keep).sum(axis=(0, 1)) / rows
        prob_per_expert = (probs * keep).sum(axis=(0, 1)) / rows
    return jnp.sum(tokens_per_expert * prob_per_expert) * num_experts


__all__ = ["MOE_IMPLEMENTATIONS", "moe_spec", "route", "expert_mlp", "sparse_moe_block", "load_balancing_loss",
           "resolve_moe_implementation"]
