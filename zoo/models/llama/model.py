"""The Llama decoder as pure functions; Mistral, Qwen2 and Qwen3 reuse it.

``forward(params, cfg, input_ids, ...) -> (logits, cache)``. The config flags
that distinguish the families (q/k norms, qkv biases, sliding windows, tied
embeddings) are read from ``cfg``, so one layer function serves all four, and
both layer layouts: stacked under ``lax.scan`` or a per-layer list walked by a
Python loop (``cfg.scan_layers``).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from zoo.models.llama.config import LlamaConfig
from zoo.nn.attention import MaskInfo, attention
from zoo.nn.dense import embed, gated_mlp, project, unembed
from zoo.nn.norms import rms_norm
from zoo.nn.params import ParamSpec, decoder_param_specs, init_params, layers_spec, logical_axes, normal, ones, zeros
from zoo.nn.rope import apply_rope, rope_cos_sin
from zoo.sharding import constrain

Params = dict[str, Any]


# ---------------------------------------------------------------- params
def layer_spec(cfg: LlamaConfig) -> Params:
    d, hq, hkv, hd, f = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    w = normal(cfg.initializer_range)

    def proj(shape, axes, bias_shape=None, bias_axes=None):
        p = {"kernel": ParamSpec(shape, axes, w)}
        if bias_shape is not None:
            p["bias"] = ParamSpec(bias_shape, bias_axes, zeros)
        return p

    qkv_bias = cfg.qkv_bias
    attn = {
        "q_proj": proj((d, hq, hd), ("embed", "q_heads", "head_dim"), *(((hq, hd), ("q_heads", "head_dim")) if qkv_bias else ())),
        "k_proj": proj((d, hkv, hd), ("embed", "kv_heads", "head_dim"), *(((hkv, hd), ("kv_heads", "head_dim")) if qkv_bias else ())),
        "v_proj": proj((d, hkv, hd), ("embed", "kv_heads", "head_dim"), *(((hkv, hd), ("kv_heads", "head_dim")) if qkv_bias else ())),
        "o_proj": proj((hq, hd, d), ("q_heads", "head_dim", "embed"), *(((d,), ("embed",)) if cfg.o_bias else ())),
    }
    if cfg.qk_norm:
        attn["q_norm"] = {"scale": ParamSpec((hd,), ("head_dim",), ones)}
        attn["k_norm"] = {"scale": ParamSpec((hd,), ("head_dim",), ones)}
    mb = cfg.mlp_bias
    mlp = {
        "gate_proj": proj((d, f), ("embed", "mlp"), *(((f,), ("mlp",)) if mb else ())),
        "up_proj": proj((d, f), ("embed", "mlp"), *(((f,), ("mlp",)) if mb else ())),
        "down_proj": proj((f, d), ("mlp", "embed"), *(((d,), ("embed",)) if mb else ())),
    }
    return {
        "input_layernorm": {"scale": ParamSpec((d,), ("norm",), ones)},
        "self_attn": attn,
        "post_attention_layernorm": {"scale": ParamSpec((d,), ("norm",), ones)},
        "mlp": mlp,
    }


def param_specs(cfg: LlamaConfig) -> Params:
    return decoder_param_specs(cfg, layers_spec(layer_spec(cfg), cfg.num_hidden_layers, cfg.scan_layers),
                               {"scale": ParamSpec((cfg.hidden_size,), ("norm",), ones)})


def init(cfg: LlamaConfig, key: jax.Array) -> Params:
    """Random params (normal(0, initializer_range) weights, unit norms, zero biases)."""
    return init_params(param_specs(cfg), key, cfg.weight_dtype)


def param_axes(cfg: LlamaConfig) -> Params:
    return logical_axes(param_specs(cfg))


# ---------------------------------------------------------------- cache
def init_cache(cfg: LlamaConfig, batch_size: int, max_length: int, dtype: Any = None,
               window_cache_length: int | None = None) -> dict[str, Any]:
    """A static KV cache: ``slot_index`` holds each slot's token index (-1: empty or padding).

    ``window_cache_length=S`` makes the buffers of windowed layers rolling: S slots reused
    modulo S, indexed by ``ring_slot_index``. A forward over t tokens needs
    S >= sliding_window + t - 1, so no key a query still sees is overwritten.
    """
    dtype = jnp.dtype(dtype or cfg.dtype)
    windows = cfg.layer_windows()
    ring = window_cache_length is not None and any(w is not None for w in windows) \
        and window_cache_length < max_length
    lengths = [window_cache_length if ring and w is not None else max_length for w in windows]
    shape = lambda n: (batch_size, n, cfg.num_key_value_heads, cfg.head_dim)  # noqa: E731
    if cfg.scan_layers:
        if len(set(lengths)) > 1:
            raise ValueError("a sliding-window cache for a model mixing windowed and full-attention layers needs "
                             "per-layer arrays: load it with scan_layers=False")
        k = jnp.zeros((cfg.num_hidden_layers, *shape(lengths[0])), dtype)
        v = jnp.zeros((cfg.num_hidden_layers, *shape(lengths[0])), dtype)
    else:
        k = [jnp.zeros(shape(n), dtype) for n in lengths]
        v = [jnp.zeros(shape(n), dtype) for n in lengths]
    cache = {"k": k, "v": v, "index": jnp.zeros((), jnp.int32)}
    if not ring or any(w is None for w in windows):
        cache["slot_index"] = jnp.full((batch_size, max_length), -1, jnp.int32)
    if ring:
        cache["ring_slot_index"] = jnp.full((batch_size, window_cache_length), -1, jnp.int32)
    return cache


def write_cache(buf: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write [b, t, ...] into the cache buffer at slot ``start`` (in place under donation).

    ``start`` is a scalar (consecutive slots) or a vector of t slots (a rolling buffer).
    """
    new = new.astype(buf.dtype)
    if jnp.ndim(start) == 1:
        if new.shape[1] > 1:
            return buf.at[:, start].set(new)
        start = start[0]
    idx = (0, start) + (0,) * (buf.ndim - 2)
    return jax.lax.dynamic_update_slice(buf, new, idx)


