"""Decode attention (flash-decoding) over a contiguous or a paged KV cache.

Why it looks like this:

* At decode time there are only a handful of query rows per sequence, so a
  grid over query blocks would leave the GPU idle. Instead the grid is
  ``(batch, kv_head, split)``: the KV length is cut into ``num_splits``
  pieces processed in parallel, each producing a normalised partial output and
  its log-sum-exp; a tiny jnp step then merges the splits (weights
  ``exp(lse_s - max lse)``).
* All ``group = q_heads // kv_heads`` query heads that share a kv head, times
  the ``n_q_tokens`` queries, are stacked into the rows of one tile, so K/V
  are read once per kv head (GQA/MQA without repeats) and the tile is tall
  enough for a tensor-core matmul.
* Each split only walks the key blocks that hold valid entries
  (``lengths``) and, with a sliding window, only the window; the rest of a
  preallocated cache is never read.
* The paged variant is the same body with a different "load block j"
  function: block ``j`` of a split is page ``block_tables[b, j]``.
* Masks are per-row visible key intervals ``[lo, hi]`` (from
  :func:`kernels.reference.visible_bounds`), so causal masks and sliding
  windows, static or traced, cost two compares. With explicit ``kv_positions``
  (a static cache with left padding: negative = empty slot) each key block's
  positions are read too (4 bytes per key) and blocks no row can see are
  skipped before their K/V are loaded.

Backends: "triton" (and ``interpret=True`` on CPU) run the kernel; "xla" (and
"mosaic_tpu", for now) use the jnp reference, whose ``[n_q_tokens, kv_len]``
score matrix is small anyway.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import reference as ref
from kernels.block_sizes import check_min_block, decode_block_k, decode_num_splits
from kernels.flash_attention import _dot_nn, _dot_nt, _skip_unless, resolve_backend, tile_visible

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    n_q_tokens: int
    rows: int            # padded group * n_q_tokens
    block_k: int         # keys per inner step (= page_size when paged)
    blocks_per_split: int
    softcap: float | None
    scale: float
    interpret: bool
    paged: bool
    explicit: bool       # key positions read from a [b, 1, kv_len] input (else the slot index)


def choose_num_splits(batch: int, kv_heads: int, kv_len: int, block_k: int,
                      target_programs: int = 256) -> int:
    """Enough splits to fill ~2 waves on a 132-SM GPU, but at least 4 key blocks per split."""
    want = -(-target_programs // max(batch * kv_heads, 1))
    most = max(1, kv_len // (4 * block_k))
    return int(max(1, min(want, most)))


def _padded_rows(rows: int, interpret: bool) -> int:
    """Triton's tl.dot wants >= 16 power-of-two rows; interpret mode takes any."""
    return rows if interpret else max(16, pl.next_power_of_2(rows))


def _padded_head_dim(head_dim: int, interpret: bool) -> int:
    return head_dim if interpret else max(16, pl.next_power_of_2(head_dim))


# --------------------------------------------------------------------------- kernel

