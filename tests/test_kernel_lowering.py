"""The Pallas kernels lower for real hardware: Triton (GPU) and Mosaic (TPU), on a CPU machine.

``jax.export`` with ``platforms=["cuda"]`` / ``["tpu"]`` runs the real Pallas -> Triton IR and
Pallas -> Mosaic lowering (block-shape rules, power-of-two tensor shapes, the set of supported
ops) without a device; nothing is executed. What this can NOT check: XLA's Triton compile
(Triton IR -> PTX -> SASS: register/shared-memory limits) and libtpu's Mosaic compile (vector
layouts, VMEM allocation). So passing here is necessary for running on a GPU/TPU, not sufficient.
Two of those later-stage rules are cheap to check on the lowered program and are checked here:
every ``tt.dot`` in the Triton IR has M, N, K >= 16 (Triton's MMA minimum, which Pallas does not
check for 16/32-bit inputs), and every TPU kernel's double-buffered blocks fit the VMEM limit
the kernel asks for.

Each case exports ``(out, grad)`` in one function so forward and backward kernels lower together,
and asserts the exported module really contains the Pallas custom call (an interpret-mode or
reference fallback would otherwise pass silently).
"""
from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax import export
from jax._src.pallas.triton import lowering as triton_lowering

import kernels
from kernels.flash_attention import TPU_DEFAULT_VMEM, TPU_MAX_VMEM
from test_attention_registry import pallas_calls

sds = jax.ShapeDtypeStruct
PLATFORMS = {"triton": "cuda", "mosaic_tpu": "tpu"}
CUSTOM_CALL = {"triton": "__gpu$xla.gpu.triton", "mosaic_tpu": "tpu_custom_call"}
# Triton-compiled kernels make no serialization-compatibility promise; we only lower, never load.
UNCHECKED = [export.DisabledSafetyCheck.custom_call(name) for name in CUSTOM_CALL.values()]


@dataclasses.dataclass
class TritonDots:
    """Shapes ``(M, K, N)`` of every ``tt.dot`` in the Triton modules lowered while active."""
    shapes: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)

    def record(self, module) -> None:
        def visit(op):
            if op.name == "tt.dot":
                (m, k), (_, n) = (list(o.type.shape) for o in list(op.operands)[:2])
                self.shapes.append((m, k, n))
            return triton_lowering.ir.WalkResult.ADVANCE

        module.operation.walk(visit)


@contextlib.contextmanager
def triton_dots(monkeypatch):
    dots = TritonDots()
    original = triton_lowering.lower_jaxpr_to_triton_module

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        assert result.module.operation.verify()  # well-formed Triton IR (the ops' own verifiers)
        dots.record(result.module)
        return result

    monkeypatch.setattr(triton_lowering, "lower_jaxpr_to_triton_module", spy)
    yield dots


def lower(fn, backend: str, *args, monkeypatch=None) -> str:
    """Export ``fn`` for the backend's platform; return the StableHLO text (asserting the kernel
    custom call is in it). For Triton, also check every tt.dot is at least 16x16x16."""
    platform = PLATFORMS[backend]
    jax.clear_caches()  # a cached lowering (same function, or a shared inner jit) would skip the spy
    ctx = triton_dots(monkeypatch) if backend == "triton" else contextlib.nullcontext(None)
    with ctx as dots:
        text = export.export(jax.jit(fn), platforms=[platform], disabled_checks=UNCHECKED)(*args).mlir_module()
    assert CUSTOM_CALL[backend] in text, "no Pallas kernel in the lowered program"
    if dots is not None:
        assert dots.shapes, "Triton lowering produced no tt.dot"
        small = [s for s in dots.shapes if min(s) < 16]
        assert not small, f"tt.dot below Triton's 16x16x16 minimum: {small}"
    return text


def with_grads(f):
    """(f(q, k, v, *rest), d sum(f) / d(q, k, v)) so the backward kernels lower too."""
    def both(q, k, v, *rest):
        out, vjp = jax.vjp(lambda q, k, v: f(q, k, v, *rest), q, k, v)
        return out, vjp(jnp.ones_like(out))
    return both


# --------------------------------------------------------------------------- flash attention

