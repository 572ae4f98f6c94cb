"""The BERT encoder as pure functions; RoBERTa, XLM-RoBERTa and DistilBERT run it too.

What differs between those families is read from config flags: RoBERTa's positions
start after ``pad_token_id`` and skip padding (``positions_from_padding``), DistilBERT has
no token-type embeddings (``type_vocab_size == 0``) and no pooler, and the three
classification heads differ (``classifier_style``). Tensor names live in each family's
``convert.py``; the param tree here is the same for all four.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from zoo.nn.dense import embed
from zoo.nn.encoder import (
    dense,
    layer_norm_spec,
    linear_spec,
    norm,
    padding_mask_info,
    post_ln_layer,
    prediction_head,
    run_layers,
    vocab_logits,
)
from zoo.nn.params import ParamSpec, init_params, layers_spec, logical_axes, normal, zeros
from zoo.sharding import constrain

Params = dict[str, Any]


# ---------------------------------------------------------------- params
def layer_spec(cfg: Any) -> Params:
    d, h, k, f = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
    w = normal(cfg.initializer_range)
    heads = ("q_heads", "head_dim")
    return {
        "attn": {
            "q_proj": linear_spec((d,), (h, k), ("embed",), heads, w),
            "k_proj": linear_spec((d,), (h, k), ("embed",), heads, w),
            "v_proj": linear_spec((d,), (h, k), ("embed",), heads, w),
            "o_proj": linear_spec((h, k), (d,), heads, ("embed",), w),
        },
        "attn_norm": layer_norm_spec(d),
        "mlp": {
            "up_proj": linear_spec((d,), (f,), ("embed",), ("mlp",), w),
            "down_proj": linear_spec((f,), (d,), ("mlp",), ("embed",), w),
        },
        "mlp_norm": layer_norm_spec(d),
    }


def param_specs(cfg: Any) -> Params:
    """The encoder body: embeddings and layers (heads come from :func:`head_specs`)."""
    d = cfg.hidden_size
    w = normal(cfg.initializer_range)
    embeddings: Params = {
        "word": {"embedding": ParamSpec((cfg.vocab_size, d), ("vocab", "embed"), w)},
        "position": {"embedding": ParamSpec((cfg.max_position_embeddings, d), (None, "embed"), w)},
        "norm": layer_norm_spec(d),
    }
    if cfg.type_vocab_size:
        embeddings["token_type"] = {"embedding": ParamSpec((cfg.type_vocab_size, d), (None, "embed"), w)}
    return {"embeddings": embeddings, "layers": layers_spec(layer_spec(cfg), cfg.num_hidden_layers, cfg.scan_layers)}


def _square(cfg: Any) -> Params:
    d = cfg.hidden_size
    return linear_spec((d,), (d,), ("embed",), ("embed",), normal(cfg.initializer_range))


def _to_labels(cfg: Any, n: int) -> Params:
    return linear_spec((cfg.hidden_size,), (n,), ("embed",), ("labels",), normal(cfg.initializer_range))


def head_specs(cfg: Any, task: str) -> Params:
    """Params the head of ``task`` adds to the body."""
    from zoo.tasks import num_labels

    if task == "base":
        return {"pooler": {"dense": _square(cfg)}} if cfg.has_pooler else {}
    if task == "masked_lm":
        decoder = {"bias": ParamSpec((cfg.vocab_size,), ("vocab",), zeros)}
        if not cfg.tie_word_embeddings:
            decoder["kernel"] = ParamSpec((cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"),
                                          normal(cfg.initializer_range))
        return {"lm_head": {"dense": _square(cfg), "norm": layer_norm_spec(cfg.hidden_size), "decoder": decoder}}
    if task == "sequence_classification":
        if cfg.classifier_style == "pooler":
            return {"pooler": {"dense": _square(cfg)}, "classifier": _to_labels(cfg, num_labels(cfg))}
        return {"classifier": {"dense": _square(cfg), "out_proj": _to_labels(cfg, num_labels(cfg))}}
    if task == "token_classification":
        return {"classifier": _to_labels(cfg, num_labels(cfg))}
    if task == "question_answering":
        return {"qa_outputs": _to_labels(cfg, num_labels(cfg))}
    raise ValueError(f"unknown task '{task}'")


def init(cfg: Any, key: jax.Array) -> Params:
    return init_params(param_specs(cfg), key, cfg.weight_dtype)


def param_axes(cfg: Any) -> Params:
    return logical_axes(param_specs(cfg))


# ---------------------------------------------------------------- forward
def default_position_ids(cfg: Any, input_ids: jax.Array | None, batch: int, seq: int) -> jax.Array:
    """BERT: 0..t-1. RoBERTa: pad_token_id + 1 + (index among non-pad tokens); pad tokens get pad_token_id."""
    if not cfg.positions_from_padding:
        return jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    pad = cfg.pad_token_id
    if input_ids is None:  # embeddings only: padding cannot be seen, so count every token
        return jnp.broadcast_to(pad + 1 + jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    keep = (input_ids != pad).astype(jnp.int32)
    return jnp.cumsum(keep, axis=1) * keep + pad


def embeddings(params: Params, cfg: Any, input_ids: jax.Array | None, token_type_ids: jax.Array | None,
               position_ids: jax.Array | None, inputs_embeds: jax.Array | None) -> jax.Array:
    p = params["embeddings"]
    dtype = cfg.compute_dtype
    x = embed(p["word"]["embedding"], input_ids, dtype) if inputs_embeds is None else inputs_embeds.astype(dtype)
    b, t = x.shape[:2]
    if position_ids is None:
        position_ids = default_position_ids(cfg, input_ids, b, t)
    x = x + embed(p["position"]["embedding"], position_ids, dtype)
    if "token_type" in p:
        if token_type_ids is None:  # all zeros: one row, broadcast
            x = x + p["token_type"]["embedding"][0].astype(dtype)
        else:
            x = x + embed(p["token_type"]["embedding"], token_type_ids, dtype)
    return norm(p["norm"], x, cfg.layer_norm_eps)


def forward_hidden(
    params: Params,
    cfg: Any,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
) -> jax.Array:
    """Last hidden states ``[b, t, d]``; padding positions hold values but nothing attends to them."""
    x = embeddings(params, cfg, input_ids, token_type_ids, position_ids, inputs_embeds)
    x = constrain(x, ("batch", "seq", "act_embed"))
    info = padding_mask_info(attention_mask, *x.shape[:2])

    def layer(p, h, _):
        h = post_ln_layer(p, h, info, num_heads=cfg.num_attention_heads, act=cfg.hidden_act, eps=cfg.layer_norm_eps,
                          implementation=cfg.attn_implementation)
        return constrain(h, ("batch", "seq", "act_embed"))

    return run_layers(params["layers"], x, _remat(layer, cfg), scan=cfg.scan_layers)


def _remat(fn, cfg: Any):
    if cfg.remat_policy is None:
        return fn
    from zoo.models.llama.model import _remat as llama_remat

    wrapped = llama_remat(lambda p, c, h, extra: fn(p, h, extra), cfg)  # static_argnums=(1,) is the config
    return lambda p, h, extra: wrapped(p, cfg, h, extra)


def pooled_output(params: Params, cfg: Any, hidden: jax.Array) -> jax.Array | None:
    """BERT's pooler: tanh(dense(first token)); None without one."""
    if "pooler" not in params:
        return None
    return jnp.tanh(dense(hidden[:, 0], params["pooler"]["dense"]))


def task_logits(params: Params, cfg: Any, task: str, hidden: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    if task == "masked_lm":
        h = prediction_head(params["lm_head"], hidden, cfg.mlm_activation, cfg.layer_norm_eps)
        return vocab_logits(params["lm_head"]["decoder"], h, params["embeddings"]["word"]["embedding"])
    if task == "sequence_classification":
        if cfg.classifier_style == "pooler":
            return dense(pooled_output(params, cfg, hidden), params["classifier"])
        act = {"dense_tanh": jnp.tanh, "dense_relu": jax.nn.relu}[cfg.classifier_style]
        p = params["classifier"]
        return dense(act(dense(hidden[:, 0], p["dense"])), p["out_proj"])
    if task == "token_classification":
        return dense(hidden, params["classifier"])
    if task == "question_answering":
        return dense(hidden, params["qa_outputs"])
    raise ValueError(f"unknown task '{task}'")


__all__ = ["param_specs", "head_specs", "init", "param_axes", "forward_hidden", "pooled_output", "task_logits",
           "embeddings", "default_position_ids"]
