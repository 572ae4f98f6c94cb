"""Block sizes of the Pallas kernels: a small table per backend and head dim, overridable.

The table (why these numbers):

==========  ========  ====================  ====================  ===============
backend     head_dim  forward (bq, bk)      backward (bq, bk)     decode block_k
==========  ========  ====================  ====================  ===============
triton      <= 64     (128, 64)             (64, 64)              64
triton      <= 128    (128, 64)             (64, 64)              64
triton      <= 256    (64, 32)              (32, 32)              32
mosaic_tpu  <= 128    (256, 512)            (256, 256)            (reference)
mosaic_tpu  <= 256    (128, 256)            (128, 128)            (reference)
interpret   any       as triton             as triton             16
==========  ========  ====================  ====================  ===============

* Triton: the usual FA2 tiles for Hopper/Ampere; the backward keeps two fp32
  accumulators live, so its tiles are smaller, and head_dim 256 halves them
  again to stay within registers/shared memory.
* TPU: tiles are multiples of 128 lanes and large, because every grid step has
  a fixed overhead.
* Shapes: a block never exceeds the next power of two of the sequence length
  (floored at the smallest block the backend compiles: 16 for Triton's
  ``tl.dot``, 128 for TPU lanes), so short prompts do not pad to 128 rows.
  Explicit blocks below that floor are a ValueError for compiled kernels (they
  would lower, then fail in the device compiler); interpret mode takes any.
* The issue's benchmark shapes lower with these defaults (checked by
  tests/test_kernel_lowering.py): prefill b=2, 32 heads, 4096 tokens, d=128,
  bf16 -> Triton (128, 64) fwd / (64, 64) bwd, 8 warps; TPU (256, 512) fwd /
  (256, 256) bwd, about 5 MiB VMEM per kernel. Decode at 8k/128k context,
  32 q / 8 kv heads, batch 4 -> block_k 64, 8 splits, 32 query rows per tile.

None of this is autotuned. Override per call with ``block_q=`` / ``block_k=``
(:func:`kernels.flash_attention`, :func:`kernels.decode_attention`), or for the
whole process (what a model's ``attn_implementation="pallas"`` reads, at trace
time) with :func:`set_pallas_block_sizes` or the :func:`pallas_block_sizes`
context manager; a change clears JAX's trace caches, so an already-jitted model
recompiles with the new sizes on its next call. ``benchmarks/bench_attention_gpu.py
--block-q/--block-k`` is the way to find better numbers for a card.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import jax
from jax.experimental import pallas as pl

# (max head_dim, forward (block_q, block_k), backward (block_q, block_k))
BLOCK_TABLE: dict[str, tuple[tuple[int, tuple[int, int], tuple[int, int]], ...]] = {
    "triton": (
        (64, (128, 64), (64, 64)),
        (128, (128, 64), (64, 64)),
        (256, (64, 32), (32, 32)),
    ),
    "mosaic_tpu": (
        (128, (256, 512), (256, 256)),
        (256, (128, 256), (128, 128)),
    ),
}
# Smallest block each backend can compile (Triton's tl.dot needs >= 16; TPU tiles are 128 lanes).
MIN_BLOCK = {"triton": 16, "mosaic_tpu": 128}


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Process-wide overrides; ``None`` fields fall back to the table."""
    block_q: int | None = None
    block_k: int | None = None
    block_q_bwd: int | None = None
    block_k_bwd: int | None = None
    decode_block_k: int | None = None
    num_splits: int | None = None


_OVERRIDES = BlockSizes()


def _check_block(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1 or value & (value - 1)):
        raise ValueError(f"{name} must be a positive power of two, got {value!r}")