# name -> (b, q_len, kv_len, q_heads, kv_heads, head_dim), flash kwargs, extra traced inputs
# ("seg": (q, kv) segment ids, "pos": (q, kv) positions, "window": a traced int32 window).
FLASH_CASES = {
    "causal": ((2, 256, 256, 4, 4, 128), dict(causal=True), ()),
    "non_causal": ((1, 256, 256, 4, 4, 128), dict(causal=False), ()),
    "q_shorter_than_kv": ((1, 100, 300, 4, 2, 128), dict(causal=True), ()),
    "gqa_ragged": ((2, 200, 200, 8, 2, 128), dict(causal=True), ()),
    "mqa": ((1, 130, 130, 8, 1, 64), dict(causal=True), ()),
    "segment_ids": ((2, 200, 200, 4, 2, 64), dict(causal=True), ("seg",)),
    "window_int": ((1, 300, 300, 4, 2, 128), dict(causal=True, sliding_window=64), ()),
    "window_int_non_causal": ((1, 300, 300, 2, 2, 64), dict(causal=False, sliding_window=64), ()),
    "window_traced": ((1, 200, 200, 4, 2, 128), dict(causal=True), ("window",)),
    "softcap": ((1, 200, 200, 4, 2, 128), dict(causal=True, softcap=30.0), ()),
    "positions": ((2, 64, 300, 4, 2, 128), dict(causal=True), ("pos",)),
    "positions_segments_window": ((1, 150, 150, 4, 1, 64), dict(causal=False, sliding_window=32),
                                  ("pos", "seg")),
    "tiny": ((1, 1, 5, 2, 1, 64), dict(causal=True), ()),
}


def flash_fn(backend: str, extras: tuple[str, ...], **kw):
    def f(q, k, v, *rest):
        rest, call = list(rest), dict(kw)
        for extra in extras:
            if extra == "seg":
                call["segment_ids"] = (rest.pop(0), rest.pop(0))
            elif extra == "pos":
                call["q_positions"], call["kv_positions"] = rest.pop(0), rest.pop(0)
            else:
                call["sliding_window"] = rest.pop(0)
        return kernels.flash_attention(q, k, v, backend=backend, interpret=False, **call)
    return f


def flash_args(shape, dtype, extras):
    b, tq, tk, hq, hk, d = shape
    args = [sds((b, tq, hq, d), dtype), sds((b, tk, hk, d), dtype), sds((b, tk, hk, d), dtype)]
    for extra in extras:
        if extra in ("seg", "pos"):
            args += [sds((b, tq), jnp.int32), sds((b, tk), jnp.int32)]
        else:
            args.append(sds((), jnp.int32))
    return args


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", sorted(FLASH_CASES))
@pytest.mark.parametrize("backend", sorted(PLATFORMS))
def test_flash_forward_and_grad_lower(backend, case, dtype, monkeypatch):
    shape, kw, extras = FLASH_CASES[case]
    text = lower(with_grads(flash_fn(backend, extras, **kw)), backend, *flash_args(shape, dtype, extras),
                 monkeypatch=monkeypatch)
    assert text.count(CUSTOM_CALL[backend]) >= 3  # forward, dK/dV and dQ kernels


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("backend", sorted(PLATFORMS))
def test_flash_head_dims_lower(backend, head_dim, monkeypatch):
    """Default block table per head dim (bf16), ragged GQA with softcap and a window."""
    kw = dict(causal=True, softcap=50.0, sliding_window=128)
    lower(with_grads(flash_fn(backend, (), **kw)), backend,
          *flash_args((1, 333, 333, 4, 2, head_dim), jnp.bfloat16, ()), monkeypatch=monkeypatch)


@pytest.mark.parametrize("backend", sorted(PLATFORMS))
def test_flash_issue_benchmark_shape_lowers(backend, monkeypatch):
    """The issue's prefill benchmark shape with the default block table (b=2, 32 heads, 4096
    tokens, d=128, bf16, causal), forward and backward; plus its GQA variant."""
    for kv_heads in (32, 8):
        lower(with_grads(flash_fn(backend, (), causal=True)), backend,
              *flash_args((2, 4096, 4096, 32, kv_heads, 128), jnp.bfloat16, ()), monkeypatch=monkeypatch)


