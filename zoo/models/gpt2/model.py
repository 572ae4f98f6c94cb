"""GPT-2 as pure functions: learned positions, pre-LayerNorm blocks, fused qkv, tied head.

The mask, KV cache and layer loop (scanned or unrolled) are Llama's; only the
layer body and the embeddings differ.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from zoo.models.gpt2.config import GPT2Config
from zoo.models.llama.model import default_position_ids, init_cache, mask_info, run_layers, update_kv
from zoo.nn.activations import get_activation
from zoo.nn.attention import MaskInfo, attention
from zoo.nn.dense import embed, project, unembed
from zoo.nn.norms import layer_norm
from zoo.nn.params import ParamSpec, decoder_param_specs, init_params, layers_spec, logical_axes, normal, ones, zeros
from zoo.sharding import constrain

Params = dict[str, Any]


# ---------------------------------------------------------------- params
def _ln(d: int) -> Params:
    return {"scale": ParamSpec((d,), ("norm",), ones), "bias": ParamSpec((d,), ("norm",), zeros)}


def layer_spec(cfg: GPT2Config) -> Params:
    d, h, hd, f = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
    w = normal(cfg.initializer_range)
    return {
        "ln_1": _ln(d),
        "attn": {
            # [embed, (q|k|v), heads, head_dim]: Conv1D's [in, 3 * embed] reshaped, no transpose.
            "c_attn": {"kernel": ParamSpec((d, 3, h, hd), ("embed", None, "q_heads", "head_dim"), w),
                       "bias": ParamSpec((3, h, hd), (None, "q_heads", "head_dim"), zeros)},
            "c_proj": {"kernel": ParamSpec((h, hd, d), ("q_heads", "head_dim", "embed"), w),
                       "bias": ParamSpec((d,), ("embed",), zeros)},
        },
        "ln_2": _ln(d),
        "mlp": {
            "c_fc": {"kernel": ParamSpec((d, f), ("embed", "mlp"), w), "bias": ParamSpec((f,), ("mlp",), zeros)},
            "c_proj": {"kernel": ParamSpec((f, d), ("mlp", "embed"), w), "bias": ParamSpec((d,), ("embed",), zeros)},
        },
    }


def param_specs(cfg: GPT2Config) -> Params:
    positions = ParamSpec((cfg.max_position_embeddings, cfg.hidden_size), ("positions", "embed"),
                          normal(cfg.initializer_range))
    return decoder_param_specs(cfg, layers_spec(layer_spec(cfg), cfg.num_hidden_layers, cfg.scan_layers),
                               _ln(cfg.hidden_size), embed="wte", norm="ln_f", wpe={"embedding": positions})


def init(cfg: GPT2Config, key: jax.Array) -> Params:
    return init_params(param_specs(cfg), key, cfg.weight_dtype)


def param_axes(cfg: GPT2Config) -> Params:
    return logical_axes(param_specs(cfg))


# ---------------------------------------------------------------- layers
def _ln_apply(p: Params, x: jax.Array, eps: float) -> jax.Array:
    return layer_norm(p["scale"], p["bias"], x, eps)


def decoder_layer(p: Params, cfg: GPT2Config, x: jax.Array, cos, sin, info: MaskInfo, window: Any,
                  kv_cache=None, cache_start=None):
    del cos, sin  # learned absolute positions: nothing rotates
    h = _ln_apply(p["ln_1"], x, cfg.layer_norm_epsilon)
    qkv = project(h, p["attn"]["c_attn"], "btd,dshk->btshk")
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = constrain(q, ("batch", "seq", "act_heads", None))
    if kv_cache is not None:
        k, v, kv_cache = update_kv(kv_cache, k, v, cache_start)
    scale = cfg.head_dim**-0.5 if cfg.scale_attn_weights else 1.0
    out = attention(q, k, v, info, implementation=cfg.attn_implementation, causal=True, sliding_window=window,
                    scale=scale)
    x = x + project(out, p["attn"]["c_proj"], "bthk,hkd->btd")
    h = _ln_apply(p["ln_2"], x, cfg.layer_norm_epsilon)
    h = get_activation(cfg.activation_function)(project(h, p["mlp"]["c_fc"], "btd,df->btf"))
    x = x + project(h, p["mlp"]["c_proj"], "btf,fd->btd")
    return constrain(x, ("batch", "seq", "act_embed")), kv_cache


# ---------------------------------------------------------------- forward
def forward_hidden(
    params: Params,
    cfg: GPT2Config,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Final hidden states [b, t, d] (after ``ln_f``) and the updated cache.

    Without ``position_ids`` positions count from the cache index, as Transformers does
    (left padding shifts them; ``generate`` passes mask-derived positions).
    """
    if inputs_embeds is None:
        x = embed(params["wte"]["embedding"], input_ids, cfg.compute_dtype)
    else:
        x = inputs_embeds.astype(cfg.compute_dtype)
    ids_like = x[..., 0].astype(jnp.int32)
    if position_ids is None:
        position_ids = default_position_ids(ids_like, cache)
    x = x + embed(params["wpe"]["embedding"], position_ids, cfg.compute_dtype)
    x = constrain(x, ("batch", "seq", "act_embed"))
    info, cache = mask_info(ids_like, attention_mask, segment_ids, cache)
    x, cache = run_layers(params["layers"], cfg, x, None, None, info, cache, layer_fn=decoder_layer)
    if cache is not None:
        cache = {**cache, "index": cache["index"] + x.shape[1]}
    return _ln_apply(params["ln_f"], x, cfg.layer_norm_epsilon), cache


def forward(
    params: Params,
    cfg: GPT2Config,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
    logits_to_keep: int = 0,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Logits [b, t, vocab] (fp32) and the updated cache."""
    h, cache = forward_hidden(params, cfg, input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, segment_ids=segment_ids, inputs_embeds=inputs_embeds)
    if logits_to_keep:
        h = h[:, -logits_to_keep:]
    table = {"embed_tokens": {"embedding": params["wte"]["embedding"]}, **params}
    return unembed(h, table, cfg.tie_word_embeddings).astype(jnp.float32), cache


__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs"]
