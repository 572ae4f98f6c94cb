"""The mixture-of-experts decoder (Mixtral, Qwen3-MoE) as pure functions.

Attention, norms, masks and the KV cache are Llama's. Each layer's MLP is either
the sparse MoE block (``zoo.nn.moe``) or a dense SwiGLU, as ``cfg.layer_kinds()``
says. Scanned params keep the per-layer parts stacked over all layers and the MLPs
stacked per kind (``layers.moe`` over MoE layers, ``layers.mlp`` over dense ones);
the layers run as ``lax.scan`` over each segment's repeating group
(``zoo.nn.scan``), so a mixed pattern compiles like a uniform one.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from zoo.models.llama.model import (
    _remat,
    attention_block,
    default_position_ids,
    init_cache,
    layer_spec as llama_layer_spec,
    mask_info,
)
from zoo.models.mixtral.config import MixtralConfig
from zoo.nn.attention import MaskInfo
from zoo.nn.dense import embed, gated_mlp, unembed
from zoo.nn.moe import moe_spec, sparse_moe_block
from zoo.nn.norms import rms_norm
from zoo.nn.params import ParamSpec, decoder_param_specs, init_params, logical_axes, ones, stack_specs
from zoo.nn.params import stack_layers as stack_trees, unstack_layers as unstack_trees
from zoo.nn.rope import rope_cos_sin
from zoo.nn.scan import Segment, plan_segments
from zoo.sharding import constrain

Params = dict[str, Any]
KINDS = ("moe", "dense")
MLP_KEY = {"moe": "moe", "dense": "mlp"}


# ---------------------------------------------------------------- params
def _common_spec(cfg: MixtralConfig) -> tuple[Params, Params]:
    """Llama's layer minus its MLP, and that dense MLP (for dense layers)."""
    spec = dict(llama_layer_spec(cfg))
    dense = spec.pop("mlp")
    return spec, dense


def _moe_spec(cfg: MixtralConfig) -> Params:
    return moe_spec(cfg.hidden_size, cfg.expert_intermediate_size, cfg.num_experts, cfg.initializer_range)


def layer_ids(cfg: MixtralConfig, kind: str) -> tuple[int, ...]:
    return tuple(i for i, k in enumerate(cfg.layer_kinds()) if k == kind)


def layers_param_spec(cfg: MixtralConfig) -> Any:
    common, dense = _common_spec(cfg)
    mlp = {"moe": _moe_spec(cfg), "dense": dense}
    if not cfg.scan_layers:
        return [{**common, MLP_KEY[k]: mlp[k]} for k in cfg.layer_kinds()]
    out = stack_specs(common, cfg.num_hidden_layers)
    for kind in KINDS:
        n = len(layer_ids(cfg, kind))
        if n:
            out[MLP_KEY[kind]] = stack_specs(mlp[kind], n)
    return out


def param_specs(cfg: MixtralConfig) -> Params:
    return decoder_param_specs(cfg, layers_param_spec(cfg), {"scale": ParamSpec((cfg.hidden_size,), ("norm",), ones)})


def init(cfg: MixtralConfig, key: jax.Array) -> Params:
    return init_params(param_specs(cfg), key, cfg.weight_dtype)


def param_axes(cfg: MixtralConfig) -> Params:
    return logical_axes(param_specs(cfg))


def stack_layers(layers: list[Params], cfg: MixtralConfig) -> Params:
    """Per-layer list -> the scanned layout: common parts stacked over all layers, each
    MLP kind over its own layers (``layers.moe``, ``layers.mlp``)."""
    if len(layers) != cfg.num_hidden_layers:
        raise ValueError(f"expected {cfg.num_hidden_layers} layers, got {len(layers)}")
    mlp_keys = set(MLP_KEY.values())
    out = stack_trees([{k: v for k, v in lp.items() if k not in mlp_keys} for lp in layers])
    for kind in KINDS:
        ids = layer_ids(cfg, kind)
        if ids:
            out[MLP_KEY[kind]] = stack_trees([layers[i][MLP_KEY[kind]] for i in ids])
    return out


