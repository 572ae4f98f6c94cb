"""GPT-NeoX as pure functions: LayerNorm blocks with partial rotary attention and
(optionally) the parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``.

The mask, KV cache and layer loop are Llama's; the layer body is NeoX's own.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from zoo.models.gpt_neox.config import GPTNeoXConfig
from zoo.models.llama import model as llama
from zoo.models.llama.model import init_cache, update_kv
from zoo.nn.activations import get_activation
from zoo.nn.attention import MaskInfo, attention
from zoo.nn.dense import project
from zoo.nn.norms import layer_norm
from zoo.nn.params import ParamSpec, decoder_param_specs, init_params, layers_spec, logical_axes, normal, ones, zeros
from zoo.nn.rope import apply_rope
from zoo.sharding import constrain

Params = dict[str, Any]


# ---------------------------------------------------------------- params
def _ln(d: int) -> Params:
    return {"scale": ParamSpec((d,), ("norm",), ones), "bias": ParamSpec((d,), ("norm",), zeros)}


def layer_spec(cfg: GPTNeoXConfig) -> Params:
    d, h, hd, f = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
    w = normal(cfg.initializer_range)

    def proj(shape, axes, bias_shape, bias_axes, bias=True):
        p = {"kernel": ParamSpec(shape, axes, w)}
        if bias:
            p["bias"] = ParamSpec(bias_shape, bias_axes, zeros)
        return p

    ab = cfg.attention_bias
    return {
        "input_layernorm": _ln(d),
        "attention": {
            "query_key_value": proj((d, h, 3, hd), ("embed", "q_heads", None, "head_dim"), (h, 3, hd),
                                    ("q_heads", None, "head_dim"), ab),
            "dense": proj((h, hd, d), ("q_heads", "head_dim", "embed"), (d,), ("embed",), ab),
        },
        "post_attention_layernorm": _ln(d),
        "mlp": {
            "dense_h_to_4h": proj((d, f), ("embed", "mlp"), (f,), ("mlp",)),
            "dense_4h_to_h": proj((f, d), ("mlp", "embed"), (d,), ("embed",)),
        },
    }


def param_specs(cfg: GPTNeoXConfig) -> Params:
    return decoder_param_specs(cfg, layers_spec(layer_spec(cfg), cfg.num_hidden_layers, cfg.scan_layers),
                               _ln(cfg.hidden_size), embed="embed_in", norm="final_layer_norm", head="embed_out")


def init(cfg: GPTNeoXConfig, key: jax.Array) -> Params:
    return init_params(param_specs(cfg), key, cfg.weight_dtype)


def param_axes(cfg: GPTNeoXConfig) -> Params:
    return logical_axes(param_specs(cfg))


# ---------------------------------------------------------------- layers
def _ln_apply(p: Params, x: jax.Array, eps: float) -> jax.Array:
    return layer_norm(p["scale"], p["bias"], x, eps)


def attention_block(p: Params, cfg: GPTNeoXConfig, x: jax.Array, cos, sin, info: MaskInfo, window: Any,
                    kv_cache, cache_start):
    qkv = project(x, p["query_key_value"], "btd,dhsk->bthsk")
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # only the first rotary_pct of each head
    q = constrain(q, ("batch", "seq", "act_heads", None))
    if kv_cache is not None:
        k, v, kv_cache = update_kv(kv_cache, k, v, cache_start)
    out = attention(q, k, v, info, implementation=cfg.attn_implementation, causal=True, sliding_window=window,
                    scale=cfg.head_dim**-0.5)
    return project(out, p["dense"], "bthk,hkd->btd"), kv_cache


def mlp(p: Params, cfg: GPTNeoXConfig, x: jax.Array) -> jax.Array:
    h = get_activation(cfg.hidden_act)(project(x, p["dense_h_to_4h"], "btd,df->btf"))
    return project(h, p["dense_4h_to_h"], "btf,fd->btd")


def decoder_layer(p: Params, cfg: GPTNeoXConfig, x: jax.Array, cos, sin, info: MaskInfo, window: Any,
                  kv_cache=None, cache_start=None):
    eps = cfg.layer_norm_eps
    attn_out, kv_cache = attention_block(p["attention"], cfg, _ln_apply(p["input_layernorm"], x, eps), cos, sin,
                                         info, window, kv_cache, cache_start)
    if cfg.use_parallel_residual:
        # Both branches read the layer input; Transformers sums mlp + attn + x in that order.
        x = mlp(p["mlp"], cfg, _ln_apply(p["post_attention_layernorm"], x, eps)) + attn_out + x
    else:
        x = attn_out + x
        x = mlp(p["mlp"], cfg, _ln_apply(p["post_attention_layernorm"], x, eps)) + x
    return constrain(x, ("batch", "seq", "act_embed")), kv_cache


# ---------------------------------------------------------------- forward
def forward_hidden(
    params: Params,
    cfg: GPTNeoXConfig,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Final hidden states [b, t, d] (after the final LayerNorm) and the updated cache."""
    x, cache = llama.rope_decoder_hidden(params, cfg, input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids, cache=cache, segment_ids=segment_ids,
                                         inputs_embeds=inputs_embeds, embed_name="embed_in", layer_fn=decoder_layer)
    return _ln_apply(params["final_layer_norm"], x, cfg.layer_norm_eps), cache


def forward(
    params: Params,
    cfg: GPTNeoXConfig,
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
    if cfg.tie_word_embeddings:
        logits = jnp.einsum("btd,vd->btv", h, params["embed_in"]["embedding"].astype(h.dtype))
    else:
        logits = project(h, params["embed_out"], "btd,dv->btv")
    return logits.astype(jnp.float32), cache


__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs"]
