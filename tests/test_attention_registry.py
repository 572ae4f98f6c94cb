"""The attention registry at model level: attn_implementation="pallas" (Pallas interpret mode on
CPU) gives the logits and greedy tokens of "xla"; impossible or unknown implementations fail
clearly; "auto" falls back with a log line; block-size overrides reach the kernels.

"xla" itself is checked against PyTorch Transformers in the per-family test files, so "pallas"
== "xla" here chains the kernels to the oracle. Models are tiny; prompts are longer than
``DECODE_MAX_Q_TOKENS`` so prefill runs the flash kernel and decoding the flash-decoding one.
"""
from __future__ import annotations

import logging

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, left_padded_batch, make_hf_model, save_hf
from encoder_parity import padded_batch

import kernels
from kernels import from_mask_info
from kernels.block_sizes import BlockSizes
from zoo import AutoModel, AutoModelForCausalLM
from zoo.nn import attention as attn

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 1, "head_dim": 16}),
}
SEQ = 11  # > DECODE_MAX_Q_TOKENS: an uncached forward runs the flash (prefill) kernel


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for name, (cfg_cls, model_cls, extra) in FAMILIES.items():
        hf = make_hf_model(cfg_cls, model_cls, seed=len(out) + 1, **{**BASE, **extra})
        out[name] = save_hf(hf, tmp_path_factory.mktemp(name))
    return out


class KernelSpy:
    """Counts which Pallas entry points model code reaches (calls happen at trace time)."""

    def __init__(self, monkeypatch):
        jax.clear_caches()  # a model traced by an earlier test would not call the kernels again
        self.calls = {"flash": 0, "decode": 0}
        for name, key in (("flash_attention", "flash"), ("decode_attention", "decode")):
            original = getattr(from_mask_info, name)
            monkeypatch.setattr(from_mask_info, name, self._counting(original, key))

    def _counting(self, fn, key):
        def wrapped(*args, **kwargs):
            self.calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped


def pallas_calls(fn, *args) -> list:
    """The ``pallas_call`` equations anywhere in ``fn``'s jaxpr (through jit, scan, custom_vjp)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                found.append(eqn)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, jax_core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax_core.Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def kernel_grids(fn, *args) -> dict[str, tuple]:
    grids = {}
    for eqn in pallas_calls(fn, *args):
        grids[str(eqn.params["name"])] = tuple(eqn.params["grid_mapping"].grid)
    return grids


# --------------------------------------------------------------------------- same numbers as "xla"

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pallas_logits_match_xla(folders, family, monkeypatch):
    """Left-padded batch, both layer layouts (scan: per-layer window traced), GQA/MQA, windows."""
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=SEQ, seed=7)
    valid = mask.astype(bool)
    spy = KernelSpy(monkeypatch)
    for scan in (True, False) if family == "mistral" else (True,):
        xla = AutoModelForCausalLM.from_pretrained(folders[family], scan_layers=scan)
        pallas = AutoModelForCausalLM.from_pretrained(folders[family], scan_layers=scan,
                                                      attn_implementation="pallas")
        want = np.asarray(xla(ids, attention_mask=mask).logits)
        got = np.asarray(pallas(ids, attention_mask=mask).logits)
        assert got.shape == want.shape
        assert np.all(np.isfinite(got))
        assert_close_rel(got, want, 1e-5, valid)  # padded query rows differ by design (zeros vs uniform)
    assert spy.calls["flash"] > 0 and spy.calls["decode"] == 0


@pytest.mark.parametrize("family,cache", [("llama", None), ("mistral", None), ("mistral", "sliding_window"),
                                          ("qwen3", None)])
def test_pallas_cached_generate_matches_xla(folders, family, cache, monkeypatch):
    """Prefill (flash kernel) + decode steps (flash-decoding) through generate: identical greedy
    tokens; the rolling cache exercises out-of-order key slots."""
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=9, seed=11)
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, cache_implementation=cache)
    want = AutoModelForCausalLM.from_pretrained(folders[family]).generate(ids, **kw)
    spy = KernelSpy(monkeypatch)
    got = AutoModelForCausalLM.from_pretrained(folders[family], attn_implementation="pallas").generate(ids, **kw)
    np.testing.assert_array_equal(got, want)
    assert spy.calls["flash"] > 0 and spy.calls["decode"] > 0


def test_pallas_cached_logits_match_xla(folders):
    """Chunked prefill into a static cache (q_len < kv_len, empty slots) then a few single
    decode steps: the logits, not only the argmax, agree with the xla path."""
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=SEQ + 3, seed=5)
    split = SEQ - 1
    outs = {}
    for impl in ("xla", "pallas"):
        model = AutoModelForCausalLM.from_pretrained(folders["mistral"], attn_implementation=impl)
        cache = model.init_cache(ids.shape[0], SEQ + 6)
        step = model(ids[:, :split], attention_mask=mask[:, :split], past_key_values=cache)
        logits = [np.asarray(step.logits)]
        for t in range(split, ids.shape[1]):
            # the model reads the new tokens' validity from the mask's last columns: one shape, one compile
            step = model(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1], past_key_values=step.past_key_values)
            logits.append(np.asarray(step.logits))
        outs[impl] = np.concatenate(logits, axis=1)
    assert_close_rel(outs["pallas"], outs["xla"], 1e-5, mask.astype(bool))


def test_pallas_gradients_match_xla(folders):
    """Training goes through the flash backward: parameter gradients agree with xla's."""
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=SEQ, seed=3)
    grads = {}
    for impl in ("xla", "pallas"):
        model = AutoModelForCausalLM.from_pretrained(folders["llama"], attn_implementation=impl)

        def loss(params, model=model):
            logits = type(model)(model.config, params)(ids, attention_mask=mask).logits
            return jnp.sum(jnp.where(mask[..., None] > 0, logits, 0.0) ** 2) * 1e-3

        grads[impl] = jax.grad(loss)(model.params)
    for got, want in zip(jax.tree.leaves(grads["pallas"]), jax.tree.leaves(grads["xla"])):
        assert_close_rel(got, want, 1e-4)