def unstack_layers(stacked: Params, cfg: MixtralConfig) -> list[Params]:
    """The scanned layout -> one dict per layer, each with its own kind's MLP."""
    mlp_keys = set(MLP_KEY.values())
    out = unstack_trees({k: v for k, v in stacked.items() if k not in mlp_keys}, cfg.num_hidden_layers)
    for kind in KINDS:
        ids = layer_ids(cfg, kind)
        if ids:
            for lp, mp in zip((out[i] for i in ids), unstack_trees(stacked[MLP_KEY[kind]], len(ids))):
                lp[MLP_KEY[kind]] = mp
    return out


# ---------------------------------------------------------------- layers
def decoder_layer(p: Params, cfg: MixtralConfig, x: jax.Array, cos, sin, info: MaskInfo, window: Any,
                  kv_cache=None, cache_start=None, *, kind: str = "moe"):
    """One layer; returns (x, kv_cache, router logits [b*t, E] or None for a dense layer)."""
    h = rms_norm(p["input_layernorm"]["scale"], x, cfg.rms_norm_eps)
    attn_out, kv_cache = attention_block(p["self_attn"], cfg, h, cos, sin, info, window, kv_cache, cache_start)
    x = x + attn_out
    h = rms_norm(p["post_attention_layernorm"]["scale"], x, cfg.rms_norm_eps)
    if kind == "moe":
        y, router_logits = sparse_moe_block(
            p["moe"], h, top_k=cfg.num_experts_per_tok, normalize=cfg.normalize_topk, act=cfg.hidden_act,
            weights_in_router_dtype=cfg.router_weights_in_model_dtype, implementation=cfg.moe_implementation)
    else:
        y, router_logits = gated_mlp(p["mlp"], h, cfg.hidden_act), None
    return constrain(x + y, ("batch", "seq", "act_embed")), kv_cache, router_logits


def _layer_fns(cfg: MixtralConfig) -> dict[str, Any]:
    return {k: _remat(functools.partial(decoder_layer, kind=k), cfg) for k in KINDS}


def _segment_xs(layers: Params, cfg: MixtralConfig, seg: Segment) -> tuple[Params, dict[str, Any]]:
    """This segment's params as [reps, group, ...] views of the stacks (free when one segment
    covers a whole stack, a slice otherwise)."""
    g, r = len(seg.group), seg.reps
    common = {k: v for k, v in layers.items() if k not in MLP_KEY.values()}
    common = jax.tree.map(lambda a: a[seg.start:seg.stop].reshape(r, g, *a.shape[1:]), common)
    kinds = cfg.layer_kinds()
    per_kind = {}
    for kind in KINDS:
        m = seg.group.count(kind)
        if m:
            first = kinds[:seg.start].count(kind)
            per_kind[kind] = jax.tree.map(lambda a, f=first, m=m: a[f:f + r * m].reshape(r, m, *a.shape[1:]),
                                          layers[MLP_KEY[kind]])
    return common, per_kind


def run_layers(layers: Any, cfg: MixtralConfig, x: jax.Array, cos, sin, info: MaskInfo,
               cache: dict[str, Any] | None) -> tuple[jax.Array, dict[str, Any] | None, jax.Array | None]:
    """Every layer, unrolled or scanned per segment; also the MoE layers' router logits
    stacked [moe_layers, b*t, E] (None without MoE layers)."""
    windows, kinds = cfg.layer_windows(), cfg.layer_kinds()
    fns = _layer_fns(cfg)
    start = cache["index"] if cache is not None else None
    logits: list[jax.Array] = []
    if not cfg.scan_layers:
        new_k, new_v = [], []
        for i, lp in enumerate(layers):
            kv = (cache["k"][i], cache["v"][i], None) if cache is not None else None
            x, kv, rl = fns[kinds[i]](lp, cfg, x, cos, sin, info, windows[i], kv, start)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
            if rl is not None:
                logits.append(rl)
        cache = None if cache is None else {**cache, "k": new_k, "v": new_v}
        return x, cache, (jnp.stack(logits) if logits else None)

    if len(set(windows)) != 1:
        raise ValueError("per-layer sliding windows are not supported by the MoE decoder")
    window = windows[0]
    kv = (cache["k"], cache["v"]) if cache is not None else None
    for seg in plan_segments(kinds):
        common, per_kind = _segment_xs(layers, cfg, seg)

        def body(carry, xs, seg=seg):
            y, kv = carry
            common, per_kind, rep = xs
            out = []
            counters = {k: 0 for k in KINDS}
            for j, kind in enumerate(seg.group):
                lp = jax.tree.map(lambda a: a[j], common)
                mp = jax.tree.map(lambda a, c=counters[kind]: a[c], per_kind[kind])
                counters[kind] += 1
                lp[MLP_KEY[kind]] = mp
                layer = seg.start + rep * len(seg.group) + j
                kv_in = None if kv is None else (kv[0], kv[1], layer)
                y, kv_out, rl = fns[kind](lp, cfg, y, cos, sin, info, window, kv_in, start)
                kv = None if kv_out is None else kv_out[:2]
                if rl is not None:
                    out.append(rl)
            return (y, kv), (jnp.stack(out) if out else None)

        reps = jnp.arange(seg.reps, dtype=jnp.int32)
        (x, kv), seg_logits = jax.lax.scan(body, (x, kv), (common, per_kind, reps))
        if seg_logits is not None:
            logits.append(seg_logits.reshape(-1, *seg_logits.shape[2:]))
    cache = None if cache is None else {**cache, "k": kv[0], "v": kv[1]}
    return x, cache, (jnp.concatenate(logits) if logits else None)


