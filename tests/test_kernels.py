"""Pallas attention kernels vs their jnp references, in interpret mode on CPU.

Shapes are tiny and blocks small (16) so that several blocks, ragged tails,
GQA groups and empty rows are all exercised while the file stays fast.
Run from the repository root with ``python -m pytest tests/test_kernels.py``.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import reference

FWD_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 2e-2}
GRAD_TOL = 1e-3
_counter = itertools.count()


def _rng() -> np.random.Generator:
    """A fresh generator per call so no two tests share inputs. (numpy, not jax.random: an
    eager jax.random.normal compiles per shape, which was a large part of this file's time.)"""
    return np.random.default_rng(1000 + next(_counter))


def _normal(rng: np.random.Generator, shape, dtype=jnp.float32) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape, np.float32).astype(dtype))


def _qkv(b, tq, tk, hq, hk, d, dtype=jnp.float32):
    rng = _rng()
    q = _normal(rng, (b, tq, hq, d), dtype)
    k = _normal(rng, (b, tk, hk, d), dtype)
    v = _normal(rng, (b, tk, hk, d), dtype)
    w = _normal(rng, (b, tq, hq, d))
    return q, k, v, w


def _run(fn, *args, **kw):
    """Call under jit: interpret-mode kernels and the oracle run op by op (and much slower) eagerly."""
    return jax.jit(lambda *a: fn(*a, **kw))(*args)


def _rel_err(x, y) -> float:
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    return float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-6))