OTHER_FAMILIES = {
    # absolute positions, MHA, fused qkv
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", AutoModelForCausalLM,
             dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1)),
    # bidirectional encoder, symmetric local window on every 2nd layer, right and left padding
    "modernbert": ("ModernBertConfig", "ModernBertModel", AutoModel,
                   dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=40, global_attn_every_n_layers=2, local_attention=4,
                        initializer_range=0.1, pad_token_id=0, max_position_embeddings=64)),
}


@pytest.mark.parametrize("family", sorted(OTHER_FAMILIES))
def test_pallas_matches_xla_in_other_families(tmp_path, family):
    cfg_cls, model_cls, auto, config = OTHER_FAMILIES[family]
    folder = save_hf(make_hf_model(cfg_cls, model_cls, **config), tmp_path / family)
    ids, mask = padded_batch(config["vocab_size"], pad=0, seq=SEQ)
    outs = {}
    for impl in ("xla", "pallas"):
        out = auto.from_pretrained(folder, attn_implementation=impl)(ids, attention_mask=mask)
        outs[impl] = np.asarray(out.logits if auto is AutoModelForCausalLM else out.last_hidden_state)
    assert_close_rel(outs["pallas"], outs["xla"], 1e-5, mask.astype(bool))


# --------------------------------------------------------------------------- clear errors

def test_cudnn_on_cpu_is_a_clear_error(folders):
    with pytest.raises(ValueError, match="attn_implementation='cudnn' cannot run on platform 'cpu'"):
        AutoModelForCausalLM.from_pretrained(folders["llama"], attn_implementation="cudnn")
    q = jax.random.normal(jax.random.key(0), (1, 4, 2, 8))
    info = attn.MaskInfo(jnp.arange(4)[None], jnp.arange(4)[None], jnp.ones((1, 4), bool))
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        attn.attention(q, q, q, info, implementation="cudnn")


def test_unknown_implementation_is_a_clear_error(folders):
    with pytest.raises(ValueError, match=r"unknown attn_implementation 'flash_attention_2'; known: .*pallas"):
        AutoModelForCausalLM.from_pretrained(folders["llama"], attn_implementation="flash_attention_2")
    q = jax.random.normal(jax.random.key(1), (1, 4, 2, 8))
    info = attn.MaskInfo(jnp.arange(4)[None], jnp.arange(4)[None], jnp.ones((1, 4), bool))
    with pytest.raises(ValueError, match="unknown attn_implementation 'Pallas'"):
        attn.attention(q, q, q, info, implementation="Pallas")