def _decode_body(q_ref, bounds_ref, load_kv, o_ref, lse_ref, *, cfg: DecodeConfig,
                 split_start):
    """Online softmax of one (batch, kv head, split) over the split's visible key blocks."""
    bk = cfg.block_k
    split_len = cfg.blocks_per_split * bk
    q = q_ref[...]
    lo_row, hi_row = bounds_ref[:, 0:1], bounds_ref[:, 1:2]      # [rows, 1]; pad rows lo > hi

    def update(carry, k, v, k_pos):
        acc, m, l = carry
        s = _dot_nt(q, k) * cfg.scale
        if cfg.softcap is not None:
            s = cfg.softcap * jnp.tanh(s / cfg.softcap)
        mask = jnp.logical_and(k_pos >= lo_row, k_pos <= hi_row)
        s = jnp.where(mask, s, ref.MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
        corr = jnp.exp(m - m_new)
        l = l * corr + jnp.sum(p, axis=1, keepdims=True)
        acc = acc * corr + _dot_nn(p.astype(v.dtype), v)
        return acc, m_new, l

    def body(j, carry):
        if not cfg.explicit:
            k, v, k_start = load_kv(j)
            k_pos = k_start + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
            return update(carry, k, v, k_pos)
        k_pos = load_kv(j, positions_only=True)

        def visible(c):
            k, v, _ = load_kv(j)
            return update(c, k, v, k_pos)

        return _skip_unless(tile_visible((lo_row, hi_row), k_pos), visible, carry)

    if cfg.explicit:
        lo, hi = 0, cfg.blocks_per_split
    else:  # slot == position: walk only the blocks between the rows' lowest lo and highest hi
        lo_pos, hi_pos = jnp.min(lo_row), jnp.max(hi_row) + 1
        lo = lax.div(jnp.clip(lo_pos - split_start, 0, split_len), bk)
        hi = lax.div(jnp.clip(hi_pos - split_start, 0, split_len) + bk - 1, bk)
    rows, d = q.shape
    init = (jnp.zeros((rows, d), jnp.float32), jnp.full((rows, 1), ref.MASK_VALUE, jnp.float32),
            jnp.zeros((rows, 1), jnp.float32))
    acc, m, l = lax.fori_loop(lo, hi, body, init)
    empty = l == 0.0
    safe_l = jnp.where(empty, 1.0, l)
    o_ref[...] = acc / safe_l
    lse_ref[...] = jnp.where(empty, ref.MASK_VALUE, m + jnp.log(safe_l))


def _contiguous_kernel(q_ref, bounds_ref, k_ref, v_ref, *rest, cfg: DecodeConfig):
    kp_ref, (o_ref, lse_ref) = (rest[0], rest[1:]) if cfg.explicit else (None, rest)
    bk = cfg.block_k
    split_start = pl.program_id(2) * (cfg.blocks_per_split * bk)

    def load_kv(j, positions_only=False):
        start = pl.multiple_of(j * bk, bk)
        if positions_only:
            return kp_ref[:, pl.ds(start, bk)]
        return (k_ref[pl.ds(start, bk), :], v_ref[pl.ds(start, bk), :], split_start + start)

    _decode_body(q_ref, bounds_ref, load_kv, o_ref, lse_ref, cfg=cfg, split_start=split_start)


def _paged_kernel(q_ref, bounds_ref, bt_ref, k_ref, v_ref, o_ref, lse_ref, *, cfg: DecodeConfig):
    bk = cfg.block_k
    head = pl.program_id(1)
    split_start = pl.program_id(2) * (cfg.blocks_per_split * bk)

    def load_kv(j):
        page = bt_ref[j]
        return k_ref[page, :, head, :], v_ref[page, :, head, :], split_start + j * bk

    _decode_body(q_ref, bounds_ref, load_kv, o_ref, lse_ref, cfg=cfg, split_start=split_start)


# --------------------------------------------------------------------------- glue

def _query_rows(q: Array, kv_heads: int, rows: int, head_dim: int) -> Array:
    """[b, t, hq, d] -> [b, kv_heads, rows, d]; row r = token (r // group), head (r % group)."""
    b, t, hq, d = q.shape
    g = hq // kv_heads
    x = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, t * g, d)
    return jnp.pad(x, ((0, 0), (0, 0), (0, rows - t * g), (0, head_dim - d)))


def _row_bounds(q_pos: Array, group: int, rows: int, *, causal: bool, sliding_window) -> Array:
    """[b, rows, 2] inclusive visible key interval of each row; padding rows see nothing."""
    lo, hi = ref.visible_bounds(q_pos, causal=causal, sliding_window=sliding_window)   # [b, t]
    bounds = jnp.repeat(jnp.stack([lo, hi], -1), group, axis=1)                        # [b, t*g, 2]
    pad = rows - bounds.shape[1]
    empty = jnp.broadcast_to(jnp.array([ref.POS_MAX, -1], jnp.int32), (bounds.shape[0], pad, 2))
    return jnp.concatenate([bounds, empty], axis=1) if pad else bounds


def combine_splits(o: Array, lse: Array) -> Array:
    """Merge per-split softmax results: o [..., splits, rows, d], lse [..., splits, rows, 1]."""
    m = jnp.max(lse, axis=-3, keepdims=True)
    w = jnp.exp(lse - m)
    return jnp.sum(w * o, axis=-3) / jnp.sum(w, axis=-3)