def _fwd_and_grads(fn, q, k, v, w):
    """Output and d/d(q,k,v) of a random projection <fn(q,k,v), w>."""
    def loss(q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * w)
    return jax.jit(lambda q, k, v: (fn(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))(q, k, v)


def _check_flash(b=1, tq=40, tk=40, hq=2, hk=1, d=16, dtype=jnp.float32, grads=True,
                 block_q=16, block_k=16, backend="triton", **mask_kw):
    q, k, v, w = _qkv(b, tq, tk, hq, hk, d, dtype)

    def kern(q, k, v):
        return kernels.flash_attention(q, k, v, backend=backend, interpret=True,
                                       block_q=block_q, block_k=block_k, **mask_kw)

    def oracle(q, k, v):
        return kernels.attention_reference(q, k, v, **mask_kw)

    if not grads:
        out, want = jax.jit(kern)(q, k, v), jax.jit(oracle)(q, k, v)
        assert _rel_err(out, want) < FWD_TOL[dtype]
        return out, None
    out, g = _fwd_and_grads(kern, q, k, v, w)
    want, g_want = _fwd_and_grads(oracle, q, k, v, w)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert _rel_err(out, want) < FWD_TOL[dtype]
    for name, a, b_ in zip("qkv", g, g_want):
        assert np.all(np.isfinite(np.asarray(a, np.float32))), f"d{name} not finite"
        assert _rel_err(a, b_) < (GRAD_TOL if dtype == jnp.float32 else 5e-2), f"d{name}"
    return out, g


# --------------------------------------------------------------------------- the oracle itself

def test_reference_masks_match_naive_loop():
    """The oracle's masking rules (bottom-right causal, window, segments) vs a per-element loop."""
    b, tq, tk, h, d, w = 1, 5, 9, 1, 4, 3
    q, k, v, _ = _qkv(b, tq, tk, h, h, d)
    seg_q = jnp.array([[1, 1, 2, 2, 3]])
    seg_k = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2, 2]])
    out = _run(reference.attention_reference, q, k, v, causal=True, sliding_window=w,
                                        segment_ids=(seg_q, seg_k))
    qn, kn, vn = (np.asarray(x, np.float64)[0, :, 0] for x in (q, k, v))
    for i in range(tq):
        pos = tk - tq + i
        vis = [j for j in range(tk) if pos - w < j <= pos and seg_q[0, i] == seg_k[0, j]]
        if not vis:
            np.testing.assert_array_equal(np.asarray(out[0, i, 0]), 0.0)
            continue
        s = np.array([qn[i] @ kn[j] for j in vis]) / np.sqrt(d)
        p = np.exp(s - s.max())
        np.testing.assert_allclose(np.asarray(out[0, i, 0]), (p / p.sum()) @ vn[vis], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- flash attention

@pytest.mark.parametrize("kw", [
    dict(),                                                   # ragged: 40 = 2.5 blocks
    dict(causal=True, hq=4, hk=2, tq=50, tk=50),              # GQA
    dict(causal=True, tq=24, tk=56, hq=3, hk=1),              # MQA, bottom-right causal
    dict(causal=True, sliding_window=10, softcap=5.0, tk=48, tq=48),
    dict(sliding_window=7, tq=33, tk=33),                     # symmetric window
    dict(softcap=2.0, tq=20, tk=45, hq=2, hk=2),
    dict(b=2, block_q=32, block_k=16, causal=True, tq=70, tk=70),  # unequal blocks
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_flash_matches_reference(kw):
    _check_flash(**kw)


@pytest.mark.parametrize("tq,tk,bq,bk,causal", [(17, 50, 16, 32, True), (50, 17, 32, 16, True),
                                                 (48, 100, 32, 16, True), (33, 70, 16, 16, False)])
def test_flash_unmasked_interior_blocks(tq, tk, bq, bk, causal):
    """Plain causal / padded attention loops over fully visible tiles without a mask and only
    masks the diagonal and key-padding tiles: the boundary between the two loops, for q shorter
    and longer than kv, block_q != block_k, ragged tails, forward and gradients."""
    _check_flash(tq=tq, tk=tk, block_q=bq, block_k=bk, causal=causal)


def test_flash_segment_ids_with_padding():
    """Packed sequences plus padding expressed as its own segment id (0)."""
    seg = jnp.array([[1] * 13 + [2] * 20 + [0] * 7, [3] * 30 + [0] * 10])
    _check_flash(b=2, tq=40, tk=40, hq=2, hk=1, causal=True, segment_ids=seg)


def test_flash_segment_tuple_and_fully_masked_rows():
    """q ids absent from kv ids (9) give zero rows and finite, correct grads."""
    q_seg = jnp.array([[1] * 8 + [9] * 5 + [2] * 11])
    kv_seg = jnp.array([[1] * 20 + [2] * 25 + [0] * 3])
    out, _ = _check_flash(tq=24, tk=48, segment_ids=(q_seg, kv_seg))
    np.testing.assert_array_equal(np.asarray(out[0, 8:13]), 0.0)


def test_flash_q_longer_than_kv_causal_rows_empty():
    """With q_len > kv_len the first queries sit before position 0 and see nothing."""
    out, _ = _check_flash(tq=40, tk=24, causal=True)
    np.testing.assert_array_equal(np.asarray(out[0, :16]), 0.0)
    assert not np.any(np.isnan(np.asarray(out)))


def test_flash_bf16():
    _check_flash(tq=48, tk=48, hq=4, hk=2, d=32, dtype=jnp.bfloat16, causal=True)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_flash_large_head_dims(d):
    _check_flash(tq=20, tk=20, hq=2, hk=1, d=d, causal=True)


def test_flash_tpu_layout_interpreted():
    """The Mosaic TPU variant (heads-major layout, same body) in interpret mode."""
    seg = jnp.array([[1] * 25 + [2] * 15])
    _check_flash(backend="mosaic_tpu", hq=4, hk=2, causal=True, sliding_window=12,
                 segment_ids=seg, softcap=4.0)


def test_flash_default_blocks_and_backend():
    """No block or backend arguments: the CPU default is the interpreted Triton variant."""
    q, k, v, _ = _qkv(1, 20, 20, 2, 2, 16)
    out = _run(kernels.flash_attention, q, k, v, causal=True)
    assert _rel_err(out, _run(kernels.attention_reference, q, k, v, causal=True)) < 1e-4


def test_flash_xla_backend_is_reference():
    q, k, v, _ = _qkv(1, 8, 8, 2, 1, 8)
    out = _run(kernels.flash_attention, q, k, v, causal=True, backend="xla")
    np.testing.assert_array_equal(out, _run(kernels.attention_reference, q, k, v, causal=True))


def test_flash_rejects_bad_inputs():
    q, k, v, _ = _qkv(1, 8, 12, 3, 2, 8)
    with pytest.raises(ValueError):
        kernels.flash_attention(q, k, v)                       # 3 heads over 2 kv heads
    q, k, v, _ = _qkv(1, 8, 12, 2, 1, 8)
    with pytest.raises(ValueError):
        kernels.flash_attention(q, k, v, segment_ids=jnp.zeros((1, 8), jnp.int32))


def _left_padded_cache_positions(b, tq, tk, pad):
    """Positions of a static cache holding a left-padded batch: row r has ``pad[r]`` empty
    slots (-1) before its tokens and unwritten slots (-1) after them; the queries are the
    row's last ``tq`` tokens."""
    kv_pos = np.full((b, tk), -1, np.int32)
    q_pos = np.zeros((b, tq), np.int32)
    for r, p in enumerate(pad):
        n = tk - 6 - p                            # tokens written so far (6 slots unwritten)
        kv_pos[r, p:p + n] = np.arange(n)
        q_pos[r] = np.arange(n - tq, n)
    return jnp.asarray(q_pos), jnp.asarray(kv_pos)


@pytest.mark.parametrize("window", [None, 5])
def test_flash_explicit_positions_static_cache(window):
    """Chunked prefill into a static cache: explicit q/kv positions with empty slots (-1),
    GQA, optional window; forward and gradients vs the reference."""
    q_pos, kv_pos = _left_padded_cache_positions(2, 10, 40, pad=(0, 7))
    _check_flash(b=2, tq=10, tk=40, hq=4, hk=2, causal=True, sliding_window=window,
                 q_positions=q_pos, kv_positions=kv_pos)


def test_flash_explicit_positions_out_of_order_slots_and_empty_rows():
    """A rolling buffer stores keys in slot order, not position order; a query whose visible
    keys are all empty slots gets a zero row and finite gradients."""
    kv_pos = jnp.asarray(_rng().permutation(24), jnp.int32)[None]
    kv_pos = jnp.where(kv_pos < 3, -1, kv_pos)              # positions 0..2 were never written
    q_pos = jnp.array([[1, 2, 9, 17, 23, 20]], jnp.int32)    # 1 and 2 see only empty slots
    out, _ = _check_flash(tq=6, tk=24, hq=2, hk=1, causal=True, q_positions=q_pos,
                          kv_positions=kv_pos, block_q=8, block_k=8)
    np.testing.assert_array_equal(np.asarray(out[0, :2]), 0.0)


def test_flash_traced_sliding_window():
    """A per-layer window traced under jit (as under lax.scan over layers); <= 0 means none."""
    q, k, v, _ = _qkv(1, 20, 36, 2, 1, 16)

    @jax.jit
    def kern(window):
        return kernels.flash_attention(q, k, v, causal=True, sliding_window=window, interpret=True,
                                       block_q=16, block_k=16)

    for window, static in ((6, 6), (0, None)):
        want = _run(kernels.attention_reference, q, k, v, causal=True, sliding_window=static)
        assert _rel_err(kern(jnp.int32(window)), want) < 1e-4


# --------------------------------------------------------------------------- decode attention

def _decode_inputs(b, t, hq, hk, d, s, dtype=jnp.float32):
    q, k, v, _ = _qkv(b, t, s, hq, hk, d, dtype)
    return q, k, v


@pytest.mark.parametrize("kw", [
    dict(),
    dict(num_splits=3),
    dict(t=3, num_splits=2, softcap=3.0),
    dict(t=2, num_splits=4, sliding_window=9),
    dict(hq=4, hk=4, num_splits=2),                           # MHA
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_decode_matches_reference(kw):
    kw = dict(kw)
    b, t, hq, hk, d, s = 3, kw.pop("t", 1), kw.pop("hq", 8), kw.pop("hk", 2), 16, 100
    q, k, v = _decode_inputs(b, t, hq, hk, d, s)
    lengths = jnp.array([100, 37, t], jnp.int32)
    split_kw = {"num_splits": kw.pop("num_splits", None)}
    out = _run(kernels.decode_attention, q, k, v, lengths, interpret=True, **split_kw, **kw)
    want = _run(kernels.decode_attention_reference, q, k, v, lengths, **kw)
    assert _rel_err(out, want) < 1e-4


def test_decode_empty_and_bf16_and_large_head_dim():
    q, k, v = _decode_inputs(2, 1, 4, 1, 128, 40, jnp.bfloat16)
    lengths = jnp.array([0, 29], jnp.int32)
    out = _run(kernels.decode_attention, q, k, v, lengths, num_splits=2, interpret=True)
    want = _run(kernels.decode_attention_reference, q, k, v, lengths)
    np.testing.assert_array_equal(np.asarray(out[0], np.float32), 0.0)
    assert _rel_err(out, want) < 2e-2


def test_decode_matches_flash_on_last_tokens():
    """Decoding the last t tokens equals the last t rows of causal flash attention."""
    q, k, v = _decode_inputs(1, 4, 4, 2, 16, 50)
    lengths = jnp.array([50], jnp.int32)
    dec = _run(kernels.decode_attention, q, k, v, lengths, num_splits=2, interpret=True)
    fl = _run(kernels.flash_attention, q, k, v, causal=True, interpret=True, block_q=16, block_k=16)
    assert _rel_err(dec, fl) < 1e-4


def test_decode_explicit_positions_and_traced_window():
    """Decode against a static cache given by kv positions (left padding, empty slots, a
    shuffled rolling buffer) with a traced window, as generate() calls it."""
    b, t, hq, hk, d, s = 2, 2, 4, 2, 16, 48
    q, k, v = _decode_inputs(b, t, hq, hk, d, s)
    ring = jnp.asarray(_rng().permutation(s), jnp.int32)          # row 1: out-of-order slots
    kv_pos = jnp.stack([jnp.where(jnp.arange(s) < 5, -1, jnp.arange(s) - 5), ring])
    kv_pos = kv_pos.at[0, 40:].set(-1)                                # unwritten tail
    q_pos = jnp.array([[33, 34], [46, 47]], jnp.int32)

    @jax.jit
    def kern(window):
        return kernels.decode_attention(q, k, v, q_positions=q_pos, kv_positions=kv_pos,
                                        sliding_window=window, num_splits=2, interpret=True)

    for window in (0, 7):
        want = _run(kernels.decode_attention_reference, q, k, v, q_positions=q_pos, kv_positions=kv_pos,
                                                  sliding_window=window)
        assert _rel_err(kern(jnp.int32(window)), want) < 1e-4


@pytest.mark.parametrize("num_splits", [1, 2, 3, 5])
def test_decode_ragged_cache_not_padded(num_splits):
    """A cache length that is no multiple of the key block (75 = 4*16 + 11) or of the split
    grid: the last block is read overlapping its neighbour, which must not count keys twice
    (by slot, and by explicit position with shuffled slots); and the compiled (Triton) path
    passes K/V to the kernel as they are, with no pad (a per-step copy of the whole cache)."""
    b, t, hq, hk, d, s = 2, 1, 4, 2, 16, 75
    q, k, v = _decode_inputs(b, t, hq, hk, d, s)
    lengths = jnp.array([75, 70], jnp.int32)
    out = _run(kernels.decode_attention, q, k, v, lengths, num_splits=num_splits, block_k=16, interpret=True)
    want = _run(kernels.decode_attention_reference, q, k, v, lengths)
    assert _rel_err(out, want) < 1e-4
    kv_pos = jnp.stack([jnp.asarray(_rng().permutation(s), jnp.int32), jnp.arange(s) - 3])
    q_pos = jnp.array([[74], [71]], jnp.int32)
    out = _run(kernels.decode_attention, q, k, v, q_positions=q_pos, kv_positions=kv_pos,
               num_splits=num_splits, block_k=16, interpret=True)
    want = _run(kernels.decode_attention_reference, q, k, v, q_positions=q_pos, kv_positions=kv_pos)
    assert _rel_err(out, want) < 1e-4

    k_bf16 = k.astype(jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda q, k, v: kernels.decode_attention(
        q, k, v, lengths, num_splits=num_splits, backend="triton", interpret=False))(
        q.astype(jnp.bfloat16), k_bf16, k_bf16)
    assert tuple(k.shape) not in _padded_shapes(jaxpr.jaxpr)  # (q is padded to 16 rows: small)


def _padded_shapes(jaxpr) -> set[tuple[int, ...]]:
    """Shapes of the arrays ``pad`` is applied to, through nested jit/custom_vjp/control flow."""
    import jax.extend.core as jax_core
    shapes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pad":
            shapes.add(tuple(eqn.invars[0].aval.shape))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    shapes |= _padded_shapes(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    shapes |= _padded_shapes(sub)
    return shapes


@pytest.mark.parametrize("kw", [dict(num_splits=1), dict(num_splits=3, t=2, sliding_window=20, softcap=5.0)])
def test_paged_decode_matches_reference(kw):
    kw = dict(kw)
    b, t, hq, hk, d, ps, pages, max_pages = 4, kw.pop("t", 1), 4, 2, 16, 16, 30, 7
    rng = _rng()
    q = _normal(rng, (b, t, hq, d))
    k_pages = _normal(rng, (pages, ps, hk, d))
    v_pages = _normal(rng, (pages, ps, hk, d))
    tables = jnp.asarray(rng.permutation(pages)[:b * max_pages].reshape(b, max_pages), jnp.int32)
    lengths = jnp.array([100, 37, t + 1, 0], jnp.int32)      # 0: an idle serving slot
    out = _run(kernels.paged_decode_attention, q, k_pages, v_pages, tables, lengths, interpret=True, **kw)
    kw.pop("num_splits")
    want = _run(kernels.paged_decode_attention_reference, q, k_pages, v_pages, tables, lengths, **kw)
    assert _rel_err(out, want) < 1e-4
    np.testing.assert_array_equal(np.asarray(out[3]), 0.0)


# --------------------------------------------------------------------------- lowering (no device needed)

def _export(fn, platform, *shapes):
    from jax import export
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton"),
              export.DisabledSafetyCheck.custom_call("tpu_custom_call")]
    export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*shapes)


@pytest.mark.parametrize("platform,backend", [("cuda", "triton"), ("tpu", "mosaic_tpu")])
def test_flash_lowers_for_device(platform, backend):
    """Catches unsupported ops in the kernel bodies for the real backends (Triton / Mosaic
    lowering only; the final device compile still needs the device)."""
    sds = jax.ShapeDtypeStruct
    q, kv = sds((2, 200, 8, 128), jnp.bfloat16), sds((2, 200, 2, 128), jnp.bfloat16)
    seg = jnp.zeros((2, 200), jnp.int32)

    def fwd_bwd(q, k, v):
        def f(q, k, v):
            return kernels.flash_attention(q, k, v, causal=True, sliding_window=64, softcap=30.0,
                                           segment_ids=seg, backend=backend, interpret=False)
        return jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)

    _export(fwd_bwd, platform, q, kv, kv)


def test_decode_lowers_for_triton():
    sds = jax.ShapeDtypeStruct
    q, kv, lengths = sds((2, 1, 8, 64), jnp.bfloat16), sds((2, 500, 2, 64), jnp.bfloat16), sds((2,), jnp.int32)
    _export(lambda q, k, v, n: kernels.decode_attention(q, k, v, n, backend="triton", interpret=False,
                                                        sliding_window=100), "cuda", q, kv, kv, lengths)
    pages, tables = sds((40, 16, 2, 64), jnp.bfloat16), sds((2, 32), jnp.int32)
    _export(lambda q, k, v, t, n: kernels.paged_decode_attention(q, k, v, t, n, backend="triton",
                                                                 interpret=False),
            "cuda", q, pages, pages, tables, lengths)
