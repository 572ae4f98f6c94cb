"""The Gemma decoder (Gemma 1, 2 and 3 text) as pure functions.

What sets it apart from Llama: embeddings scaled by sqrt(hidden), ``(1 + w)`` RMSNorms
(zero-initialised), a GeGLU MLP and a tied head; Gemma 2 adds norms after the attention
and MLP outputs, attention scaled by ``query_pre_attn_scalar``, tanh soft-capping of the
attention scores and final logits, and alternating local (sliding-window) / global layers;
Gemma 3 adds q/k norms and a separate rotary base for its local layers. The config's
properties (``zoo.models.gemma.config``) switch these on, so one layer function serves
all three families.

Layers come in kinds (``cfg.layer_kinds()``: local or global). With ``scan_layers=True``
the params stay stacked over all layers ``[L, ...]`` and the layers run as ``lax.scan``
over each segment's repeating group (``zoo.nn.scan.plan_segments``: Gemma 2 scans
(local, global) pairs, Gemma 3 five locals and a global), each layer of the group
indexing its own weights, so windows and rotary tables stay static per kind and compile
time stays flat in depth. The KV cache is stacked per kind too, so local layers can keep
a rolling buffer of ``window + chunk - 1`` slots while global ones keep the full length.
Masks, cache writes and remat come from the Llama decoder.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from zoo.models.gemma.config import GemmaConfig
from zoo.models.llama.model import _remat, default_position_ids, layer_view, mask_info, update_kv
from zoo.nn.activations import softcap
from zoo.nn.attention import MaskInfo, attention
from zoo.nn.dense import gated_mlp, project, scaled_embed, unembed
from zoo.nn.norms import rms_norm
from zoo.nn.params import ParamSpec, decoder_param_specs, init_params, layers_spec, logical_axes, normal, zeros
from zoo.nn.rope import apply_rope, rope_cos_sin
from zoo.nn.scan import plan_segments
from zoo.sharding import constrain

Params = dict[str, Any]


# ---------------------------------------------------------------- params
def _norm_spec(dim: int, axis: str = "norm") -> Params:
    # Stored as w in (1 + w): zeros are the identity scale, as Transformers initialises them.
    return {"scale": ParamSpec((dim,), (axis,), zeros)}


def layer_spec(cfg: GemmaConfig) -> Params:
    d, hq, hkv, hd, f = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                         cfg.intermediate_size)
    w = normal(cfg.initializer_range)

    def proj(shape, axes, bias_shape=None, bias_axes=None):
        p = {"kernel": ParamSpec(shape, axes, w)}
        if cfg.attention_bias and bias_shape is not None:
            p["bias"] = ParamSpec(bias_shape, bias_axes, zeros)
        return p

    attn = {
        "q_proj": proj((d, hq, hd), ("embed", "q_heads", "head_dim"), (hq, hd), ("q_heads", "head_dim")),
        "k_proj": proj((d, hkv, hd), ("embed", "kv_heads", "head_dim"), (hkv, hd), ("kv_heads", "head_dim")),
        "v_proj": proj((d, hkv, hd), ("embed", "kv_heads", "head_dim"), (hkv, hd), ("kv_heads", "head_dim")),
        "o_proj": proj((hq, hd, d), ("q_heads", "head_dim", "embed"), (d,), ("embed",)),
    }
    if cfg.qk_norm:
        attn["q_norm"] = _norm_spec(hd, "head_dim")
        attn["k_norm"] = _norm_spec(hd, "head_dim")
    spec = {
        "input_layernorm": _norm_spec(d),
        "self_attn": attn,
        "post_attention_layernorm": _norm_spec(d),
        "mlp": {
            "gate_proj": {"kernel": ParamSpec((d, f), ("embed", "mlp"), w)},
            "up_proj": {"kernel": ParamSpec((d, f), ("embed", "mlp"), w)},
            "down_proj": {"kernel": ParamSpec((f, d), ("mlp", "embed"), w)},
        },
    }
    if cfg.sandwich_norms:
        spec["pre_feedforward_layernorm"] = _norm_spec(d)
        spec["post_feedforward_layernorm"] = _norm_spec(d)
    return spec


def param_specs(cfg: GemmaConfig) -> Params:
    return decoder_param_specs(cfg, layers_spec(layer_spec(cfg), cfg.num_hidden_layers, cfg.scan_layers),
                               _norm_spec(cfg.hidden_size))


def init(cfg: GemmaConfig, key: jax.Array) -> Params:
    """Random params (normal(0, initializer_range) weights, zero (= identity) norms)."""
    return init_params(param_specs(cfg), key, cfg.weight_dtype)


def param_axes(cfg: GemmaConfig) -> Params:
    return logical_axes(param_specs(cfg))


# ---------------------------------------------------------------- cache
def kind_ids(cfg: GemmaConfig, kind: str) -> tuple[int, ...]:
    return tuple(i for i, k in enumerate(cfg.layer_kinds()) if k == kind)


def init_cache(cfg: GemmaConfig, batch_size: int, max_length: int, dtype: Any = None,
               window_cache_length: int | None = None) -> dict[str, Any]:
    """A static KV cache; ``slot_index`` holds each slot's token index (-1: empty or padding).

    ``window_cache_length=S`` gives the sliding-window layers rolling buffers of S slots
    (``ring_slot_index``); a forward over t tokens needs S >= sliding_window + t - 1.
    Scanned layers keep one stack per layer kind, ``k[kind]: [layers of kind, b, slots, h, d]``;
    unrolled layers a list of per-layer buffers.
    """
    dtype = jnp.dtype(dtype or cfg.dtype)
    windows, kinds = cfg.layer_windows(), cfg.layer_kinds()
    ring = window_cache_length is not None and any(w is not None for w in windows) \
        and window_cache_length < max_length
    lengths = [window_cache_length if ring and w is not None else max_length for w in windows]
    shape = lambda n: (batch_size, n, cfg.num_key_value_heads, cfg.head_dim)  # noqa: E731
    if cfg.scan_layers:
        k, v = {}, {}
        for kind in dict.fromkeys(kinds):
            ids = kind_ids(cfg, kind)
            k[kind] = jnp.zeros((len(ids), *shape(lengths[ids[0]])), dtype)
            v[kind] = jnp.zeros((len(ids), *shape(lengths[ids[0]])), dtype)
    else:
        k = [jnp.zeros(shape(n), dtype) for n in lengths]
        v = [jnp.zeros(shape(n), dtype) for n in lengths]
    cache = {"k": k, "v": v, "index": jnp.zeros((), jnp.int32)}
    if not ring or any(w is None for w in windows):
        cache["slot_index"] = jnp.full((batch_size, max_length), -1, jnp.int32)
    if ring:
        cache["ring_slot_index"] = jnp.full((batch_size, window_cache_length), -1, jnp.int32)
    return cache


# ---------------------------------------------------------------- layers
def _norm(p: Params, x: jax.Array, cfg: GemmaConfig) -> jax.Array:
    return rms_norm(p["scale"], x, cfg.rms_norm_eps, offset=1.0)


def attention_block(p: Params, cfg: GemmaConfig, x: jax.Array, cos: jax.Array, sin: jax.Array, info: MaskInfo,
                    window: int | None, kv_cache: tuple | None, cache_start: Any) -> tuple[jax.Array, tuple | None]:
    q = project(x, p["q_proj"], "btd,dhk->bthk")
    k = project(x, p["k_proj"], "btd,dhk->bthk")
    v = project(x, p["v_proj"], "btd,dhk->bthk")
    if cfg.qk_norm:
        q, k = _norm(p["q_norm"], q, cfg), _norm(p["k_norm"], k, cfg)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = constrain(q, ("batch", "seq", "act_heads", None))
    if kv_cache is not None:
        k, v, kv_cache = update_kv(kv_cache, k, v, cache_start)
    out = attention(q, k, v, info, implementation=cfg.attn_implementation, causal=True, sliding_window=window,
                    scale=cfg.query_scale, softcap=cfg.attn_softcap)
    return project(out, p["o_proj"], "bthk,hkd->btd"), kv_cache


def decoder_layer(p: Params, cfg: GemmaConfig, x: jax.Array, cos: jax.Array, sin: jax.Array, info: MaskInfo,
                  kv_cache: tuple | None = None, cache_start: Any = None, *,
                  window: int | None = None) -> tuple[jax.Array, tuple | None]:
    h = _norm(p["input_layernorm"], x, cfg)
    attn_out, kv_cache = attention_block(p["self_attn"], cfg, h, cos, sin, info, window, kv_cache, cache_start)
    if cfg.sandwich_norms:
        x = x + _norm(p["post_attention_layernorm"], attn_out, cfg)
        h = _norm(p["pre_feedforward_layernorm"], x, cfg)
        x = x + _norm(p["post_feedforward_layernorm"], gated_mlp(p["mlp"], h, cfg.mlp_activation), cfg)
    else:
        x = x + attn_out
        x = x + gated_mlp(p["mlp"], _norm(p["post_attention_layernorm"], x, cfg), cfg.mlp_activation)
    return constrain(x, ("batch", "seq", "act_embed")), kv_cache


def run_layers(layers: Any, cfg: GemmaConfig, x: jax.Array, rope: dict[str, tuple[jax.Array, jax.Array]],
               info: Any, cache: dict[str, Any] | None) -> tuple[jax.Array, dict[str, Any] | None]:
    """Every layer: unrolled (a list of params), or scanned over each segment's repeating group.

    ``rope`` maps a layer kind to its (cos, sin); ``info`` is a MaskInfo, or a SplitInfo when
    the windowed layers use rolling buffers.
    """
    windows, kinds = cfg.layer_windows(), cfg.layer_kinds()
    start = cache["index"] if cache is not None else None

    def layer_fn(i: int):
        fn = functools.partial(decoder_layer, window=windows[i])
        return _remat(fn, cfg, i if isinstance(cfg.remat_policy, tuple) and not cfg.scan_layers else None)

    if not cfg.scan_layers:
        new_k, new_v = [], []
        for i, lp in enumerate(layers):
            kv = (cache["k"][i], cache["v"][i], None) if cache is not None else None
            layer_info, layer_start = layer_view(info, start, windows[i])
            x, kv = layer_fn(i)(lp, cfg, x, *rope[kinds[i]], layer_info, kv, layer_start)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        return x, (None if cache is None else {**cache, "k": new_k, "v": new_v})

    kv = None if cache is None else (dict(cache["k"]), dict(cache["v"]))
    for seg in plan_segments(kinds):
        g = len(seg.group)
        # Rows of the per-kind cache stacks this segment starts at, and how many each rep uses.
        first = {kind: kinds[:seg.start].count(kind) for kind in set(seg.group)}
        per_rep = {kind: seg.group.count(kind) for kind in set(seg.group)}
        fns = [layer_fn(seg.start + j) for j in range(g)]

        def body(carry, rep, seg=seg, g=g, first=first, per_rep=per_rep, fns=fns):
            y, kv = carry
            for j, kind in enumerate(seg.group):
                layer = seg.start + rep * g + j
                lp = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, layer, 0, keepdims=False), layers)
                layer_info, layer_start = layer_view(info, start, windows[seg.start + j])
                if kv is None:
                    y, _ = fns[j](lp, cfg, y, *rope[kind], layer_info, None, layer_start)
                    continue
                row = first[kind] + rep * per_rep[kind] + seg.group[:j].count(kind)
                y, (ck, cv, _) = fns[j](lp, cfg, y, *rope[kind], layer_info, (kv[0][kind], kv[1][kind], row),
                                        layer_start)
                kv = ({**kv[0], kind: ck}, {**kv[1], kind: cv})
            return (y, kv), None

        (x, kv), _ = jax.lax.scan(body, (x, kv), jnp.arange(seg.reps, dtype=jnp.int32))
    return x, (None if cache is None else {**cache, "k": kv[0], "v": kv[1]})


# ---------------------------------------------------------------- forward
def forward_hidden(
    params: Params,
    cfg: GemmaConfig,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Final hidden states [b, t, d] (after the last norm) and the updated cache.

    ``inputs_embeds`` are used as given (unscaled), as in Transformers, where the sqrt(hidden)
    factor lives in the embedding lookup.
    """
    if inputs_embeds is None:
        x = scaled_embed(params["embed_tokens"]["embedding"], input_ids, cfg.hidden_size**0.5, cfg.compute_dtype)
    else:
        x = inputs_embeds.astype(cfg.compute_dtype)
    ids_like = x[..., 0].astype(jnp.int32)
    x = constrain(x, ("batch", "seq", "act_embed"))
    if position_ids is None:
        position_ids = default_position_ids(ids_like, cache)
    tables: dict[Any, tuple[jax.Array, jax.Array]] = {}
    rope = {}
    for kind in dict.fromkeys(cfg.layer_kinds()):
        r = cfg.rope_for(kind)
        if r not in tables:
            tables[r] = rope_cos_sin(r, position_ids, cfg.compute_dtype)
        rope[kind] = tables[r]
    info, cache = mask_info(ids_like, attention_mask, segment_ids, cache)
    x, cache = run_layers(params["layers"], cfg, x, rope, info, cache)
    if cache is not None:
        cache = {**cache, "index": cache["index"] + x.shape[1]}
    return _norm(params["norm"], x, cfg), cache


def forward(
    params: Params,
    cfg: GemmaConfig,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
    logits_to_keep: int = 0,
) -> tuple[jax.Array, dict[str, Any] | None]:
    """Logits [b, t, vocab] (fp32, soft-capped when the config says so) and the updated cache."""
    h, cache = forward_hidden(
        params, cfg, input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
        segment_ids=segment_ids, inputs_embeds=inputs_embeds,
    )
    if logits_to_keep:
        h = h[:, -logits_to_keep:]
    logits = unembed(h, params, cfg.tie_word_embeddings).astype(jnp.float32)
    return softcap(logits, cfg.final_softcap), cache


__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "layer_spec",
           "decoder_layer", "run_layers", "kind_ids"]
