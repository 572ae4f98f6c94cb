"""Rotary position embeddings with every HF ``rope_type``.

Static types (default, linear, yarn, llama3) fold into one inverse-frequency
vector computed once on the host. ``dynamic`` and ``longrope`` depend on the
longest position in the batch, exactly as Transformers' ``dynamic_rope_update``
does, so they are computed from the traced positions (still inside jit).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


@dataclasses.dataclass(frozen=True)
class Rope:
    """Everything needed to turn positions into cos/sin; hashable (a static arg)."""

    rope_type: str
    theta: float
    dim: int  # rotary dims (head_dim * partial_rotary_factor)
    max_position_embeddings: int
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)


def make_rope(
    theta: float,
    head_dim: int,
    max_position_embeddings: int,
    scaling: Mapping[str, Any] | None = None,
    *,
    partial_rotary_factor: float = 1.0,
    original_max_position_embeddings: int | None = None,
) -> Rope:
    """Normalise an HF rope_scaling / rope_parameters dict into a :class:`Rope`."""
    scaling = dict(scaling or {})
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)
    partial_rotary_factor = scaling.pop("partial_rotary_factor", partial_rotary_factor)
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type '{rope_type}'; supported: {ROPE_TYPES}")
    if rope_type in ("yarn", "llama3", "longrope"):
        scaling["original_max_position_embeddings"] = (
            original_max_position_embeddings
            or scaling.get("original_max_position_embeddings")
            or max_position_embeddings
        )
    params = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in scaling.items()))
    return Rope(rope_type, float(theta), int(head_dim * partial_rotary_factor), int(max_position_embeddings), params)


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))


def _yarn(rope: Rope) -> tuple[np.ndarray, float]:
    dim, base = rope.dim, rope.theta
    orig = rope.get("original_max_position_embeddings")
    factor = rope.get("factor") or rope.max_position_embeddings / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        m, m_all = rope.get("mscale"), rope.get("mscale_all_dim")
        attention_factor = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    beta_fast = rope.get("beta_fast") or 32
    beta_slow = rope.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (np.arange(0, dim, 2).astype(np.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # share of the extrapolated (unscaled) frequency
    return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32), float(attention_factor)


def _llama3(rope: Rope) -> np.ndarray:
    inv = _base_inv_freq(rope.theta, rope.dim)
    factor, low_f, high_f = rope.get("factor"), rope.get("low_freq_factor"), rope.get("high_freq_factor")
    old_len = rope.get("original_max_position_embeddings")
    low_wavelen, high_wavelen = old_len / low_f, old_len / high_f
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low_f) / (high_f - low_f)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _longrope_attention_factor(rope: Rope) -> float:
    orig = rope.get("original_max_position_embeddings")
    factor = rope.get("factor") or rope.max_position_embeddings / orig
    if rope.get("attention_factor") is not None:
        return float(rope.get("attention_factor"))
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def inv_freq_and_scale(rope: Rope, positions: jax.Array) -> tuple[jax.Array, float]:
    """Inverse frequencies [dim/2] (possibly traced) and the cos/sin scaling factor."""
    if rope.rope_type == "default":
        return jnp.asarray(_base_inv_freq(rope.theta, rope.dim)), 1.0
    if rope.rope_type == "linear":
        return jnp.asarray(_base_inv_freq(rope.theta, rope.dim) / rope.get("factor")), 1.0
    if rope.rope_type == "yarn":
        inv, scale = _yarn(rope)
        return jnp.asarray(inv), scale
    if rope.rope_type == "llama3":
        return jnp.asarray(_llama3(rope)), 1.0
    seq_len = jnp.max(positions).astype(jnp.float32) + 1
    exponents = jnp.arange(0, rope.dim, 2, dtype=jnp.float32) / rope.dim
    if rope.rope_type == "dynamic":
        max_pos = float(rope.max_position_embeddings)
        seq_len = jnp.maximum(seq_len, max_pos)
        factor = rope.get("factor")
        base = rope.theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (rope.dim / (rope.dim - 2))
        return 1.0 / (base**exponents), 1.0
    # longrope: long factors once the sequence passes the pretraining length
    orig = rope.get("original_max_position_embeddings")
    short = jnp.asarray(rope.get("short_factor"), jnp.float32)
    long = jnp.asarray(rope.get("long_factor"), jnp.float32)
    ext = jnp.where(seq_len > orig, long, short)
    return 1.0 / (ext * rope.theta**exponents), _longrope_attention_factor(rope)


def rope_cos_sin(rope: Rope, positions: jax.Array, dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [batch, seq, dim] for integer positions [batch, seq]."""
    inv_freq, scale = inv_freq_and_scale(rope, positions)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq.astype(jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return (jnp.cos(emb) * scale).astype(dtype), (jnp.sin(emb) * scale).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [batch, seq, heads, head_dim]; only the first ``cos.shape[-1]`` dims when partial."""
    rot = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return jnp.concatenate([x_rot * cos + rotate_half(x_rot) * sin, x_pass], axis=-1)
