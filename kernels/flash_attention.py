"""Flash attention (online softmax) as one Pallas kernel body for GPU and TPU.

Why it looks like this:

* **One body, two layouts.** Every kernel body only sees 2-D tiles (``[rows,
  head_dim]`` of q/k/v, ``[rows, 1]`` of log-sum-exp) and loops over key (or
  query) blocks with ``lax.fori_loop`` on a full-length ref, carrying the
  accumulators in registers/values. That pattern lowers through Triton (the
  ref is a pointer) and through Mosaic TPU (the ref is a VMEM buffer), and runs
  under ``interpret=True`` on CPU. Only the BlockSpecs and compiler params
  differ: Triton reads the model's ``[batch, len, heads, head_dim]`` layout
  directly; Mosaic TPU wants ``heads`` out of the two minor (tiled) dims, so the
  wrapper transposes to ``[batch, heads, len, head_dim]`` first.
* **GQA without repeating K/V.** The kv BlockSpec maps query head ``h`` to kv
  head ``h // group``, so neither direction copies K/V. The dK/dV kernel runs per
  query head (computed transposed, keys on rows, so per-query statistics are
  lane-dense rows); with GQA each query head writes an fp32 partial and a jnp sum
  over the group gives dK/dV.
* **Backward recomputes.** The forward saves only ``o`` and the per-row
  log-sum-exp; the backward is two kernels (dK/dV per kv block, dQ per q block)
  that rebuild the probabilities tile by tile, so no ``[q_len, kv_len]`` array
  exists in either direction.
* **Ragged lengths** are padded by the wrapper to the block size and masked by
  position; **fully masked rows** produce zeros and zero gradients (``l == 0``
  is special-cased, never divided by).

The masking semantics are defined in :mod:`kernels.reference`.

Limits worth knowing:

* Per (batch, head) program the forward and dQ kernels address the whole K/V
  of that head (the dK/dV kernel: the whole Q/dO of that query head). On GPU
  that is just a pointer; on TPU it is a VMEM buffer (about 5 MiB per kernel at
  4096 tokens, head_dim 128, bf16; linear in length), so each TPU kernel asks
  for a VMEM limit sized from its blocks and past 64 MiB (roughly 32k tokens)
  raises a clear error: beyond that use a grid-pipelined kernel such as splash
  attention, or backend="xla".
* Blocks skipped outright: beyond the causal diagonal and outside the sliding
  window. Segment ids are only masked, never used to skip blocks. With only
  positional masks (causal, key padding) the tiles every row sees in full are
  also never masked; only the diagonal and padding tiles build a mask.
* fp32 inputs use full-precision (IEEE) dots; bf16/fp16 use the tensor-core
  path with fp32 accumulation. dQ/dK/dV come back in the input dtype.
* ``pallas_call`` is not auto-partitioned: under a sharded ``jit`` call it
  inside ``shard_map`` (batch/heads split freely; sequence is not split).
* Verified here: interpret mode on CPU (both layouts) and Triton / Mosaic
  *lowering* (``jax.export`` for cuda / tpu, tests/test_kernel_lowering.py). Not
  verified: XLA's Triton -> PTX compile and libtpu's Mosaic compile (layouts,
  the real VMEM use), correctness on a device and speed: they need a GPU/TPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import reference as ref
from kernels._compat import triton_compiler_params
from kernels.block_sizes import BLOCK_TABLE, choose_blocks  # noqa: F401 (re-exported)

Array = jax.Array

BACKENDS = ("triton", "mosaic_tpu", "xla")

# Block sizes live in kernels/block_sizes.py (a documented table plus process-wide overrides).
_BLOCK_TABLE = BLOCK_TABLE

# --------------------------------------------------------------------------- configuration

@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Everything static about one call; hashable so it can be a nondiff argument."""
    causal: bool
    sliding_window: int | None
    softcap: float | None
    scale: float
    q_len: int           # unpadded lengths
    kv_len: int
    q_len_padded: int
    kv_len_padded: int
    block_q: int
    block_k: int
    block_q_bwd: int
    block_k_bwd: int
    group: int           # q_heads // kv_heads
    has_segments: bool
    explicit: bool       # per-row visible key intervals + per-key positions (see reference.py)
    heads_major: bool    # kernel layout [b, h, len, d] (TPU) instead of [b, len, h, d]
    backend: str
    interpret: bool

    @property
    def offset(self) -> int:
        """Position of query row 0: bottom-right aligned causal mask."""
        return self.kv_len - self.q_len


def resolve_backend(backend: str | None, interpret: bool | None) -> tuple[str, bool]:
    """Pick the lowering from the default device; CPU means 'interpret the Triton variant'."""
    platform = jax.default_backend()
    if backend is None:
        backend = {"tpu": "mosaic_tpu"}.get(platform, "triton")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if interpret is None:
        interpret = platform == "cpu"
    return backend, bool(interpret)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _padded_head_dim(backend: str, interpret: bool, head_dim: int) -> int:
    """Triton tiles must be powers of two and >= 16 wide; other paths take head_dim as is."""
    if backend == "triton" and not interpret:
        return max(16, pl.next_power_of_2(head_dim))
    return head_dim