KVCache = tuple  # (k, v, layer): per-layer buffers with layer None, or stacked [L, ...] buffers and a layer index


def update_kv(kv_cache: KVCache, k: jax.Array, v: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array, KVCache]:
    """Write the new keys/values and return this layer's full K/V.

    With stacked buffers (scanned layers) only the new tokens are written into the
    [L, ...] carry, in place; the layer's slice is read back for attention. Writing
    a whole updated layer slice back instead would copy the cache every step.
    """
    ck, cv, layer = kv_cache
    if layer is None:
        ck, cv = write_cache(ck, k, start), write_cache(cv, v, start)
        return ck, cv, (ck, cv, None)
    zero = jnp.zeros((), jnp.int32)
    if jnp.ndim(start) == 1 and k.shape[1] > 1:  # rolling buffer, several tokens: scatter into the slots
        ck = ck.at[layer, :, start].set(jnp.swapaxes(k, 0, 1).astype(ck.dtype))
        cv = cv.at[layer, :, start].set(jnp.swapaxes(v, 0, 1).astype(cv.dtype))
    else:
        start = start[0] if jnp.ndim(start) == 1 else start
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (layer, zero, start, zero, zero))
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (layer, zero, start, zero, zero))
    return (jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False),
            jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False), (ck, cv, layer))


