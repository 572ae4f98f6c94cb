"""Building blocks of bidirectional encoders (BERT, RoBERTa, DistilBERT, ModernBERT).

Pure functions of (params, x). Attention goes through :func:`zoo.nn.attention.attention`
with ``causal=False`` and a :class:`MaskInfo` whose key validity is the padding mask,
so every implementation in the registry serves encoders too. Projections are 2-D
matmuls on ``[batch * seq, features]``: on XLA:CPU these run measurably faster than
the 3-D einsums with split heads (see ``benchmarks/bench_encoder.py``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from zoo.nn.activations import get_activation
from zoo.nn.attention import MaskInfo, attention
from zoo.nn.norms import layer_norm
from zoo.nn.params import Init, ParamSpec, ones, zeros

Params = dict[str, Any]


# ---------------------------------------------------------------- specs
def linear_spec(in_shape: tuple[int, ...], out_shape: tuple[int, ...], in_axes: tuple, out_axes: tuple,
                init: Init, bias: bool = True) -> Params:
    """A linear layer stored inputs-first: kernel ``[*in, *out]``, bias ``[*out]``."""
    p = {"kernel": ParamSpec((*in_shape, *out_shape), (*in_axes, *out_axes), init)}
    if bias:
        p["bias"] = ParamSpec(out_shape, out_axes, zeros)
    return p


def layer_norm_spec(dim: int, bias: bool = True) -> Params:
    p = {"scale": ParamSpec((dim,), ("norm",), ones)}
    if bias:
        p["bias"] = ParamSpec((dim,), ("norm",), zeros)
    return p


# ---------------------------------------------------------------- small layers
def dense(x: jax.Array, p: Mapping[str, jax.Array]) -> jax.Array:
    """``x @ kernel (+ bias)`` with a 2-D kernel ``[in, out]``, as one 2-D matmul."""
    kernel = p["kernel"].astype(x.dtype)
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], kernel.shape[-1])
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y


def norm(p: Mapping[str, jax.Array], x: jax.Array, eps: float) -> jax.Array:
    return layer_norm(p["scale"], p.get("bias"), x, eps)


def flat_kernel(kernel: jax.Array, n_in: int = 1) -> jax.Array:
    """A kernel with split head axes as a 2-D matrix ``[prod(in), prod(out)]``."""
    rows = 1
    for s in kernel.shape[:n_in]:
        rows *= s
    return kernel.reshape(rows, -1)


def flat_bias(p: Mapping[str, jax.Array]) -> jax.Array | None:
    return p["bias"].reshape(-1) if "bias" in p else None


# ---------------------------------------------------------------- masks
def padding_mask_info(attention_mask: jax.Array | None, batch: int, seq: int) -> MaskInfo:
    """Every token sees every non-padding token (``attention_mask`` 1 = keep)."""
    index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    valid = jnp.ones((batch, seq), bool) if attention_mask is None else attention_mask.astype(bool)
    return MaskInfo(index, index, valid)


# ---------------------------------------------------------------- attention
def qkv_projection(p: Mapping[str, Any], x: jax.Array, num_heads: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v ``[b, t, heads, head_dim]`` with one matmul.

    ``p`` holds either a fused ``qkv`` kernel ``[d, 3, heads, head_dim]`` (ModernBERT's
    layout on disk) or separate ``q_proj``/``k_proj``/``v_proj`` kernels ``[d, heads, head_dim]``,
    which are concatenated here: one [b*t, d] x [d, 3d] matmul beats three smaller ones.
    """
    b, t, d = x.shape
    if "qkv" in p:
        w = flat_kernel(p["qkv"]["kernel"])
        bias = flat_bias(p["qkv"])
    else:
        names = ("q_proj", "k_proj", "v_proj")
        w = jnp.concatenate([flat_kernel(p[n]["kernel"]) for n in names], axis=1)
        bias = jnp.concatenate([flat_bias(p[n]) for n in names]) if "bias" in p["q_proj"] else None
    y = jnp.dot(x.reshape(b * t, d), w.astype(x.dtype))
    if bias is not None:
        y = y + bias.astype(x.dtype)
    y = y.reshape(b, t, 3, num_heads, -1)
    return y[:, :, 0], y[:, :, 1], y[:, :, 2]