def _compiler_params(cfg: FlashConfig, head_dim: int, ndims: int, vmem_bytes: int = 0):
    if cfg.interpret:
        return None
    if cfg.backend == "triton":
        return triton_compiler_params(num_warps=4 if head_dim <= 64 else 8, num_stages=2)
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * ndims,
                                vmem_limit_bytes=tpu_vmem_limit(vmem_bytes))


# TPU VMEM: what a Mosaic kernel gets unless it asks (v5e: 16 MiB scoped, v6e: 32 MiB), and the
# most we ask for (v7x has 64 MiB of VMEM per core, the least of current TPUs).
TPU_DEFAULT_VMEM = 16 * 2**20
TPU_MAX_VMEM = 64 * 2**20


def tpu_block_bytes(block_shape, dtype) -> int:
    """VMEM of one block: the two minor dims padded to (8 * packing, 128) tiles."""
    dims = [1 if n is None else int(n) for n in block_shape]
    dims = [1] * (2 - len(dims)) + dims
    itemsize = jnp.dtype(dtype).itemsize
    sublanes = 8 * max(1, 4 // itemsize)
    rows, lanes = _round_up(dims[-2], sublanes), _round_up(dims[-1], 128)
    return math.prod(dims[:-2]) * rows * lanes * itemsize


def tpu_vmem_estimate(specs, arrays) -> int:
    """Bytes of VMEM the pipelined blocks of a pallas_call take: every block double-buffered.
    Values inside the kernel (score tiles, accumulators) come on top, hence the margin below."""
    return sum(2 * tpu_block_bytes(spec.block_shape, x.dtype) for spec, x in zip(specs, arrays))


def tpu_vmem_limit(estimate: int) -> int | None:
    """None (the default) when the blocks fit the smallest default with room to spare; else
    the estimate plus 50% and 4 MiB for in-kernel values, or a clear error past what any
    current TPU has (these kernels keep one head's whole K/V, or Q/dO, in VMEM)."""
    if estimate <= TPU_DEFAULT_VMEM // 2:
        return None
    limit = _round_up(estimate + estimate // 2 + 4 * 2**20, 2**20)
    if limit > TPU_MAX_VMEM:
        raise ValueError(
            f"flash_attention on TPU would need ~{limit / 2**20:.0f} MiB of VMEM (> {TPU_MAX_VMEM >> 20} MiB): "
            "this kernel holds one head's whole K/V (and Q/dO in the backward) in VMEM, so the "
            "sequence is too long for it; use backend='xla', shorter sequences or smaller head_dim")
    return limit


def _pallas(kernel, cfg: FlashConfig, *, grid, in_specs, out_specs, out_shape, name: str, head_dim: int):
    """pallas_call with the backend's compiler params (TPU: a VMEM limit from the block sizes)."""
    def call(*args):
        vmem = 0
        if cfg.backend == "mosaic_tpu" and not cfg.interpret:
            outs = out_shape if isinstance(out_shape, (list, tuple)) else [out_shape]
            o_specs = out_specs if isinstance(out_specs, (list, tuple)) else [out_specs]
            vmem = tpu_vmem_estimate([*in_specs, *o_specs], [*args, *outs])
        return pl.pallas_call(
            functools.partial(kernel, cfg=cfg), grid=grid, in_specs=in_specs, out_specs=out_specs,
            out_shape=out_shape, compiler_params=_compiler_params(cfg, head_dim, len(grid), vmem),
            interpret=cfg.interpret, name=name)(*args)
    return call


# --------------------------------------------------------------------------- shared tile math

def _dot_nt(a: Array, b: Array) -> Array:
    """a @ b.T in fp32 (contract the head dim of both tiles)."""
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=prec,
                           preferred_element_type=jnp.float32)


def _dot_nn(a: Array, b: Array) -> Array:
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=prec,
                           preferred_element_type=jnp.float32)


def _dot_tn(a: Array, b: Array) -> Array:
    """a.T @ b in fp32 (contract the row dim of both tiles)."""
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=prec,
                           preferred_element_type=jnp.float32)


def scores(q: Array, k: Array, scale: float, softcap: float | None) -> tuple[Array, Array | None]:
    """Scaled (and soft-capped) scores of a tile; also returns tanh for the softcap derivative."""
    s = _dot_nt(q, k) * scale
    if softcap is None:
        return s, None
    t = jnp.tanh(s / softcap)
    return softcap * t, t


