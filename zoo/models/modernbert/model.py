"""ModernBERT as pure functions: pre-norm layers, rotary positions, GeGLU MLPs, and attention
that alternates between global layers and local ones (a window of ``local_attention`` tokens).

Every ``global_attn_every_n_layers``-th layer is global (in ``cfg.layer_types``); global and
local layers rotate with different thetas. Both layer layouts run one layer function: with
stacked params under ``lax.scan`` the layer kind is a traced per-layer value (window, is-first,
is-global) and the two rope tables are selected with ``where``; unrolled, the same values are
static Python numbers. The first layer has no attention norm (an identity in Transformers):
its stacked slot holds ones/zeros and is bypassed.

Padding is handled by masking keys, not by unpadding: the outputs at real tokens equal
Transformers', whose positions are ``0..t-1`` whatever the padding.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from zoo.nn.dense import embed
from zoo.nn.attention import MaskInfo, attention
from zoo.nn.encoder import (
    dense,
    glu_mlp,
    layer_norm_spec,
    linear_spec,
    mean_pool,
    norm,
    output_projection,
    padding_mask_info,
    prediction_head,
    qkv_projection,
    run_layers,
    vocab_logits,
)
from zoo.nn.params import ParamSpec, init_params, layers_spec, logical_axes, normal, zeros
from zoo.nn.rope import apply_rope, make_rope, rope_cos_sin
from zoo.sharding import constrain

Params = dict[str, Any]


# ---------------------------------------------------------------- params
def layer_spec(cfg: Any) -> Params:
    d, h, k, f = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
    w = normal(cfg.initializer_range)
    ab, mb = cfg.attention_bias, cfg.mlp_bias
    return {
        "attn_norm": layer_norm_spec(d, cfg.norm_bias),
        "attn": {
            "qkv": linear_spec((d,), (3, h, k), ("embed",), (None, "q_heads", "head_dim"), w, ab),
            "o_proj": linear_spec((h, k), (d,), ("q_heads", "head_dim"), ("embed",), w, ab),
        },
        "mlp_norm": layer_norm_spec(d, cfg.norm_bias),
        "mlp": {
            "gate_up_proj": linear_spec((d,), (2, f), ("embed",), (None, "mlp"), w, mb),
            "down_proj": linear_spec((f,), (d,), ("mlp",), ("embed",), w, mb),
        },
    }


def param_specs(cfg: Any) -> Params:
    d = cfg.hidden_size
    return {
        "embeddings": {
            "word": {"embedding": ParamSpec((cfg.vocab_size, d), ("vocab", "embed"), normal(cfg.initializer_range))},
            "norm": layer_norm_spec(d, cfg.norm_bias),
        },
        "layers": layers_spec(layer_spec(cfg), cfg.num_hidden_layers, cfg.scan_layers),
        "final_norm": layer_norm_spec(d, cfg.norm_bias),
    }


def head_specs(cfg: Any, task: str) -> Params:
    """``head`` (dense -> act -> norm) in front of the MLM decoder or the ``classifier``."""
    from zoo.tasks import num_labels

    if task == "base":
        return {}
    d, w = cfg.hidden_size, normal(cfg.initializer_range)
    head = {"dense": linear_spec((d,), (d,), ("embed",), ("embed",), w, cfg.classifier_bias),
            "norm": layer_norm_spec(d, cfg.norm_bias)}
    if task == "masked_lm":
        decoder: Params = {}
        if cfg.decoder_bias:
            decoder["bias"] = ParamSpec((cfg.vocab_size,), ("vocab",), zeros)
        if not cfg.tie_word_embeddings:
            decoder["kernel"] = ParamSpec((d, cfg.vocab_size), ("embed", "vocab"), w)
        return {"head": head, "decoder": decoder}
    if task in ("sequence_classification", "token_classification", "question_answering"):
        return {"head": head, "classifier": linear_spec((d,), (num_labels(cfg),), ("embed",), ("labels",), w)}
    raise ValueError(f"unknown task '{task}'")


def init(cfg: Any, key: jax.Array) -> Params:
    return init_params(param_specs(cfg), key, cfg.weight_dtype)


def param_axes(cfg: Any) -> Params:
    return logical_axes(param_specs(cfg))


# ---------------------------------------------------------------- forward
def per_layer_values(cfg: Any) -> list[tuple[int, int, int]]:
    """(window or 0, is the first layer, is global) of each layer."""
    return [(w or 0, int(i == 0), int(t == "full_attention"))
            for i, (w, t) in enumerate(zip(cfg.layer_windows(), cfg.layer_types))]


def _rope_tables(cfg: Any, positions: jax.Array) -> dict[bool, tuple[jax.Array, jax.Array]]:
    tables = {}
    for is_global, theta in ((True, cfg.global_rope_theta), (False, cfg.local_rope_theta)):
        rope = make_rope(theta, cfg.head_dim, cfg.max_position_embeddings)
        tables[is_global] = rope_cos_sin(rope, positions, jnp.float32)
    return tables


def sees_any_key(info: MaskInfo, window: Any) -> jax.Array:
    """[b, t] whether a query has at least one valid key within its window (0/None: no window).

    A query that sees nothing (a left-padding token far from any real one in a local layer)
    gets a zero attention output, as PyTorch's SDPA gives a fully masked row; without this it
    would average every value. Counted from a prefix sum, so no [t, t] mask is built."""
    valid = info.kv_valid.astype(jnp.int32)
    b, t = valid.shape
    total = jnp.sum(valid, axis=1, keepdims=True)
    if window is None:
        return jnp.broadcast_to(total > 0, (b, t))
    csum = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), jnp.cumsum(valid, axis=1)], axis=1)
    q = jnp.arange(t)
    w = jnp.asarray(window)
    hi = jnp.clip(q + w, 0, t)  # keys q-w+1 .. q+w-1
    lo = jnp.clip(q - w + 1, 0, t)
    inside = (csum[:, hi] - csum[:, lo]) > 0
    return jnp.where(w > 0, inside, total > 0)


def attention_block(p: Params, x: jax.Array, info: MaskInfo, cfg: Any, window: Any, rope: Any) -> jax.Array:
    q, k, v = qkv_projection(p, x, cfg.num_attention_heads)
    q, k = rope(q), rope(k)
    out = attention(q, k, v, info, implementation=cfg.attn_implementation, causal=False, sliding_window=window,
                    scale=q.shape[-1] ** -0.5)
    out = jnp.where(sees_any_key(info, window)[:, :, None, None], out, 0)
    return output_projection(p["o_proj"], out)


def forward_hidden(
    params: Params,
    cfg: Any,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,  # noqa: ARG001 - ModernBERT has no token types
    position_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
) -> jax.Array:
    """Last hidden states ``[b, t, d]`` after the final norm."""
    dtype = cfg.compute_dtype
    p_emb = params["embeddings"]
    x = embed(p_emb["word"]["embedding"], input_ids, dtype) if inputs_embeds is None else inputs_embeds.astype(dtype)
    x = norm(p_emb["norm"], x, cfg.norm_eps)
    b, t = x.shape[:2]
    x = constrain(x, ("batch", "seq", "act_embed"))
    if position_ids is None:
        position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    tables = _rope_tables(cfg, position_ids)
    info = padding_mask_info(attention_mask, b, t)

    def layer(p, h, extra):
        window, first, is_global = extra[0], extra[1], extra[2]
        static = isinstance(window, int)
        if static:
            cos, sin = tables[bool(is_global)]
            window = window or None
            normed = h if first else norm(p["attn_norm"], h, cfg.norm_eps)
        else:
            cos = jnp.where(is_global == 1, tables[True][0], tables[False][0])
            sin = jnp.where(is_global == 1, tables[True][1], tables[False][1])
            normed = jnp.where(first == 1, h, norm(p["attn_norm"], h, cfg.norm_eps))

        def rope(q):  # rotate in fp32, as Transformers does
            return apply_rope(q.astype(jnp.float32), cos, sin).astype(q.dtype)

        h = h + attention_block(p["attn"], normed, info, cfg, window, rope)
        h = h + glu_mlp(p["mlp"], norm(p["mlp_norm"], h, cfg.norm_eps), cfg.hidden_activation)
        return constrain(h, ("batch", "seq", "act_embed"))

    from zoo.models.bert.model import _remat

    x = run_layers(params["layers"], x, _remat(layer, cfg), scan=cfg.scan_layers, per_layer=per_layer_values(cfg))
    return norm(params["final_norm"], x, cfg.norm_eps)


def pooled_output(params: Params, cfg: Any, hidden: jax.Array) -> None:  # noqa: ARG001
    """ModernBERT has no pooler."""
    return None


def task_logits(params: Params, cfg: Any, task: str, hidden: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    if task == "masked_lm":
        h = prediction_head(params["head"], hidden, cfg.classifier_activation, cfg.norm_eps)
        return vocab_logits(params["decoder"], h, params["embeddings"]["word"]["embedding"])
    if task == "sequence_classification":
        pooled = hidden[:, 0] if cfg.classifier_pooling == "cls" else mean_pool(hidden, attention_mask)
        return dense(prediction_head(params["head"], pooled, cfg.classifier_activation, cfg.norm_eps),
                     params["classifier"])
    if task in ("token_classification", "question_answering"):
        h = prediction_head(params["head"], hidden, cfg.classifier_activation, cfg.norm_eps)
        return dense(h, params["classifier"])
    raise ValueError(f"unknown task '{task}'")


__all__ = ["param_specs", "head_specs", "init", "param_axes", "forward_hidden", "pooled_output", "task_logits"]