def output_projection(p: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """``[b, t, heads, head_dim]`` -> ``[b, t, d]`` through an ``o_proj`` kernel ``[heads, head_dim, d]``."""
    b, t = x.shape[:2]
    y = jnp.dot(x.reshape(b * t, -1), flat_kernel(p["kernel"], 2).astype(x.dtype))
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y.reshape(b, t, -1)


def self_attention(
    p: Mapping[str, Any],
    x: jax.Array,
    info: MaskInfo,
    *,
    num_heads: int,
    implementation: str = "xla",
    sliding_window: Any = None,
    rope: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Bidirectional multi-head self-attention (``rope`` rotates q and k when given)."""
    q, k, v = qkv_projection(p, x, num_heads)
    if rope is not None:
        q, k = rope(q), rope(k)
    out = attention(q, k, v, info, implementation=implementation, causal=False, sliding_window=sliding_window,
                    scale=q.shape[-1] ** -0.5)
    return output_projection(p["o_proj"], out)


def glu_mlp(p: Mapping[str, Any], x: jax.Array, act: str) -> jax.Array:
    """GeGLU/SwiGLU with a fused input kernel ``gate_up_proj`` ``[d, 2, f]`` (ModernBERT's ``Wi``):
    ``down(act(x W[:, 0]) * x W[:, 1])``, one [b*t, d] x [d, 2f] matmul for both halves."""
    w = p["gate_up_proj"]
    f = w["kernel"].shape[-1]
    h = dense(x, {"kernel": flat_kernel(w["kernel"]), **({"bias": flat_bias(w)} if "bias" in w else {})})
    h = get_activation(act)(h[..., :f]) * h[..., f:]
    return dense(h, p["down_proj"])


# ---------------------------------------------------------------- layers
def post_ln_layer(p: Mapping[str, Any], x: jax.Array, info: MaskInfo, *, num_heads: int, act: str, eps: float,
                  implementation: str = "xla") -> jax.Array:
    """The BERT layer: LayerNorm after each residual sum (attention, then the MLP)."""
    x = norm(p["attn_norm"], x + self_attention(p["attn"], x, info, num_heads=num_heads,
                                                 implementation=implementation), eps)
    h = dense(get_activation(act)(dense(x, p["mlp"]["up_proj"])), p["mlp"]["down_proj"])
    return norm(p["mlp_norm"], x + h, eps)


def run_layers(layers: Any, x: jax.Array, layer_fn: Callable[[Any, jax.Array, Any], jax.Array], *, scan: bool,
               per_layer: Sequence[Any] | None = None) -> jax.Array:
    """Apply ``layer_fn(layer_params, x, extra)`` for every layer.

    ``scan``: ``layers`` is one stacked tree run with ``lax.scan`` and ``per_layer`` values
    (numbers) become a traced array; otherwise ``layers`` is a list walked by a Python loop
    and each layer gets its ``per_layer`` value as a static Python value.
    """
    if not scan:
        for i, lp in enumerate(layers):
            x = layer_fn(lp, x, None if per_layer is None else per_layer[i])
        return x
    xs = None if per_layer is None else jnp.asarray(per_layer)

    def body(carry, inputs):
        lp, extra = inputs
        return layer_fn(lp, carry, extra), None

    x, _ = jax.lax.scan(body, x, (layers, xs))
    return x


# ---------------------------------------------------------------- heads
def prediction_head(p: Mapping[str, Any], x: jax.Array, act: str, eps: float) -> jax.Array:
    """dense -> activation -> LayerNorm: the transform in front of every MLM decoder."""
    return norm(p["norm"], get_activation(act)(dense(x, p["dense"])), eps)


def vocab_logits(p: Mapping[str, jax.Array], x: jax.Array, word_embeddings: jax.Array) -> jax.Array:
    """MLM decoder: tied (``word_embeddings^T``) unless ``p`` has its own kernel; plus its bias."""
    if "kernel" in p:
        return dense(x, p)
    y = jnp.dot(x.reshape(-1, x.shape[-1]), word_embeddings.astype(x.dtype).T).reshape(*x.shape[:-1], -1)
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y


def mean_pool(x: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    """Average over non-padding tokens ``[b, t, d] -> [b, d]``."""
    if attention_mask is None:
        return jnp.mean(x, axis=1)
    m = attention_mask.astype(x.dtype)[..., None]
    return jnp.sum(x * m, axis=1) / jnp.sum(m, axis=1)


__all__ = [
    "linear_spec", "layer_norm_spec", "dense", "norm", "padding_mask_info", "qkv_projection", "output_projection",
    "self_attention", "glu_mlp", "post_ln_layer", "run_layers", "prediction_head", "vocab_logits", "mean_pool",
]