# ---------------------------------------------------------------- layers
def qkv_rope(p: Params, cfg: LlamaConfig, x: jax.Array, cos: jax.Array, sin: jax.Array):
    """Queries, keys and values [b, t, heads, head_dim], normed (qk_norm) and rotated; the paged
    decode step (zoo.generation.paged) shares it."""
    q = project(x, p["q_proj"], "btd,dhk->bthk")
    k = project(x, p["k_proj"], "btd,dhk->bthk")
    v = project(x, p["v_proj"], "btd,dhk->bthk")
    if cfg.qk_norm:
        q = rms_norm(p["q_norm"]["scale"], q, cfg.rms_norm_eps)
        k = rms_norm(p["k_norm"]["scale"], k, cfg.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return constrain(q, ("batch", "seq", "act_heads", None)), k, v


def attention_block(
    p: Params,
    cfg: LlamaConfig,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    info: MaskInfo,
    window: Any,
    kv_cache: KVCache | None,
    cache_start: jax.Array | None,
) -> tuple[jax.Array, KVCache | None]:
    q, k, v = qkv_rope(p, cfg, x, cos, sin)
    if kv_cache is not None:
        k, v, kv_cache = update_kv(kv_cache, k, v, cache_start)
    out = attention(
        q, k, v, info, implementation=cfg.attn_implementation, causal=True, sliding_window=window,
        scale=attention_scale(cfg),
    )
    return project(out, p["o_proj"], "bthk,hkd->btd"), kv_cache


def attention_scale(cfg: LlamaConfig) -> float:
    return cfg.head_dim**-0.5


def decoder_layer(
    p: Params,
    cfg: LlamaConfig,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    info: MaskInfo,
    window: Any,
    kv_cache: KVCache | None = None,
    cache_start: jax.Array | None = None,
) -> tuple[jax.Array, KVCache | None]:
    h = rms_norm(p["input_layernorm"]["scale"], x, cfg.rms_norm_eps)
    attn_out, kv_cache = attention_block(p["self_attn"], cfg, h, cos, sin, info, window, kv_cache, cache_start)
    x = x + attn_out
    h = rms_norm(p["post_attention_layernorm"]["scale"], x, cfg.rms_norm_eps)
    x = x + gated_mlp(p["mlp"], h, cfg.hidden_act)
    return constrain(x, ("batch", "seq", "act_embed")), kv_cache


def _remat(fn, cfg: LlamaConfig, layer: int | None = None):
    """``cfg.remat_policy``: one policy name for every layer, or (unrolled layers) a tuple of
    names/None, one per layer, so e.g. only the deepest layers recompute."""
    policy = cfg.remat_policy
    if isinstance(policy, tuple):
        if len(policy) != cfg.num_hidden_layers:
            raise ValueError(f"remat_policy has {len(policy)} entries for {cfg.num_hidden_layers} layers")
        if layer is None:
            if not cfg.scan_layers:
                return fn  # the unrolled loop asks per layer
            if len(set(policy)) > 1:
                raise ValueError("per-layer remat_policy needs scan_layers=False (scanned layers share one body)")
            policy = policy[0]
        else:
            policy = policy[layer]
    if policy is None:
        return fn
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "nothing": jax.checkpoint_policies.everything_saveable,
    }
    if policy not in policies:
        raise ValueError(f"unknown remat_policy '{policy}'; known: {sorted(policies)}")
    return jax.checkpoint(fn, policy=policies[policy], static_argnums=(1,))