def tile_mask(q_start, k_start, shape: tuple[int, int], cfg: FlashConfig,
              q_seg: Array | None, k_seg: Array | None, bounds=None, k_pos=None,
              transposed: bool = False) -> Array | None:
    """Boolean visibility of a ``[block_q, block_k]`` tile (None = all visible).

    Explicit mode: ``bounds = (lo, hi)`` are ``[block_q, 1]`` inclusive visible key
    positions per row and ``k_pos`` the ``[1, block_k]`` key positions (padding: -1).
    ``transposed``: the tile is ``[block_k, block_q]`` (keys on rows, as in the dK/dV
    kernel) and every per-query input is a row, every per-key input a column."""
    if cfg.explicit:
        lo, hi = bounds
        mask = jnp.logical_and(k_pos >= lo, k_pos <= hi)
    else:
        q_axis, k_axis = (1, 0) if transposed else (0, 1)
        q_pos = q_start + cfg.offset + lax.broadcasted_iota(jnp.int32, shape, q_axis)
        k_pos = k_start + lax.broadcasted_iota(jnp.int32, shape, k_axis)
        mask = ref.position_mask(q_pos, k_pos, causal=cfg.causal, sliding_window=cfg.sliding_window)
        if cfg.kv_len_padded != cfg.kv_len:
            valid = k_pos < cfg.kv_len
            mask = valid if mask is None else jnp.logical_and(mask, valid)
    if q_seg is not None:
        same = q_seg == k_seg                      # [bq, 1] == [1, bk] (transposed: [1, bq], [bk, 1])
        mask = same if mask is None else jnp.logical_and(mask, same)
    return mask


def _visible_kv_positions(first_q, last_q, cfg: FlashConfig):
    """[lo, hi) key positions any query position in [first_q, last_q] can see."""
    lo, hi = 0, cfg.kv_len
    w = cfg.sliding_window
    if cfg.causal:
        hi = jnp.minimum(hi, last_q + 1)
    if w is not None:
        lo = jnp.maximum(0, first_q - w + 1)
        if not cfg.causal:
            hi = jnp.minimum(hi, last_q + w)
    return lo, hi


def _visible_q_positions(first_k, last_k, cfg: FlashConfig):
    """[lo, hi) query positions that can see some key in [first_k, last_k]."""
    lo, hi = cfg.offset, cfg.offset + cfg.q_len
    w = cfg.sliding_window
    if cfg.causal:
        lo = jnp.maximum(lo, first_k)
    if w is not None:
        hi = jnp.minimum(hi, last_k + w)
        if not cfg.causal:
            lo = jnp.maximum(lo, first_k - w + 1)
    return lo, hi


def _block_range(lo, hi, block: int, limit: int):
    """Block indices [lo_b, hi_b) covering positions [lo, hi) within [0, limit)."""
    if isinstance(lo, int) and isinstance(hi, int):
        return max(lo, 0) // block, -(-min(max(hi, 0), limit) // block)
    lo = jnp.clip(lo, 0, limit)
    hi = jnp.clip(hi, 0, limit)
    return lax.div(lo, block), lax.div(hi + block - 1, block)


def kv_block_range(q_start, block_q: int, block_k: int, cfg: FlashConfig):
    first = q_start + cfg.offset
    lo, hi = _visible_kv_positions(first, first + block_q - 1, cfg)
    return _block_range(lo, hi, block_k, cfg.kv_len_padded)


def q_block_range(k_start, block_q: int, block_k: int, cfg: FlashConfig):
    lo, hi = _visible_q_positions(k_start, k_start + block_k - 1, cfg)
    # positions -> rows
    return _block_range(lo - cfg.offset, hi - cfg.offset, block_q, cfg.q_len_padded)


def _split_at_diagonal(cfg: FlashConfig) -> bool:
    """Only positional masks apply (causal, key padding): then the tiles every row of a block
    sees in full are looped over without building a mask at all (most tiles of a long causal
    sequence), and only the diagonal/padding tiles pay for it."""
    return not cfg.explicit and not cfg.has_segments and cfg.sliding_window is None


def unmasked_kv_blocks_end(q_start, block_q: int, block_k: int, cfg: FlashConfig):
    """Key blocks ``[0, end)`` that every row of the q tile at ``q_start`` sees in full."""
    end = cfg.kv_len // block_k                       # blocks holding no key padding
    if cfg.causal:                                    # row 0 of the tile sees keys <= its position
        end = jnp.minimum(end, lax.div(jnp.maximum(q_start + cfg.offset + 1, 0), block_k))
    return end