def _unrows(o: Array, q_shape: tuple[int, ...], dtype) -> Array:
    b, t, hq, d = q_shape
    hk = o.shape[1]
    o = o[:, :, :t * (hq // hk), :d].reshape(b, hk, t, hq // hk, d)
    return o.transpose(0, 2, 1, 3, 4).reshape(b, t, hq, d).astype(dtype)


def _check_compiled_block(name: str, value: int) -> None:
    """Triton tiles are power-of-two shaped and tl.dot needs >= 16 keys (a smaller block lowers
    but fails in Triton's compiler, so say it here)."""
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two for the compiled (Triton) kernel, got {value}")
    check_min_block("triton", **{name: value})


def _check(q: Array, kv_heads: int, head_dim: int) -> None:
    if q.ndim != 4 or q.shape[3] != head_dim or q.shape[2] % kv_heads:
        raise ValueError(f"q {q.shape} incompatible with kv_heads={kv_heads}, head_dim={head_dim}")


def _call(kernel, grid, in_specs, args, out_rows, d, cfg: DecodeConfig, batch, kv_heads, splits):
    from jax.experimental.pallas import triton as plgpu
    out_specs = [pl.BlockSpec((None, None, None, out_rows, d), lambda b, h, s: (b, h, s, 0, 0)),
                 pl.BlockSpec((None, None, None, out_rows, 1), lambda b, h, s: (b, h, s, 0, 0))]
    out_shape = [jax.ShapeDtypeStruct((batch, kv_heads, splits, out_rows, d), jnp.float32),
                 jax.ShapeDtypeStruct((batch, kv_heads, splits, out_rows, 1), jnp.float32)]
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg), grid=grid, in_specs=in_specs,
        out_specs=out_specs, out_shape=out_shape,
        compiler_params=None if cfg.interpret else plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=cfg.interpret, name="paged_decode_attention" if cfg.paged else "decode_attention",
    )(*args)