def run_layers(
    layers: Any,
    cfg: LlamaConfig,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    info: MaskInfo,
    cache: dict[str, Any] | None,
    layer_fn=decoder_layer,
    windows: tuple[Any, ...] | None = None,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Apply every layer, scanned (stacked params) or unrolled (list of params)."""
    windows = cfg.layer_windows() if windows is None else windows
    fn = _remat(layer_fn, cfg)
    start = cache["index"] if cache is not None else None
    if not cfg.scan_layers:
        new_k, new_v = [], []
        for i, lp in enumerate(layers):
            kv = (cache["k"][i], cache["v"][i], None) if cache is not None else None
            layer_info, layer_start = layer_view(info, start, windows[i])
            layer_fn_i = _remat(layer_fn, cfg, i) if isinstance(cfg.remat_policy, tuple) else fn
            x, kv = layer_fn_i(lp, cfg, x, cos, sin, layer_info, windows[i], kv, layer_start)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        return x, (None if cache is None else {**cache, "k": new_k, "v": new_v})

    uniform = len(set(windows)) == 1
    static_window = windows[0] if uniform else None
    if isinstance(info, SplitInfo):  # init_cache allows a rolling cache under scan only when every layer is windowed
        info, start = layer_view(info, start, static_window)
    window_xs = None if uniform else jnp.asarray([w or 0 for w in windows], jnp.int32)
    layer_ids = jnp.arange(cfg.num_hidden_layers, dtype=jnp.int32)

    if cache is None:
        def body(carry, xs):
            lp, w, _ = xs
            y, _ = fn(lp, cfg, carry, cos, sin, info, static_window if uniform else w, None, start)
            return y, None

        x, _ = jax.lax.scan(body, x, (layers, window_xs, layer_ids))
        return x, None

    def body_cached(carry, xs):
        y, ck, cv = carry
        lp, w, i = xs
        y, (ck, cv, _) = fn(lp, cfg, y, cos, sin, info, static_window if uniform else w, (ck, cv, i), start)
        return (y, ck, cv), None

    (x, ck, cv), _ = jax.lax.scan(body_cached, (x, cache["k"], cache["v"]), (layers, window_xs, layer_ids))
    return x, {**cache, "k": ck, "v": cv}


class SplitInfo(NamedTuple):
    """Mask descriptions for a cache whose windowed layers use rolling buffers."""

    full: MaskInfo | None    # full-attention layers (None when every layer is windowed)
    ring: MaskInfo           # windowed layers: keys indexed by ``ring_slot_index``
    ring_slots: jax.Array    # [t] rolling slots the new tokens are written to


def layer_view(info: Any, start: Any, window: Any) -> tuple[MaskInfo, Any]:
    """The mask and write position one layer uses."""
    if not isinstance(info, SplitInfo):
        return info, start
    if window is None:
        return info.full, start
    return info.ring, info.ring_slots


# ---------------------------------------------------------------- forward
def default_position_ids(input_ids: jax.Array, cache: dict[str, Any] | None) -> jax.Array:
    b, t = input_ids.shape
    start = cache["index"] if cache is not None else 0
    return jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))


def mask_info(
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    segment_ids: jax.Array | None,
    cache: dict[str, Any] | None,
) -> tuple[MaskInfo, dict[str, Any] | None]:
    """Index-based mask description; with a cache, also record the new tokens' slots."""
    b, t = input_ids.shape
    if attention_mask is not None and attention_mask.shape[-1] != t and cache is None:
        raise ValueError(f"attention_mask has length {attention_mask.shape[-1]}, input_ids {t}")
    new_valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask[:, -t:].astype(bool)
    start = cache["index"] if cache is not None else jnp.zeros((), jnp.int32)
    q_index = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    if cache is None:
        seg = segment_ids
        return MaskInfo(q_index, q_index, new_valid, seg, seg), None
    written = jnp.where(new_valid, q_index, -1)
    info = None
    if "slot_index" in cache:
        slot_index = write_cache(cache["slot_index"], written, start)
        cache = {**cache, "slot_index": slot_index}
        info = MaskInfo(q_index, slot_index, slot_index >= 0)
    if "ring_slot_index" in cache:
        n = cache["ring_slot_index"].shape[1]
        if t > n:
            raise ValueError(f"a rolling cache of {n} slots cannot take {t} tokens in one call")
        slots = (start + jnp.arange(t, dtype=jnp.int32)) % n
        ring_index = write_cache(cache["ring_slot_index"], written, slots)
        cache = {**cache, "ring_slot_index": ring_index}
        info = SplitInfo(info, MaskInfo(q_index, ring_index, ring_index >= 0), slots)
    return info, cache


def rope_decoder_hidden(
    params: Params,
    cfg: Any,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None,
    position_ids: jax.Array | None,
    cache: dict[str, Any] | None,
    segment_ids: jax.Array | None,
    inputs_embeds: jax.Array | None,
    embed_name: str = "embed_tokens",
    layer_fn: Callable[..., Any] = decoder_layer,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Embed, rotary tables, masks and every layer of a rotary decoder (Llama's and the families
    that reuse its cache and mask code with their own ``layer_fn``): hidden states before the
    final norm, and the updated cache."""
    if inputs_embeds is None:
        x = embed(params[embed_name]["embedding"], input_ids, cfg.compute_dtype)
    else:
        x = inputs_embeds.astype(cfg.compute_dtype)
    ids_like = x[..., 0].astype(jnp.int32)
    x = constrain(x, ("batch", "seq", "act_embed"))
    if position_ids is None:
        position_ids = default_position_ids(ids_like, cache)
    cos, sin = rope_cos_sin(cfg.rope, position_ids, cfg.compute_dtype)
    info, cache = mask_info(ids_like, attention_mask, segment_ids, cache)
    x, cache = run_layers(params["layers"], cfg, x, cos, sin, info, cache, layer_fn=layer_fn)
    if cache is not None:
        cache = {**cache, "index": cache["index"] + x.shape[1]}
    return x, cache


def forward_hidden(
    params: Params,
    cfg: LlamaConfig,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Final hidden states [b, t, d] (after the last norm) and the updated cache."""
    x, cache = rope_decoder_hidden(params, cfg, input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, segment_ids=segment_ids, inputs_embeds=inputs_embeds)
    return rms_norm(params["norm"]["scale"], x, cfg.rms_norm_eps), cache


def forward(
    params: Params,
    cfg: LlamaConfig,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
    logits_to_keep: int = 0,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Logits [b, t, vocab] (fp32) and the updated cache.

    ``logits_to_keep=n`` computes logits for the last n positions only (decoding).
    """
    h, cache = forward_hidden(
        params, cfg, input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
        segment_ids=segment_ids, inputs_embeds=inputs_embeds,
    )
    if logits_to_keep:
        h = h[:, -logits_to_keep:]
    logits = unembed(h, params, cfg.tie_word_embeddings)
    return logits.astype(jnp.float32), cache
