"""Pure-jnp attention references.

These materialise the full ``[q_len, kv_len]`` score matrix, so they are only
meant for (a) the test oracle for the Pallas kernels and (b) the portable XLA
fallback (``backend="xla"``). They define the *semantics* every kernel must
match, so the masking rules live here once, in small functions the kernels'
docstrings point back to:

* positions: query ``i`` of ``q_len`` sits at position ``kv_len - q_len + i``
  (bottom-right alignment, which is what a prefill continuing a cache needs);
* causal: key ``j`` is visible when ``j <= q_pos``;
* sliding window ``w``: ``j > q_pos - w`` (with causal: the ``w`` most recent
  keys including the query's own); without causal the window is symmetric,
  ``|j - q_pos| < w``;
* segment ids: visible only when ``q_segment == kv_segment``;
* softcap ``c``: ``s = c * tanh(s / c)`` after scaling, before masking
  (``None`` or ``0`` disables it);
* a query row that sees no key outputs zeros (not NaN) and gets zero grads.

Explicit positions (what a model with a KV cache needs) replace the implicit
ones: ``q_positions [batch, q_len]`` and ``kv_positions [batch, kv_len]``, where
a negative key position marks an empty or padding slot. Each query row then
sees the keys whose position lies in an inclusive interval ``[lo, hi]``
(:func:`visible_bounds`), which is how the kernels take causal masks and
sliding windows, static or traced, without any ``[q_len, kv_len]`` array.

All arithmetic is float32; the result is cast back to ``q.dtype``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
SegmentIds = Array | tuple[Array, Array] | None

# Finite "minus infinity": keeps max() finite on fully masked rows.
MASK_VALUE = -1e30


def default_scale(head_dim: int, scale: float | None) -> float:
    """Softmax scale; ``1/sqrt(head_dim)`` unless given (some models fold it in)."""
    return float(head_dim) ** -0.5 if scale is None else float(scale)


def split_segment_ids(segment_ids: SegmentIds, q_len: int, kv_len: int) -> tuple[Array, Array] | None:
    """Normalise ``segment_ids`` to a ``(q_segment_ids, kv_segment_ids)`` pair.

    A single ``[batch, len]`` array is only meaningful for self-attention
    (``q_len == kv_len``); a tuple lets a prefill chunk attend to a longer cache.
    """
    if segment_ids is None:
        return None
    if isinstance(segment_ids, (tuple, list)):
        q_seg, kv_seg = segment_ids
    else:
        if q_len != kv_len:
            raise ValueError(
                "a single segment_ids array needs q_len == kv_len; pass "
                f"(q_segment_ids, kv_segment_ids) instead (q_len={q_len}, kv_len={kv_len})")
        q_seg = kv_seg = segment_ids
    q_seg, kv_seg = jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32)
    if q_seg.shape[-1] != q_len or kv_seg.shape[-1] != kv_len:
        raise ValueError(f"segment id shapes {q_seg.shape}, {kv_seg.shape} do not match "
                         f"q_len={q_len}, kv_len={kv_len}")
    return q_seg, kv_seg


def position_mask(q_pos: Array, kv_pos: Array, *, causal: bool,
                  sliding_window: int | None) -> Array | None:
    """Visibility from positions alone (broadcasting ``q_pos[..., :, None]`` style).

    Shared by the references and the kernels so the rules cannot drift apart.
    Returns ``None`` when everything is visible.
    """
    mask = None

    def _and(a, b):
        return b if a is None else jnp.logical_and(a, b)

    if causal:
        mask = _and(mask, kv_pos <= q_pos)
    if sliding_window is not None:
        mask = _and(mask, kv_pos > q_pos - sliding_window)
        if not causal:
            mask = _and(mask, kv_pos < q_pos + sliding_window)
    return mask


# Positions are token indices >= 0; these bounds stay far from int32 overflow.
POS_MAX = 2**30


def visible_bounds(q_pos: Array, *, causal: bool, sliding_window) -> tuple[Array, Array]:
    """Inclusive ``[lo, hi]`` key positions each query may see (same rules as
    :func:`position_mask`). ``sliding_window`` may be a traced scalar, where ``<= 0``
    means "no window" (per-layer windows under ``lax.scan``). ``lo >= 0`` always, so
    negative (empty) key positions are never visible."""
    q_pos = q_pos.astype(jnp.int32)
    hi = q_pos if causal else jnp.full_like(q_pos, POS_MAX)
    lo = jnp.zeros_like(q_pos)
    if sliding_window is not None:
        w = jnp.asarray(sliding_window, jnp.int32)
        on = w > 0
        lo = jnp.where(on, q_pos - w + 1, lo)
        if not causal:
            hi = jnp.where(on, q_pos + w - 1, hi)
    return jnp.maximum(lo, 0), hi


def masked_attention(q: Array, k: Array, v: Array, mask: Array | None, *,
                     scale: float, softcap: float | None) -> Array:
    """Softmax attention with an explicit boolean mask ``[batch, q_len, kv_len]``.

    GQA/MQA is handled by grouping the query heads (``q_heads`` must be a
    multiple of ``kv_heads``). Rows with nothing visible return zeros.
    """
    b, tq, hq, d = q.shape
    hk = k.shape[2]
    if hq % hk:
        raise ValueError(f"q_heads={hq} is not a multiple of kv_heads={hk}")
    g = hq // hk
    qg = q.astype(jnp.float32).reshape(b, tq, hk, g, d)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST) * scale
    if softcap:                                   # None or 0 both mean "off" (HF configs use both)
        s = softcap * jnp.tanh(s / softcap)
    if mask is not None:
        m4 = mask[:, None, None, :, :]
        s = jnp.where(m4, s, MASK_VALUE)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    if mask is not None:
        p = jnp.where(m4, p, 0.0)
    l = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(l == 0.0, 1.0, l)
    o = jnp.einsum("bhgqk,bkhd->bqhgd", p, v.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
    return o.reshape(b, tq, hq, v.shape[-1]).astype(q.dtype)


def explicit_mask(q_pos: Array, kv_pos: Array, *, causal: bool, sliding_window) -> Array:
    """``[batch, q_len, kv_len]`` visibility from explicit positions (negative key = empty)."""
    lo, hi = visible_bounds(q_pos, causal=causal, sliding_window=sliding_window)
    kv = kv_pos.astype(jnp.int32)[:, None, :]
    return (kv >= lo[:, :, None]) & (kv <= hi[:, :, None])


def attention_reference(q: Array, k: Array, v: Array, *, causal: bool = False,
                        segment_ids: SegmentIds = None, sliding_window=None,
                        softcap: float | None = None, scale: float | None = None,
                        q_positions: Array | None = None,
                        kv_positions: Array | None = None) -> Array:
    """Oracle for :func:`kernels.flash_attention` (same arguments, same layout).

    q ``[batch, q_len, q_heads, head_dim]``, k/v ``[batch, kv_len, kv_heads, head_dim]``.
    """
    tq, tk = q.shape[1], k.shape[1]
    if q_positions is not None or kv_positions is not None or (
            sliding_window is not None and not isinstance(sliding_window, int)):
        q_pos, kv_pos = default_positions(q.shape[0], tq, tk, q_positions, kv_positions)
        mask = explicit_mask(q_pos, kv_pos, causal=causal, sliding_window=sliding_window)
    else:
        q_pos = (tk - tq + jnp.arange(tq, dtype=jnp.int32))[:, None]
        kv_pos = jnp.arange(tk, dtype=jnp.int32)[None, :]
        mask = position_mask(q_pos, kv_pos, causal=causal, sliding_window=sliding_window)
        mask = None if mask is None else jnp.broadcast_to(mask[None], (q.shape[0], tq, tk))
    segs = split_segment_ids(segment_ids, tq, tk)
    if segs is not None:
        seg_mask = segs[0][:, :, None] == segs[1][:, None, :]
        mask = seg_mask if mask is None else jnp.logical_and(mask, seg_mask)
    return masked_attention(q, k, v, mask, scale=default_scale(q.shape[-1], scale),
                            softcap=softcap)


def default_positions(batch: int, q_len: int, kv_len: int, q_positions: Array | None,
                      kv_positions: Array | None) -> tuple[Array, Array]:
    """Fill in whichever of the explicit positions is missing with the implicit ones
    (bottom-right aligned), broadcast to ``[batch, len]`` int32."""
    if q_positions is None:
        q_positions = kv_len - q_len + jnp.arange(q_len, dtype=jnp.int32)
    if kv_positions is None:
        kv_positions = jnp.arange(kv_len, dtype=jnp.int32)
    q_pos = jnp.broadcast_to(jnp.asarray(q_positions, jnp.int32), (batch, q_len))
    kv_pos = jnp.broadcast_to(jnp.asarray(kv_positions, jnp.int32), (batch, kv_len))
    return q_pos, kv_pos


def decode_query_positions(lengths: Array, n_q_tokens: int) -> Array:
    """Positions ``[batch, n_q_tokens]`` of the query tokens: the last ones of each sequence."""
    return lengths.astype(jnp.int32)[:, None] - n_q_tokens + jnp.arange(n_q_tokens, dtype=jnp.int32)


def decode_attention_reference(q: Array, k: Array, v: Array, lengths: Array | None = None, *,
                               softcap: float | None = None, scale: float | None = None,
                               sliding_window=None, q_positions: Array | None = None,
                               kv_positions: Array | None = None, causal: bool = True) -> Array:
    """Oracle for :func:`kernels.decode_attention`.

    ``lengths[b]`` cache entries are valid; the ``n_q_tokens`` queries are the
    last of them and causal among themselves. Or, instead of ``lengths``, explicit
    ``q_positions [batch, n_q_tokens]`` and ``kv_positions [batch, kv_len]``
    (negative = empty slot). The score matrix here is only ``[n_q_tokens, kv_len]``
    per head, so this is also a reasonable XLA fallback.
    """
    if q_positions is not None:
        kv_pos = kv_positions if kv_positions is not None else jnp.arange(k.shape[1], dtype=jnp.int32)
        kv_pos = jnp.broadcast_to(jnp.asarray(kv_pos, jnp.int32), (q.shape[0], k.shape[1]))
        mask = explicit_mask(jnp.asarray(q_positions, jnp.int32), kv_pos, causal=causal,
                             sliding_window=sliding_window)
    else:
        if lengths is None:
            raise ValueError("decode attention needs lengths or q_positions")
        q_pos = decode_query_positions(lengths, q.shape[1])[:, :, None]
        kv_pos = jnp.arange(k.shape[1], dtype=jnp.int32)[None, None, :]
        mask = position_mask(q_pos, kv_pos, causal=True, sliding_window=sliding_window)
    return masked_attention(q, k, v, mask, scale=default_scale(q.shape[-1], scale),
                            softcap=softcap)


def gather_pages(pages: Array, block_tables: Array) -> Array:
    """``[num_pages, page_size, h, d]`` + ``[batch, max_pages]`` -> ``[batch, max_pages*page_size, h, d]``."""
    b, n = block_tables.shape
    _, ps, h, d = pages.shape
    return pages[block_tables].reshape(b, n * ps, h, d)


def paged_decode_attention_reference(q: Array, k_pages: Array, v_pages: Array,
                                     block_tables: Array, lengths: Array, *,
                                     softcap: float | None = None, scale: float | None = None,
                                     sliding_window: int | None = None) -> Array:
    """Oracle for :func:`kernels.paged_decode_attention`: gather pages, then decode."""
    k = gather_pages(k_pages, block_tables)
    v = gather_pages(v_pages, block_tables)
    return decode_attention_reference(q, k, v, lengths, softcap=softcap, scale=scale,
                                      sliding_window=sliding_window)