def test_auto_falls_back_to_xla_with_a_log_line(folders, caplog):
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=SEQ, seed=2)
    with caplog.at_level(logging.INFO, logger="zoo.nn.attention"):
        auto = AutoModelForCausalLM.from_pretrained(folders["llama"], attn_implementation="auto")
    assert attn.resolve_implementation("auto") == "xla"
    lines = [r.getMessage() for r in caplog.records if r.name == "zoo.nn.attention"]
    assert any("'auto'" in line and "falling back to 'xla'" in line and "cpu" in line for line in lines), lines
    xla = AutoModelForCausalLM.from_pretrained(folders["llama"])
    np.testing.assert_array_equal(np.asarray(auto(ids, attention_mask=mask).logits),
                                  np.asarray(xla(ids, attention_mask=mask).logits))


# --------------------------------------------------------------------------- block sizes

def test_process_wide_block_sizes_reach_a_jitted_model(folders):
    """set_pallas_block_sizes changes the kernel grid of an already-traced model and the
    logits stay those of xla; restoring the table restores the grid."""
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=SEQ, seed=9)
    valid = mask.astype(bool)
    model = AutoModelForCausalLM.from_pretrained(folders["qwen3"], attn_implementation="pallas")
    want = np.asarray(AutoModelForCausalLM.from_pretrained(folders["qwen3"])(ids, attention_mask=mask).logits)

    def run(ids):
        return model(ids, attention_mask=mask).logits

    default = np.asarray(run(ids))        # traced and compiled with the table's blocks
    grid = kernel_grids(run, ids)["flash_attention_fwd"]
    assert grid[2] == 1                   # 11 queries fit one 16-row block
    try:
        kernels.set_pallas_block_sizes(block_q=4, block_k=8)
        small = np.asarray(run(ids))
        assert kernel_grids(run, ids)["flash_attention_fwd"][2] == 3   # ceil(11 / 4) query blocks
    finally:
        kernels.set_pallas_block_sizes()
    assert kernel_grids(run, ids)["flash_attention_fwd"] == grid
    assert_close_rel(default, want, 1e-5, valid)
    assert_close_rel(small, want, 1e-5, valid)


def test_per_call_block_sizes_and_context_manager():
    """Per-call block_q/block_k beat the process-wide override, which beats the table."""
    kq, kk, kv = jax.random.split(jax.random.key(21), 3)
    q = jax.random.normal(kq, (1, 24, 2, 16))
    k = jax.random.normal(kk, (1, 40, 1, 16))
    v = jax.random.normal(kv, (1, 40, 1, 16))
    want = jax.jit(kernels.attention_reference, static_argnames="causal")(q, k, v, causal=True)

    def fwd_grid(**kw):
        fn = jax.jit(lambda q: kernels.flash_attention(q, k, v, causal=True, interpret=True, **kw))
        out = np.asarray(fn(q))
        assert_close_rel(out, want, 1e-5)
        return kernel_grids(fn, q)["flash_attention_fwd"]

    assert fwd_grid()[2] == 1                                 # table clamped to 32 rows
    with kernels.pallas_block_sizes(block_q=8, block_k=8) as sizes:
        assert sizes.block_q == 8
        assert fwd_grid()[2] == 3
        assert fwd_grid(block_q=4, block_k=16)[2] == 6          # per call wins
    assert kernels.get_pallas_block_sizes() == BlockSizes()      # restored on exit
    with pytest.raises(ValueError, match="power of two"):
        kernels.set_pallas_block_sizes(block_q=12)
    with pytest.raises(ValueError, match="power of two"):
        kernels.flash_attention(q, k, v, block_k=24, interpret=True)


def test_decode_block_and_split_overrides():
    """decode_block_k / num_splits overrides change the flash-decoding grid, not the numbers."""
    kq, kk, kv = jax.random.split(jax.random.key(22), 3)
    q = jax.random.normal(kq, (2, 1, 4, 16))
    k = jax.random.normal(kk, (2, 64, 2, 16))
    v = jax.random.normal(kv, (2, 64, 2, 16))
    lengths = jnp.array([64, 23], jnp.int32)
    want = jax.jit(kernels.decode_attention_reference)(q, k, v, lengths)

    def grid():
        fn = jax.jit(lambda q: kernels.decode_attention(q, k, v, lengths, interpret=True))
        assert_close_rel(np.asarray(fn(q)), want, 1e-5)
        return kernel_grids(fn, q)["decode_attention"]

    with kernels.pallas_block_sizes(decode_block_k=8, num_splits=4):
        assert grid() == (2, 2, 4)
    with kernels.pallas_block_sizes(num_splits=2):
        assert grid() == (2, 2, 2)