def test_flash_block_overrides_lower(monkeypatch):
    """Caller-chosen blocks (here the smallest the backends take) lower too."""
    args = flash_args((1, 200, 200, 4, 2, 64), jnp.bfloat16, ())
    lower(with_grads(flash_fn("triton", (), causal=True, block_q=16, block_k=16)), "triton", *args,
          monkeypatch=monkeypatch)
    lower(with_grads(flash_fn("mosaic_tpu", (), causal=True, block_q=128, block_k=128)), "mosaic_tpu",
          *args)


def vmem_of_blocks(eqn) -> int:
    """Double-buffered VMEM of a TPU pallas_call's blocks, from the grid mapping Pallas uses:
    (8 * packing, 128)-tiled minor dims."""
    total = 0
    for bm in eqn.params["grid_mapping"].block_mappings:
        *lead, rows, lanes = (1, 1, *bm.block_aval.shape)
        item = jnp.dtype(bm.array_aval.dtype).itemsize
        sub = 8 * max(1, 4 // item)
        total += 2 * int(jnp.prod(jnp.array(lead))) * (-(-rows // sub) * sub) * (-(-lanes // 128) * 128) * item
    return total


@pytest.mark.parametrize("seq,kv_heads,head_dim", [(4096, 32, 128), (4096, 8, 128), (16384, 8, 128),
                                                    (4096, 8, 256)])
def test_tpu_kernels_ask_for_the_vmem_their_blocks_need(seq, kv_heads, head_dim):
    """libtpu (not run here) rejects a kernel whose buffers pass its scoped VMEM limit (16 MiB
    by default on v5e). Every TPU kernel, forward and backward, at the benchmark shape, its GQA
    variant, a 16k sequence and head_dim 256, must fit its limit with 4 MiB to spare for
    in-kernel values."""
    q = sds((2, seq, 32, head_dim), jnp.bfloat16)
    kv = sds((2, seq, kv_heads, head_dim), jnp.bfloat16)
    calls = pallas_calls(with_grads(flash_fn("mosaic_tpu", (), causal=True)), q, kv, kv)
    assert len(calls) == 3
    for eqn in calls:
        need = vmem_of_blocks(eqn) + 4 * 2**20
        limit = eqn.params["compiler_params"].vmem_limit_bytes or TPU_DEFAULT_VMEM
        assert need <= limit <= TPU_MAX_VMEM, (str(eqn.params["name"]), need >> 20, limit >> 20)


def test_tpu_sequence_too_long_for_vmem_is_a_clear_error():
    q = sds((1, 131072, 4, 128), jnp.bfloat16)
    with pytest.raises(ValueError, match="MiB of VMEM"):
        jax.eval_shape(lambda q: kernels.flash_attention(q, q, q, causal=True, backend="mosaic_tpu",
                                                         interpret=False), q)


# --------------------------------------------------------------------------- decode attention

DECODE_CASES = {
    "gqa": ((2, 1, 8, 2, 128, 500), dict()),
    "mqa_4_tokens": ((2, 4, 8, 1, 64, 300), dict()),
    "window_softcap": ((2, 1, 4, 4, 128, 700), dict(sliding_window=100, softcap=30.0)),
    "window_traced": ((2, 2, 8, 2, 64, 256), dict(sliding_window="traced")),
    "positions": ((2, 1, 8, 2, 128, 400), dict(q_positions="traced", kv_positions="traced")),
    "head_dim_256": ((1, 1, 4, 2, 256, 200), dict()),
}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_decode_lowers_for_triton(case, dtype, monkeypatch):
    (b, t, hq, hk, d, ctx), kw = DECODE_CASES[case]
    traced = [name for name, value in kw.items() if value == "traced"]
    static = {name: value for name, value in kw.items() if value != "traced"}
    shapes = {"sliding_window": (), "q_positions": (b, t), "kv_positions": (b, ctx)}

    def f(q, k, v, lengths, *rest):
        call = dict(static, **dict(zip(traced, rest)))
        if "q_positions" in call:
            lengths = None
        return kernels.decode_attention(q, k, v, lengths, backend="triton", interpret=False, **call)

    lower(f, "triton", sds((b, t, hq, d), dtype), sds((b, ctx, hk, d), dtype), sds((b, ctx, hk, d), dtype),
          sds((b,), jnp.int32), *[sds(shapes[name], jnp.int32) for name in traced], monkeypatch=monkeypatch)


@pytest.mark.parametrize("ctx", [8192, 131072])
def test_decode_issue_benchmark_shapes_lower(ctx, monkeypatch):
    """The issue's decode benchmark: 32 q / 8 kv heads, d=128, bf16, one token, 8k and 128k
    context, contiguous and paged (64-token pages) with the default splits and blocks."""
    b = 4
    q, kv = sds((b, 1, 32, 128), jnp.bfloat16), sds((b, ctx, 8, 128), jnp.bfloat16)
    lengths = sds((b,), jnp.int32)
    lower(lambda q, k, v, n: kernels.decode_attention(q, k, v, n, backend="triton", interpret=False),
          "triton", q, kv, kv, lengths, monkeypatch=monkeypatch)
    pages, tables = sds((b * ctx // 64, 64, 8, 128), jnp.bfloat16), sds((b, ctx // 64), jnp.int32)
    lower(lambda q, kp, vp, t, n: kernels.paged_decode_attention(q, kp, vp, t, n, backend="triton",
                                                                 interpret=False),
          "triton", q, pages, pages, tables, lengths, monkeypatch=monkeypatch)


@pytest.mark.parametrize("page_size,d,dtype,kw", [
    (16, 64, jnp.bfloat16, dict()),
    (32, 128, jnp.float32, dict(sliding_window=50)),
    (128, 256, jnp.bfloat16, dict(softcap=20.0)),
])
def test_paged_decode_lowers_for_triton(page_size, d, dtype, kw, monkeypatch):
    b, t, hq, hk, pages_per_seq = 3, 1, 8, 2, 7
    q = sds((b, t, hq, d), dtype)
    pages = sds((b * pages_per_seq + 2, page_size, hk, d), dtype)
    lower(lambda q, kp, vp, tables, n: kernels.paged_decode_attention(
        q, kp, vp, tables, n, backend="triton", interpret=False, **kw),
        "triton", q, pages, pages, sds((b, pages_per_seq), jnp.int32), sds((b,), jnp.int32),
        monkeypatch=monkeypatch)


# --------------------------------------------------------------------------- model level

def tiny_model(family: str, scan_layers: bool, sliding_window: int | None):
    """(model module, config, abstract params) of a tiny bf16 model with attn_implementation="pallas".
    Gemma-2 adds logit soft-capping and alternating sliding/full layers (a traced window under scan)."""
    if family == "llama":
        from zoo.models import llama as module
        from zoo.models.llama.config import LlamaConfig as Config
        extra = {}
    else:
        from zoo.models.gemma2 import model as module
        from zoo.models.gemma2.config import Gemma2Config as Config
        extra = {"attn_logit_softcapping": 50.0}
    cfg = Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=64,
                 sliding_window=sliding_window, dtype="bfloat16", attn_implementation="pallas",
                 scan_layers=scan_layers, **extra)
    return module, cfg, jax.eval_shape(lambda: module.init(cfg, jax.random.key(0)))


@pytest.mark.parametrize("backend", sorted(PLATFORMS))
@pytest.mark.parametrize("family,scan_layers,window", [("llama", True, None), ("llama", False, 16),
                                                       ("gemma2", True, 8)],
                         ids=["llama_scan", "llama_unrolled_window", "gemma2_softcap_alternating"])
def test_model_pallas_forward_and_decode_step_lower(backend, family, scan_layers, window, monkeypatch):
    """attn_implementation="pallas" in a tiny model: a left-padded prefill (flash kernel) and a
    one-token step against a static cache (flash-decoding on GPU; the jnp reference on TPU,
    where the decode kernel is not written yet), exported as if the default device were a GPU/TPU
    (the kernels pick backend and interpret mode from jax.default_backend() at trace time)."""
    monkeypatch.setattr(jax, "default_backend", lambda: {"triton": "gpu", "mosaic_tpu": "tpu"}[backend])
    model, cfg, params = tiny_model(family, scan_layers, window)
    b, t = 2, 24
    ids, mask = sds((b, t), jnp.int32), sds((b, t), jnp.int32)
    prefill = lower(lambda p, i, m: model.forward(p, cfg, i, attention_mask=m)[0], backend, params, ids, mask,
                    monkeypatch=monkeypatch)
    assert prefill.count(CUSTOM_CALL[backend]) >= (1 if scan_layers else cfg.num_hidden_layers)

    cache = jax.eval_shape(lambda: model.init_cache(cfg, b, 40))
    step_ids, step_mask = sds((b, 1), jnp.int32), sds((b, 1), jnp.int32)

    def step(p, c, i, m):
        return model.forward(p, cfg, i, attention_mask=m, cache=c)

    if backend == "triton":
        lower(step, backend, params, cache, step_ids, step_mask, monkeypatch=monkeypatch)
    else:
        export.export(jax.jit(step), platforms=["tpu"], disabled_checks=UNCHECKED)(params, cache, step_ids,
                                                                                    step_mask)


def test_training_gradient_through_llama_lowers_for_triton(monkeypatch):
    """jax.grad of a loss through the model: the flash backward kernels inside lax.scan + remat."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    model, cfg, params = tiny_model("llama", True, None)
    ids = sds((2, 32), jnp.int32)

    def loss(p, i):
        return jnp.mean(model.forward(p, cfg, i)[0])

    text = lower(jax.grad(loss), "triton", params, ids, monkeypatch=monkeypatch)
    assert text.count(CUSTOM_CALL["triton"]) >= 3


def test_lowering_check_catches_interpret_mode():
    """The custom-call assertion is what makes these tests able to fail: interpret mode (or the
    reference) lowers to plain HLO and must be rejected."""
    q = sds((1, 32, 2, 64), jnp.bfloat16)
    with pytest.raises(AssertionError, match="no Pallas kernel"):
        lower(lambda q, k, v: kernels.flash_attention(q, k, v, backend="triton", interpret=True),
              "mosaic_tpu", q, q, q)


def test_tt_dot_check_catches_small_tiles(monkeypatch):
    """An 8-row tl.dot lowers through Pallas but cannot compile in Triton: the check sees it."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    def kernel(a_ref, b_ref, o_ref):
        o_ref[...] = jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

    def small_dot(a, b):
        return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((8, 16), jnp.float32),
                              compiler_params=plgpu.CompilerParams())(a, b)  # Triton, not Mosaic GPU

    with pytest.raises(AssertionError, match="16x16x16"):
        lower(small_dot, "triton", sds((8, 16), jnp.bfloat16), sds((16, 16), jnp.bfloat16),
              monkeypatch=monkeypatch)


def test_blocks_below_the_compiled_minimum_are_clear_errors():
    """Blocks that would lower but not compile (Triton < 16, TPU < 128 lanes) fail up front,
    naming the problem; interpret mode still takes them (the CPU tests use 16)."""
    q = sds((1, 64, 2, 64), jnp.bfloat16)
    for backend, block in (("triton", 8), ("mosaic_tpu", 64)):
        with pytest.raises(ValueError, match=f"{backend} kernels need blocks >="):
            jax.eval_shape(lambda q: kernels.flash_attention(q, q, q, backend=backend, interpret=False,
                                                             block_q=block, block_k=block), q)
    jax.eval_shape(lambda q: kernels.flash_attention(q, q, q, backend="mosaic_tpu", interpret=True,
                                                     block_q=16, block_k=16), q)
    q1, kv, n = sds((1, 1, 2, 64), jnp.bfloat16), sds((1, 64, 2, 64), jnp.bfloat16), sds((1,), jnp.int32)
    with pytest.raises(ValueError, match="block_k"):
        jax.eval_shape(lambda q, k, n: kernels.decode_attention(q, k, k, n, backend="triton", interpret=False,
                                                                block_k=8), q1, kv, n)
    with pytest.raises(ValueError, match="page_size must be a power of two"):
        pages = sds((10, 24, 2, 64), jnp.bfloat16)
        jax.eval_shape(lambda q, p, t, n: kernels.paged_decode_attention(q, p, p, t, n, backend="triton",
                                                                         interpret=False),
                       q1, pages, sds((1, 4), jnp.int32), n)
    with kernels.pallas_block_sizes(decode_block_k=8), pytest.raises(ValueError, match="decode_block_k"):
        jax.eval_shape(lambda q, k, n: kernels.decode_attention(q, k, k, n, backend="triton", interpret=False),
                       q1, kv, n)