def set_pallas_block_sizes(*, block_q: int | None = None, block_k: int | None = None,
                           block_q_bwd: int | None = None, block_k_bwd: int | None = None,
                           decode_block_k: int | None = None,
                           num_splits: int | None = None) -> BlockSizes:
    """Override the table for every later kernel call (all ``None``: back to the table).

    The sizes are read when a function is traced, so a change clears JAX's trace and
    compile caches: an already-jitted model picks the new sizes up on its next call
    (after one recompile) instead of silently keeping the old ones. Returns the
    previous overrides so a caller can restore them.
    """
    new = BlockSizes(block_q, block_k, block_q_bwd, block_k_bwd, decode_block_k, num_splits)
    for f in dataclasses.fields(new):
        if f.name != "num_splits":
            _check_block(f.name, getattr(new, f.name))
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")
    return _install(new)


def _install(new: BlockSizes) -> BlockSizes:
    global _OVERRIDES
    old, _OVERRIDES = _OVERRIDES, new
    if new != old:
        jax.clear_caches()
    return old


def get_pallas_block_sizes() -> BlockSizes:
    return _OVERRIDES


@contextlib.contextmanager
def pallas_block_sizes(**kwargs) -> Iterator[BlockSizes]:
    """``with pallas_block_sizes(block_q=64): ...`` — overrides restored on exit."""
    old = set_pallas_block_sizes(**kwargs)
    try:
        yield get_pallas_block_sizes()
    finally:
        _install(old)


def choose_blocks(backend: str, head_dim: int, q_len: int, kv_len: int,
                  block_q: int | None, block_k: int | None,
                  interpret: bool = False) -> tuple[int, int, int, int]:
    """(block_q, block_k, block_q_bwd, block_k_bwd) for one flash-attention call.

    Priority: explicit ``block_q``/``block_k`` arguments (both directions), then
    :func:`set_pallas_block_sizes`, then the table clamped to short inputs. Compiled
    kernels (``interpret=False``) reject blocks below the backend's minimum here, with
    a clear error, because below it they still *lower* but fail in the device compiler.
    """
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    table = BLOCK_TABLE[backend]
    fwd, bwd = next(((f, b) for dmax, f, b in table if head_dim <= dmax), table[-1][1:])
    floor = MIN_BLOCK[backend]
    o = _OVERRIDES

    def clamp(block: int, length: int) -> int:
        return min(block, max(floor, pl.next_power_of_2(length)))

    bq = block_q or o.block_q or clamp(fwd[0], q_len)
    bk = block_k or o.block_k or clamp(fwd[1], kv_len)
    bq_b = block_q or o.block_q_bwd or o.block_q or clamp(bwd[0], q_len)
    bk_b = block_k or o.block_k_bwd or o.block_k or clamp(bwd[1], kv_len)
    if not interpret:
        check_min_block(backend, block_q=bq, block_k=bk, block_q_bwd=bq_b, block_k_bwd=bk_b)
    return bq, bk, bq_b, bk_b


# Why each backend has a floor (shown in the error).
_MIN_BLOCK_WHY = {
    "triton": "Triton's tl.dot needs M, N, K >= 16",
    "mosaic_tpu": "TPU blocks of per-row side inputs (segment ids, positions) are 128-lane "
                  "tiles, and bf16 rows are packed in pairs",
}


def check_min_block(backend: str, **blocks: int) -> None:
    """Raise if a compiled kernel would get a block below the backend's minimum."""
    floor = MIN_BLOCK[backend]
    small = {name: value for name, value in blocks.items() if value < floor}
    if small:
        raise ValueError(f"{backend} kernels need blocks >= {floor} ({_MIN_BLOCK_WHY[backend]}); "
                         f"got {small}. Smaller blocks only run with interpret=True.")


def decode_block_k(head_dim: int, interpret: bool) -> int:
    """Keys per inner step of decode attention (the table's last column)."""
    if _OVERRIDES.decode_block_k:
        if not interpret:
            check_min_block("triton", decode_block_k=_OVERRIDES.decode_block_k)
        return _OVERRIDES.decode_block_k
    if interpret:
        return 16
    return 64 if head_dim <= 128 else 32


def decode_num_splits() -> int | None:
    return _OVERRIDES.num_splits