def unmasked_q_blocks_start(k_start, block_q: int, block_k: int, cfg: FlashConfig):
    """Query blocks ``[start, ...)`` whose rows all see every key of the kv block at
    ``k_start``; none (a huge start) when the block reaches into key padding."""
    start = 0
    if cfg.causal:                                    # the tile's last key must be <= row 0's position
        first_row = jnp.maximum(k_start + block_k - 1 - cfg.offset, 0)
        start = lax.div(first_row + block_q - 1, block_q)
    if cfg.kv_len_padded != cfg.kv_len:
        start = jnp.where(k_start + block_k <= cfg.kv_len, start, cfg.q_len_padded // block_q)
    return start


def _clip(x, lo, hi):
    if all(isinstance(v, int) for v in (x, lo, hi)):
        return min(max(x, lo), hi)
    return jnp.clip(x, lo, hi)


def tile_visible(bounds, k_pos) -> Array:
    """Explicit mode: can any row of a q tile see any key of a kv tile? Lets a loop over
    all blocks skip the invisible ones whatever order the cache slots are in. Reduced in
    float32 (monotone rounding, so never a wrong skip) because TPUs reduce floats best."""
    lo, hi = bounds
    kp = k_pos.astype(jnp.float32)
    k_max = jnp.max(kp)
    k_min = jnp.min(jnp.where(kp >= 0, kp, float(ref.POS_MAX)))
    return jnp.logical_and(k_max >= jnp.min(lo.astype(jnp.float32)),
                           k_min <= jnp.max(hi.astype(jnp.float32)))


def _skip_unless(visible, update, carry):
    return lax.cond(visible, update, lambda c: c, carry)


def _unpack(refs, cfg: FlashConfig, n_in: int):
    """(inputs, (q_seg, kv_seg), (q_lo, q_hi, kv_pos), outputs) refs of a kernel."""
    ins, rest = refs[:n_in], refs[n_in:]
    segs, pos = (None, None), (None, None, None)
    if cfg.has_segments:
        segs, rest = rest[:2], rest[2:]
    if cfg.explicit:
        pos, rest = rest[:3], rest[3:]
    return ins, segs, pos, rest


# --------------------------------------------------------------------------- kernels

def _over_kv_blocks(update, carry, q_start, bq, bk, cfg: "FlashConfig", kp_ref, bounds):
    """Fold ``update(carry, k_start, k_pos[, masked])`` over the key blocks a q tile can see
    (shared by the forward and dQ kernels): the causal/window block range, or every block with
    explicit positions (skipping tiles no row sees); with a diagonal split, the fully visible
    blocks first without building a mask."""
    def body(j, c):
        k_start = pl.multiple_of(j * bk, bk)
        if not cfg.explicit:
            return update(c, k_start, None)
        k_pos = kp_ref[:, pl.ds(k_start, bk)]
        return _skip_unless(tile_visible(bounds, k_pos), lambda c_: update(c_, k_start, k_pos), c)

    if cfg.explicit:
        lo, hi = 0, cfg.kv_len_padded // bk
    else:
        lo, hi = kv_block_range(q_start, bq, bk, cfg)
    if _split_at_diagonal(cfg):
        mid = _clip(unmasked_kv_blocks_end(q_start, bq, bk, cfg), lo, hi)
        carry = lax.fori_loop(lo, mid, lambda j, c: update(c, pl.multiple_of(j * bk, bk), None, False), carry)
        lo = mid
    return lax.fori_loop(lo, hi, body, carry)


def _fwd_kernel(*refs, cfg: FlashConfig):
    (q_ref, k_ref, v_ref), (qs_ref, ks_ref), (lo_ref, hi_ref, kp_ref), (o_ref, lse_ref) = \
        _unpack(refs, cfg, 3)
    bq, bk = cfg.block_q, cfg.block_k
    q_start = pl.program_id(2) * bq
    q = q_ref[...]
    q_seg = None if qs_ref is None else qs_ref[...]
    bounds = (lo_ref[...], hi_ref[...]) if cfg.explicit else None

    def update(carry, k_start, k_pos, masked=True):
        acc, m, l = carry
        k = k_ref[pl.ds(k_start, bk), :]
        v = v_ref[pl.ds(k_start, bk), :]
        k_seg = None if ks_ref is None else ks_ref[:, pl.ds(k_start, bk)]
        s, _ = scores(q, k, cfg.scale, cfg.softcap)
        mask = tile_mask(q_start, k_start, (bq, bk), cfg, q_seg, k_seg, bounds, k_pos) if masked else None
        if mask is not None:
            s = jnp.where(mask, s, ref.MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        p = jnp.exp(s - m_new)
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        corr = jnp.exp(m - m_new)
        l = l * corr + jnp.sum(p, axis=1, keepdims=True)
        acc = acc * corr + _dot_nn(p.astype(v.dtype), v)
        return acc, m_new, l

    init = (jnp.zeros((bq, q.shape[-1]), jnp.float32),
            jnp.full((bq, 1), ref.MASK_VALUE, jnp.float32),
            jnp.zeros((bq, 1), jnp.float32))
    acc, m, l = _over_kv_blocks(update, init, q_start, bq, bk, cfg, kp_ref, bounds)
    empty = l == 0.0
    safe_l = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc / safe_l).astype(o_ref.dtype)
    # Rows that saw nothing get a huge lse so the backward's exp(s - lse) is exactly 0.
    lse_ref[...] = jnp.where(empty, -ref.MASK_VALUE, m + jnp.log(safe_l))


def _dkv_kernel(*refs, cfg: FlashConfig):
    """dK, dV of one kv block from one q head, computed transposed: scores are ``[bk, bq]``
    (keys on rows), so log-sum-exp, delta and all per-query side inputs are lane-dense rows
    ``[1, Lq]`` (no ``[Lq, 1]`` column padded to 128 lanes in TPU VMEM) and every matmul is
    ``a @ b`` or ``a @ b.T``."""
    ((q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (qs_ref, ks_ref),
     (lo_ref, hi_ref, kp_ref), (dk_ref, dv_ref)) = _unpack(refs, cfg, 6)
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    k_start = pl.program_id(2) * bk
    k = k_ref[...]
    v = v_ref[...]
    k_seg = None if ks_ref is None else ks_ref[...]          # [bk, 1]
    k_pos = kp_ref[...] if cfg.explicit else None            # [bk, 1]

    def update(carry, q_start, bounds, masked=True):
        dk, dv = carry
        q = q_ref[pl.ds(q_start, bq), :]
        do = do_ref[pl.ds(q_start, bq), :]
        lse = lse_ref[:, pl.ds(q_start, bq)]                 # [1, bq]
        delta = delta_ref[:, pl.ds(q_start, bq)]
        q_seg = None if qs_ref is None else qs_ref[:, pl.ds(q_start, bq)]
        s, t = scores(k, q, cfg.scale, cfg.softcap)          # [bk, bq]
        p = jnp.exp(s - lse)
        mask = tile_mask(q_start, k_start, (bk, bq), cfg, q_seg, k_seg, bounds, k_pos,
                         transposed=True) if masked else None
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        dv = dv + _dot_nn(p.astype(do.dtype), do)
        ds = p * (_dot_nt(v, do) - delta)
        if t is not None:
            ds = ds * (1.0 - t * t)
        dk = dk + _dot_nn(ds.astype(q.dtype), q)
        return dk, dv

    def q_body(i, carry):
        q_start = pl.multiple_of(i * bq, bq)
        if not cfg.explicit:
            return update(carry, q_start, None)
        bounds = (lo_ref[:, pl.ds(q_start, bq)], hi_ref[:, pl.ds(q_start, bq)])
        return _skip_unless(tile_visible(bounds, k_pos),
                            lambda c: update(c, q_start, bounds), carry)

    if cfg.explicit:
        lo, hi = 0, cfg.q_len_padded // bq
    else:
        lo, hi = q_block_range(k_start, bq, bk, cfg)
    zeros = jnp.zeros(k.shape, jnp.float32)
    carry = (zeros, zeros)
    if _split_at_diagonal(cfg):  # diagonal/padding tiles first, then the fully visible ones
        mid = _clip(unmasked_q_blocks_start(k_start, bq, bk, cfg), lo, hi)
        carry = lax.fori_loop(lo, mid, q_body, carry)
        lo, q_body = mid, lambda i, c: update(c, pl.multiple_of(i * bq, bq), None, False)
    dk, dv = lax.fori_loop(lo, hi, q_body, carry)
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg: FlashConfig):
    ((q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (qs_ref, ks_ref),
     (lo_ref, hi_ref, kp_ref), (dq_ref,)) = _unpack(refs, cfg, 6)
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    q_start = pl.program_id(2) * bq
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_seg = None if qs_ref is None else qs_ref[...]
    bounds = (lo_ref[...], hi_ref[...]) if cfg.explicit else None

    def update(dq, k_start, k_pos, masked=True):
        k = k_ref[pl.ds(k_start, bk), :]
        v = v_ref[pl.ds(k_start, bk), :]
        k_seg = None if ks_ref is None else ks_ref[:, pl.ds(k_start, bk)]
        s, t = scores(q, k, cfg.scale, cfg.softcap)
        p = jnp.exp(s - lse)
        mask = tile_mask(q_start, k_start, (bq, bk), cfg, q_seg, k_seg, bounds, k_pos) if masked else None
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        ds = p * (_dot_nt(do, v) - delta)
        if t is not None:
            ds = ds * (1.0 - t * t)
        return dq + _dot_nn(ds.astype(k.dtype), k)

    dq = _over_kv_blocks(update, jnp.zeros(q.shape, jnp.float32), q_start, bq, bk, cfg, kp_ref, bounds)
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


# --------------------------------------------------------------------------- BlockSpecs

def _tile_spec(cfg: FlashConfig, rows: int, d: int, row_block, head_block) -> pl.BlockSpec:
    """Spec for a [rows, d] tile of one head; index_map gets (b, h, i) grid indices."""
    if cfg.heads_major:
        return pl.BlockSpec((None, None, rows, d),
                            lambda b, h, i: (b, head_block(h), row_block(i), 0))
    return pl.BlockSpec((None, rows, None, d),
                        lambda b, h, i: (b, row_block(i), head_block(h), 0))


def _segment_specs(q_rows: int, kv_rows: int, q_full: bool, kv_full: bool):
    qs = pl.BlockSpec((None, q_rows, 1), (lambda b, h, i: (b, 0, 0)) if q_full
                      else (lambda b, h, i: (b, i, 0)))
    ks = pl.BlockSpec((None, 1, kv_rows), (lambda b, h, i: (b, 0, 0)) if kv_full
                      else (lambda b, h, i: (b, 0, i)))
    return [qs, ks]


def _transposed_side_specs(cfg: FlashConfig, lq: int, bk: int):
    """Side inputs of the dK/dV kernel: q side whole rows ``[b, 1, Lq]``, kv side column
    tiles ``[b, Lk, 1]`` (see :func:`_transpose_side`)."""
    qs = pl.BlockSpec((None, 1, lq), lambda b, h, i: (b, 0, 0))
    ks = pl.BlockSpec((None, bk, 1), lambda b, h, i: (b, i, 0))
    return ([qs, ks] if cfg.has_segments else []) + ([qs, qs, ks] if cfg.explicit else [])


def _transpose_side(side, cfg: FlashConfig):
    """q-side ``[b, L, 1]`` <-> ``[b, 1, L]`` and kv-side ``[b, 1, L]`` -> ``[b, L, 1]``: free
    reshapes (a unit axis moves), so the transposed kernel gets rows/columns the other way."""
    kinds = ([True, False] if cfg.has_segments else []) + ([True, True, False] if cfg.explicit else [])
    out = []
    for x, q_side in zip(side, kinds):
        b, _, _ = x.shape
        out.append(x.reshape(b, 1, -1) if q_side else x.reshape(b, -1, 1))
    return out


def _side_specs(cfg: FlashConfig, q_rows: int, kv_rows: int, q_full: bool, kv_full: bool):
    """Specs of the per-row side inputs: segments (q, kv), then bounds (lo, hi) and kv positions.
    Both are laid out like segment ids: q-side ``[b, Lq, 1]``, kv-side ``[b, 1, Lk]``."""
    specs = []
    if cfg.has_segments:
        specs += _segment_specs(q_rows, kv_rows, q_full, kv_full)
    if cfg.explicit:
        qs, ks = _segment_specs(q_rows, kv_rows, q_full, kv_full)
        specs += [qs, qs, ks]
    return specs


def _same(i):
    return i


def _zero(i):
    return 0


def _kv_head(h, group: int):
    """q head -> kv head. lax.div, not //: floor division lowers via sign(), which Mosaic
    only lowers on some TPU generations (and the index is non-negative anyway)."""
    return lax.div(h, group)


# --------------------------------------------------------------------------- pallas calls

def _forward_call(q, k, v, side, cfg: FlashConfig):
    if cfg.heads_major:
        b, hq, lq, d = q.shape
    else:
        b, lq, hq, d = q.shape
    lk = cfg.kv_len_padded
    g = cfg.group
    in_specs = [
        _tile_spec(cfg, cfg.block_q, d, _same, _same),
        _tile_spec(cfg, lk, d, _zero, functools.partial(_kv_head, group=g)),
        _tile_spec(cfg, lk, d, _zero, functools.partial(_kv_head, group=g)),
    ]
    args = [q, k, v, *side]
    in_specs += _side_specs(cfg, cfg.block_q, lk, q_full=False, kv_full=True)
    lse_shape = jax.ShapeDtypeStruct((b, hq, lq, 1), jnp.float32)
    out_specs = [_tile_spec(cfg, cfg.block_q, d, _same, _same),
                 pl.BlockSpec((None, None, cfg.block_q, 1), lambda b_, h, i: (b_, h, i, 0))]
    return _pallas(_fwd_kernel, cfg, grid=(b, hq, lq // cfg.block_q), in_specs=in_specs,
                   out_specs=out_specs, out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), lse_shape],
                   name="flash_attention_fwd", head_dim=d)(*args)


def _backward_calls(q, k, v, side, o, lse, do, cfg: FlashConfig):
    if cfg.heads_major:
        b, hq, lq, d = q.shape
        hk = k.shape[1]
        delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), -1, keepdims=True)
    else:
        b, lq, hq, d = q.shape
        hk = k.shape[2]
        delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), -1)
        delta = jnp.transpose(delta, (0, 2, 1))[..., None]        # [b, hq, lq, 1]
    lk = cfg.kv_len_padded
    bq, bk, g = cfg.block_q_bwd, cfg.block_k_bwd, cfg.group

    # dK, dV: one program per (batch, q head, kv block), looping over q blocks. With GQA each
    # q head writes its own fp32 partial, summed over the group below: more parallel programs
    # than looping over the group in one, and only one head's Q/dO in TPU VMEM at a time.
    kv_head = functools.partial(_kv_head, group=g)
    stat_rows = pl.BlockSpec((None, None, 1, lq), lambda b_, h, i: (b_, h, 0, 0))
    in_specs = [_tile_spec(cfg, lq, d, _zero, _same), _tile_spec(cfg, bk, d, _same, kv_head),
                _tile_spec(cfg, bk, d, _same, kv_head), _tile_spec(cfg, lq, d, _zero, _same),
                stat_rows, stat_rows]
    in_specs += _transposed_side_specs(cfg, lq, bk)
    if g == 1:
        dkv_shapes = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
    else:
        per_q_head = (b, hq, lk, d) if cfg.heads_major else (b, lk, hq, d)
        dkv_shapes = [jax.ShapeDtypeStruct(per_q_head, jnp.float32)] * 2
    rows = lambda x: x.reshape(b, hq, 1, lq)  # noqa: E731  [b, h, Lq, 1] -> [b, h, 1, Lq], free
    dk, dv = _pallas(_dkv_kernel, cfg, grid=(b, hq, lk // bk), in_specs=in_specs,
                     out_specs=[_tile_spec(cfg, bk, d, _same, _same)] * 2, out_shape=dkv_shapes,
                     name="flash_attention_dkv", head_dim=d,
                     )(q, k, v, do, rows(lse), rows(delta), *_transpose_side(side, cfg))
    if g > 1:
        dk, dv = (_sum_group(x, hk, g, cfg.heads_major).astype(y.dtype) for x, y in ((dk, k), (dv, v)))

    # dQ: one program per (batch, q head, q block), looping over kv blocks.
    stat_tile = pl.BlockSpec((None, None, bq, 1), lambda b_, h, i: (b_, h, i, 0))
    in_specs = [_tile_spec(cfg, bq, d, _same, _same),
                _tile_spec(cfg, lk, d, _zero, functools.partial(_kv_head, group=g)),
                _tile_spec(cfg, lk, d, _zero, functools.partial(_kv_head, group=g)),
                _tile_spec(cfg, bq, d, _same, _same), stat_tile, stat_tile]
    in_specs += _side_specs(cfg, bq, lk, q_full=False, kv_full=True)
    dq = _pallas(_dq_kernel, cfg, grid=(b, hq, lq // bq), in_specs=in_specs,
                 out_specs=_tile_spec(cfg, bq, d, _same, _same),
                 out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), name="flash_attention_dq",
                 head_dim=d)(q, k, v, do, lse, delta, *side)
    return dq, dk, dv


def _sum_group(x: Array, kv_heads: int, group: int, heads_major: bool) -> Array:
    """Per-q-head partials -> per-kv-head sums (q head h belongs to kv head h // group)."""
    if heads_major:
        b, _, length, d = x.shape
        return x.reshape(b, kv_heads, group, length, d).sum(2)
    b, length, _, d = x.shape
    return x.reshape(b, length, kv_heads, group, d).sum(3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, side, cfg: FlashConfig):
    return _forward_call(q, k, v, side, cfg)[0]


def _flash_fwd(q, k, v, side, cfg: FlashConfig):
    o, lse = _forward_call(q, k, v, side, cfg)
    return o, (q, k, v, side, o, lse)


def _flash_bwd(cfg: FlashConfig, residuals, do):
    q, k, v, side, o, lse = residuals
    dq, dk, dv = _backward_calls(q, k, v, side, o, lse, do, cfg)
    return dq, dk, dv, jax.tree.map(lambda _: None, side)


_flash.defvjp(_flash_fwd, _flash_bwd)


# --------------------------------------------------------------------------- wrapper

def _to_kernel_layout(x: Array, length: int, head_dim: int, heads_major: bool) -> Array:
    """Pad [b, L, h, d] to (length, head_dim) and transpose for TPU."""
    pad = [(0, 0), (0, length - x.shape[1]), (0, 0), (0, head_dim - x.shape[3])]
    if any(p[1] for p in pad):
        x = jnp.pad(x, pad)
    return jnp.transpose(x, (0, 2, 1, 3)) if heads_major else x


def _from_kernel_layout(x: Array, length: int, head_dim: int, heads_major: bool) -> Array:
    if heads_major:
        x = jnp.transpose(x, (0, 2, 1, 3))
    return x[:, :length, :, :head_dim]


def _pad_segments(segs: tuple[Array, Array], lq: int, lk: int) -> tuple[Array, Array]:
    q_seg, kv_seg = segs
    q_seg = jnp.pad(q_seg, ((0, 0), (0, lq - q_seg.shape[1])))[:, :, None]
    kv_seg = jnp.pad(kv_seg, ((0, 0), (0, lk - kv_seg.shape[1])))[:, None, :]
    return q_seg, kv_seg


def _pad_rows(x: Array, length: int, value: int, kv_side: bool) -> Array:
    """[b, L] int32 -> padded [b, length, 1] (q side) or [b, 1, length] (kv side)."""
    x = jnp.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=value)
    return x[:, None, :] if kv_side else x[:, :, None]