# ---------------------------------------------------------------- forward
def forward_hidden_with_router_logits(
    params: Params,
    cfg: MixtralConfig,
    input_ids: jax.Array | None,
    *,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    cache: dict[str, Any] | None = None,
    segment_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any] | None, jax.Array | None]:
    """Final hidden states [b, t, d], the updated cache and router logits [moe_layers, b*t, E]."""
    if inputs_embeds is None:
        x = embed(params["embed_tokens"]["embedding"], input_ids, cfg.compute_dtype)
    else:
        x = inputs_embeds.astype(cfg.compute_dtype)
    ids_like = x[..., 0].astype(jnp.int32)
    x = constrain(x, ("batch", "seq", "act_embed"))
    if position_ids is None:
        position_ids = default_position_ids(ids_like, cache)
    cos, sin = rope_cos_sin(cfg.rope, position_ids, cfg.compute_dtype)
    info, cache = mask_info(ids_like, attention_mask, segment_ids, cache)
    x, cache, router_logits = run_layers(params["layers"], cfg, x, cos, sin, info, cache)
    if cache is not None:
        cache = {**cache, "index": cache["index"] + x.shape[1]}
    return rms_norm(params["norm"]["scale"], x, cfg.rms_norm_eps), cache, router_logits


def forward_hidden(params: Params, cfg: MixtralConfig, input_ids: jax.Array | None,
                   **kwargs: Any) -> tuple[jax.Array, dict[str, Any] | None]:
    """Final hidden states [b, t, d] and the updated cache."""
    h, cache, _ = forward_hidden_with_router_logits(params, cfg, input_ids, **kwargs)
    return h, cache


def forward_with_router_logits(
    params: Params, cfg: MixtralConfig, input_ids: jax.Array | None, *, logits_to_keep: int = 0, **kwargs: Any
) -> tuple[jax.Array, dict[str, Any] | None, jax.Array | None]:
    """Logits [b, t, vocab] (fp32), the updated cache and the router logits (for the aux loss)."""
    h, cache, router_logits = forward_hidden_with_router_logits(params, cfg, input_ids, **kwargs)
    if logits_to_keep:
        h = h[:, -logits_to_keep:]
    return unembed(h, params, cfg.tie_word_embeddings).astype(jnp.float32), cache, router_logits


def forward(params: Params, cfg: MixtralConfig, input_ids: jax.Array | None, *, logits_to_keep: int = 0,
            **kwargs: Any) -> tuple[jax.Array, dict[str, Any] | None]:
    """Logits [b, t, vocab] (fp32) and the updated cache; the same keywords as Llama's forward."""
    logits, cache, _ = forward_with_router_logits(params, cfg, input_ids, logits_to_keep=logits_to_keep, **kwargs)
    return logits, cache


__all__ = ["forward", "forward_hidden", "forward_with_router_logits", "forward_hidden_with_router_logits", "init",
           "init_cache", "param_axes", "param_specs", "layer_ids", "stack_layers", "unstack_layers"]
