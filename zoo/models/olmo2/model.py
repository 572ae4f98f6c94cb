"""OLMo-2 as pure functions: Llama's attention and MLP, normed on the way out instead of in.

Layer: ``x + norm(attn(x))`` then ``x + norm(mlp(x))``; q and k are RMS-normed over the
whole projection (every head at once) before being split into heads and rotated. The
mask, KV cache and layer loop (scanned or unrolled) are Llama's.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from zoo.models.llama import model as llama
from zoo.models.llama.model import KVCache, init_cache, update_kv
from zoo.models.olmo2.config import Olmo2Config
from zoo.nn.attention import MaskInfo, attention
from zoo.nn.dense import gated_mlp, project, unembed
from zoo.nn.norms import rms_norm
from zoo.nn.params import ParamSpec, decoder_param_specs, init_params, layers_spec, logical_axes, ones
from zoo.nn.rope import apply_rope
from zoo.sharding import constrain

Params = dict[str, Any]


# ---------------------------------------------------------------- params
def layer_spec(cfg: Olmo2Config) -> Params:
    spec = llama.layer_spec(cfg)
    del spec["input_layernorm"]
    hq, hkv, hd, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
    spec["self_attn"]["q_norm"] = {"scale": ParamSpec((hq, hd), ("q_heads", "head_dim"), ones)}
    spec["self_attn"]["k_norm"] = {"scale": ParamSpec((hkv, hd), ("kv_heads", "head_dim"), ones)}
    spec["post_feedforward_layernorm"] = {"scale": ParamSpec((d,), ("norm",), ones)}
    return spec


def param_specs(cfg: Olmo2Config) -> Params:
    return decoder_param_specs(cfg, layers_spec(layer_spec(cfg), cfg.num_hidden_layers, cfg.scan_layers),
                               {"scale": ParamSpec((cfg.hidden_size,), ("norm",), ones)})


def init(cfg: Olmo2Config, key: jax.Array) -> Params:
    """Random params (normal(0, initializer_range) weights, unit norms, zero biases)."""
    return init_params(param_specs(cfg), key, cfg.weight_dtype)


def param_axes(cfg: Olmo2Config) -> Params:
    return logical_axes(param_specs(cfg))


# ---------------------------------------------------------------- layers
def norm(scale: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """OLMo-2's RMSNorm: the weight multiplies in fp32, before the cast back."""
    return rms_norm(scale, x, eps, scale_in_fp32=True)


def all_heads_norm(scale: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """RMSNorm of [b, t, heads, head_dim] over heads and head_dim together."""
    b, t, h, k = x.shape
    return norm(scale.reshape(h * k), x.reshape(b, t, h * k), eps).reshape(b, t, h, k)


def qkv_rope(p: Params, cfg: Olmo2Config, x: jax.Array, cos: jax.Array, sin: jax.Array):
    eps = cfg.rms_norm_eps
    q = all_heads_norm(p["q_norm"]["scale"], project(x, p["q_proj"], "btd,dhk->bthk"), eps)
    k = all_heads_norm(p["k_norm"]["scale"], project(x, p["k_proj"], "btd,dhk->bthk"), eps)
    v = project(x, p["v_proj"], "btd,dhk->bthk")
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return constrain(q, ("batch", "seq", "act_heads", None)), k, v


def decoder_layer(p: Params, cfg: Olmo2Config, x: jax.Array, cos: jax.Array, sin: jax.Array, info: MaskInfo,
                  window: Any, kv_cache: KVCache | None = None, cache_start: jax.Array | None = None):
    eps = cfg.rms_norm_eps
    q, k, v = qkv_rope(p["self_attn"], cfg, x, cos, sin)
    if kv_cache is not None:
        k, v, kv_cache = update_kv(kv_cache, k, v, cache_start)
    out = attention(q, k, v, info, implementation=cfg.attn_implementation, causal=True, sliding_window=window,
                    scale=cfg.head_dim**-0.5)
    attn_out = project(out, p["self_attn"]["o_proj"], "bthk,hkd->btd")
    x = x + norm(p["post_attention_layernorm"]["scale"], attn_out, eps)
    x = x + norm(p["post_feedforward_layernorm"]["scale"], gated_mlp(p["mlp"], x, cfg.hidden_act), eps)
    return constrain(x, ("batch", "seq", "act_embed")), kv_cache


# ---------------------------------------------------------------- forward
def forward_hidden(
    params: Params,
    cfg: Olmo2Config,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Final hidden states [b, t, d] (after the last norm) and the updated cache."""
    x, cache = llama.rope_decoder_hidden(params, cfg, input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids, cache=cache, segment_ids=segment_ids,
                                         inputs_embeds=inputs_embeds, layer_fn=decoder_layer)
    return norm(params["norm"]["scale"], x, cfg.rms_norm_eps), cache


def forward(
    params: Params,
    cfg: Olmo2Config,
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
    return unembed(h, params, cfg.tie_word_embeddings).astype(jnp.float32), cache


__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs"]