def explicit_side_inputs(q_pos: Array, kv_pos: Array, *, causal: bool, sliding_window,
                         lq: int, lk: int) -> list[Array]:
    """Per-row visible intervals ``lo, hi [b, lq, 1]`` and key positions ``[b, 1, lk]``.
    Padding rows see nothing (lo > hi) and padding keys are empty (-1)."""
    lo, hi = ref.visible_bounds(q_pos, causal=causal, sliding_window=sliding_window)
    return [_pad_rows(lo, lq, ref.POS_MAX, False), _pad_rows(hi, lq, -1, False),
            _pad_rows(kv_pos.astype(jnp.int32), lk, -1, True)]


def flash_attention(q: Array, k: Array, v: Array, *, causal: bool = False,
                    segment_ids: Array | tuple[Array, Array] | None = None,
                    sliding_window=None, softcap: float | None = None,
                    scale: float | None = None, backend: str | None = None,
                    interpret: bool | None = None, block_q: int | None = None,
                    block_k: int | None = None, q_positions: Array | None = None,
                    kv_positions: Array | None = None) -> Array:
    """Memory-efficient attention: ``softmax(mask(softcap(q k^T * scale))) v``.

    Args:
      q: ``[batch, q_len, q_heads, head_dim]``.
      k, v: ``[batch, kv_len, kv_heads, head_dim]``; ``q_heads % kv_heads == 0``
        (GQA/MQA are read in place, never repeated).
      causal: bottom-right aligned (query ``i`` sits at ``kv_len - q_len + i``).
      segment_ids: ``[batch, len]`` (self-attention) or ``(q_ids [batch, q_len],
        kv_ids [batch, kv_len])``; attention stays within equal ids. Express
        padding by giving pad tokens an id no real token uses.
      sliding_window: keys with ``q_pos - w < kv_pos`` (and ``<= q_pos`` if causal;
        symmetric ``< q_pos + w`` if not). A Python int, or a traced int32 scalar
        where ``<= 0`` means no window (per-layer windows under ``lax.scan``).
      softcap: ``s = softcap * tanh(s / softcap)`` (Gemma-2 style).
      scale: defaults to ``head_dim ** -0.5``.
      backend: "triton" | "mosaic_tpu" | "xla" (the jnp reference); None picks
        from ``jax.default_backend()``.
      interpret: run the Pallas kernel in interpret mode (default: on CPU).
      block_q, block_k: override the block-size table for both directions (see
        :mod:`kernels.block_sizes` for the table and a process-wide override).
      q_positions, kv_positions: explicit token positions ``[batch, len]`` (or
        ``[len]``) instead of the bottom-right aligned ones, e.g. a prefill
        into a static KV cache with left padding; a negative key position marks
        an empty slot. Each query row then gets an inclusive visible interval and
        the kernel skips key blocks no row of a tile can see.

    Returns ``[batch, q_len, q_heads, head_dim]`` in ``q.dtype``; differentiable in
    q, k, v with a blockwise (flash) backward. Rows with no visible key are zeros.
    """
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ValueError(f"expected q [b,t,h,d] and k == v [b,s,h,d], got {q.shape}, {k.shape}, {v.shape}")
    b, q_len, hq, d = q.shape
    _, kv_len, hk, _ = k.shape
    if k.shape[0] != b or k.shape[3] != d or hq % hk:
        raise ValueError(f"incompatible q {q.shape} and k {k.shape}")
    static_window = sliding_window is None or isinstance(sliding_window, int)
    if static_window and sliding_window is not None and sliding_window < 1:
        raise ValueError("sliding_window must be >= 1")
    explicit = q_positions is not None or kv_positions is not None or not static_window
    backend, interpret = resolve_backend(backend, interpret)
    if backend == "xla":
        return ref.attention_reference(q, k, v, causal=causal, segment_ids=segment_ids,
                                       sliding_window=sliding_window, softcap=softcap, scale=scale,
                                       q_positions=q_positions, kv_positions=kv_positions)
    segs = ref.split_segment_ids(segment_ids, q_len, kv_len)
    bq, bk, bq_b, bk_b = choose_blocks(backend, d, q_len, kv_len, block_q, block_k, interpret)
    lq = _round_up(q_len, math.lcm(bq, bq_b))
    lk = _round_up(kv_len, math.lcm(bk, bk_b))
    heads_major = backend == "mosaic_tpu"
    dp = _padded_head_dim(backend, interpret, d)
    cfg = FlashConfig(
        causal=bool(causal), sliding_window=None if explicit else sliding_window,
        softcap=float(softcap) if softcap else None,
        scale=ref.default_scale(d, scale), q_len=q_len, kv_len=kv_len,
        q_len_padded=lq, kv_len_padded=lk, block_q=bq, block_k=bk,
        block_q_bwd=bq_b, block_k_bwd=bk_b, group=hq // hk,
        has_segments=segs is not None, explicit=explicit, heads_major=heads_major,
        backend=backend, interpret=interpret)
    side = list(_pad_segments(segs, lq, lk)) if segs is not None else []
    if explicit:
        q_pos, kv_pos = ref.default_positions(b, q_len, kv_len, q_positions, kv_positions)
        side += explicit_side_inputs(q_pos, kv_pos, causal=causal, sliding_window=sliding_window,
                                     lq=lq, lk=lk)
    o = _flash(_to_kernel_layout(q, lq, dp, heads_major), _to_kernel_layout(k, lk, dp, heads_major),
               _to_kernel_layout(v, lk, dp, heads_major), tuple(side), cfg)
    return _from_kernel_layout(o, q_len, d, heads_major)