def decode_attention(q: Array, k: Array, v: Array, lengths: Array | None = None, *,
                     softcap: float | None = None, scale: float | None = None,
                     sliding_window=None, num_splits: int | None = None,
                     interpret: bool | None = None, backend: str | None = None,
                     block_k: int | None = None, q_positions: Array | None = None,
                     kv_positions: Array | None = None, causal: bool = True) -> Array:
    """Attention of a few new tokens against a contiguous KV cache (flash-decoding).

    Args:
      q: ``[batch, n_q_tokens, q_heads, head_dim]`` (n_q_tokens small, e.g. 1).
      k, v: ``[batch, kv_len, kv_heads, head_dim]``, the preallocated cache.
      lengths: ``[batch]`` int32, valid cache entries per sequence *including*
        the query tokens, which are the last ``n_q_tokens`` of them (causal
        among themselves).
      softcap, scale, sliding_window: as in :func:`kernels.flash_attention`
        (the window may be a traced scalar, ``<= 0`` meaning none).
      num_splits: KV splits processed in parallel (default: heuristic).
      block_k: keys per inner step (default: :mod:`kernels.block_sizes`).
      q_positions, kv_positions: instead of ``lengths``, explicit positions
        ``[batch, n_q_tokens]`` and ``[batch, kv_len]`` (negative = empty slot),
        e.g. a static cache holding a left-padded batch. ``causal`` applies then.

    Returns ``[batch, n_q_tokens, q_heads, head_dim]`` in ``q.dtype``. Rows that
    see no key (e.g. ``lengths == 0``) are zeros. Forward only (no custom VJP).
    """

    b, t, hq, d = q.shape
    _, kv_len, hk, _ = k.shape
    _check(q, hk, k.shape[3])
    if (lengths is None) == (q_positions is None):
        raise ValueError("decode_attention needs exactly one of lengths or q_positions")
    backend, interpret = resolve_backend(backend, interpret)
    if backend != "triton":
        return ref.decode_attention_reference(q, k, v, lengths, softcap=softcap, scale=scale,
                                              sliding_window=sliding_window, causal=causal,
                                              q_positions=q_positions, kv_positions=kv_positions)
    explicit = kv_positions is not None
    bk = block_k or decode_block_k(d, interpret)
    if block_k is not None and not interpret:
        _check_compiled_block("block_k", block_k)
    splits = num_splits or decode_num_splits() or choose_num_splits(b, hk, kv_len, bk)
    blocks_per_split = -(-kv_len // (splits * bk))
    padded_len = splits * blocks_per_split * bk
    rows, dp = _padded_rows(t * (hq // hk), interpret), _padded_head_dim(d, interpret)
    cfg = DecodeConfig(n_q_tokens=t, rows=rows, block_k=bk, blocks_per_split=blocks_per_split,
                       softcap=float(softcap) if softcap else None,
                       scale=ref.default_scale(d, scale), interpret=interpret, paged=False,
                       explicit=explicit)
    pad = ((0, 0), (0, padded_len - kv_len), (0, 0), (0, dp - d))
    kp, vp = (jnp.pad(x, pad) if any(p[1] for p in pad) else x for x in (k, v))
    split_len = blocks_per_split * bk
    if q_positions is None:
        q_pos, causal = ref.decode_query_positions(lengths, t), True
    else:
        q_pos = jnp.broadcast_to(jnp.asarray(q_positions, jnp.int32), (b, t))
    in_specs = [pl.BlockSpec((None, None, rows, dp), lambda b_, h, s: (b_, h, 0, 0)),
                pl.BlockSpec((None, rows, 2), lambda b_, h, s: (b_, 0, 0)),
                pl.BlockSpec((None, split_len, None, dp), lambda b_, h, s: (b_, s, h, 0)),
                pl.BlockSpec((None, split_len, None, dp), lambda b_, h, s: (b_, s, h, 0))]
    args = [_query_rows(q, hk, rows, dp),
            _row_bounds(q_pos, hq // hk, rows, causal=causal, sliding_window=sliding_window), kp, vp]
    if explicit:
        kv_pos = jnp.broadcast_to(jnp.asarray(kv_positions, jnp.int32), (b, kv_len))
        kv_pos = jnp.pad(kv_pos, ((0, 0), (0, padded_len - kv_len)), constant_values=-1)
        in_specs.append(pl.BlockSpec((None, 1, split_len), lambda b_, h, s: (b_, 0, s)))
        args.append(kv_pos[:, None, :])
    o, lse = _call(_contiguous_kernel, (b, hk, splits), in_specs, args, rows, dp, cfg, b, hk, splits)
    return _unrows(combine_splits(o, lse), q.shape, q.dtype)


def paged_decode_attention(q: Array, k_pages: Array, v_pages: Array, block_tables: Array,
                           lengths: Array, *, softcap: float | None = None,
                           scale: float | None = None, sliding_window=None,
                           num_splits: int | None = None, interpret: bool | None = None,
                           backend: str | None = None) -> Array:
    """Decode attention over a paged KV cache (vLLM-style block tables).

    Args:
      q: ``[batch, n_q_tokens, q_heads, head_dim]``.
      k_pages, v_pages: ``[num_pages, page_size, kv_heads, head_dim]``; page_size
        is the kernel's key block (use >= 16, a power of two, on GPU).
      block_tables: ``[batch, max_pages_per_seq]`` int32; entry ``j`` holds
        positions ``[j*page_size, (j+1)*page_size)``. Entries past ``lengths``
        are never used for output (they are clipped into range before use).
      lengths: ``[batch]`` int32 valid entries, query tokens last (as in
        :func:`decode_attention`).

    Returns ``[batch, n_q_tokens, q_heads, head_dim]`` in ``q.dtype``.
    """
    b, t, hq, d = q.shape
    num_pages, page_size, hk, _ = k_pages.shape
    _check(q, hk, k_pages.shape[3])
    backend, interpret = resolve_backend(backend, interpret)
    if backend != "triton":
        return ref.paged_decode_attention_reference(q, k_pages, v_pages, block_tables, lengths,
                                                    softcap=softcap, scale=scale,
                                                    sliding_window=sliding_window)
    if not interpret:
        _check_compiled_block("page_size", page_size)
    max_pages = block_tables.shape[1]
    splits = num_splits or decode_num_splits() or choose_num_splits(b, hk, max_pages * page_size,
                                                                    page_size)
    pages_per_split = -(-max_pages // splits)
    rows, dp = _padded_rows(t * (hq // hk), interpret), _padded_head_dim(d, interpret)
    cfg = DecodeConfig(n_q_tokens=t, rows=rows, block_k=page_size, blocks_per_split=pages_per_split,
                       softcap=float(softcap) if softcap else None,
                       scale=ref.default_scale(d, scale), interpret=interpret, paged=True,
                       explicit=False)
    tables = jnp.clip(block_tables.astype(jnp.int32), 0, num_pages - 1)
    tables = jnp.pad(tables, ((0, 0), (0, splits * pages_per_split - max_pages)))
    if dp != d:
        pad = ((0, 0), (0, 0), (0, 0), (0, dp - d))
        k_pages, v_pages = jnp.pad(k_pages, pad), jnp.pad(v_pages, pad)
    whole = pl.BlockSpec(k_pages.shape, lambda b_, h, s: (0, 0, 0, 0))
    in_specs = [pl.BlockSpec((None, None, rows, dp), lambda b_, h, s: (b_, h, 0, 0)),
                pl.BlockSpec((None, rows, 2), lambda b_, h, s: (b_, 0, 0)),
                pl.BlockSpec((None, pages_per_split), lambda b_, h, s: (b_, s)),
                whole, whole]
    q_pos = ref.decode_query_positions(lengths, t)
    args = (_query_rows(q, hk, rows, dp),
            _row_bounds(q_pos, hq // hk, rows, causal=True, sliding_window=sliding_window),
            tables, k_pages, v_pages)
    o, lse = _call(_paged_kernel, (b, hk, splits), in_specs, args, rows, dp, cfg, b, hk, splits)
    return _unrows(combine_splits(o, lse), q.shape, q.dtype)
