"""Logits processors vs. Transformers' processors (the oracle), on shared random inputs.

Our processors see a static [B, L] buffer with garbage after ``cur_len`` (and a traced
``cur_len`` under jit); Transformers' see ``input_ids[:, :cur_len]``. Results must agree
to 1e-5, with -inf masks compared exactly.
"""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers.generation import logits_process as hf
from transformers.generation.utils import GenerationMixin

from zoo.generation import (
    GenerationConfig,
    apply_temperature,
    bad_words,
    begin_suppress_tokens,
    build_logits_processor,
    epsilon_filter,
    eta_filter,
    force_bos,
    force_eos,
    greedy_next_token,
    mask_eos_before_min_length,
    mask_eos_before_min_new_tokens,
    min_p_filter,
    no_repeat_ngram,
    renormalize,
    repetition_penalty,
    sample_next_token,
    sequence_bias,
    suppress_tokens,
    top_k_filter,
    top_p_filter,
    typical_p_filter,
)

B, L, V = 4, 24, 64
ALPHABET = 6  # ids drawn from a small alphabet so tokens and n-grams repeat


def make_inputs(seed, scale=2.0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, ALPHABET, size=(B, L)).astype(np.int32)
    logits = (rng.standard_normal((B, V)) * scale).astype(np.float32)
    return ids, logits


def assert_match(ours, theirs, atol=1e-5):
    ours = np.asarray(ours, dtype=np.float64)
    theirs = theirs.detach().double().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs), err_msg="-inf masks differ")
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(theirs), err_msg="+inf masks differ")
    fin = np.isfinite(theirs)
    np.testing.assert_allclose(ours[fin], theirs[fin], atol=atol, rtol=1e-5)


def run_seq(fn, ids, cur_len, logits):
    """Run a sequence-dependent processor under jit (pass a jitted fn to reuse it) with cur_len traced."""
    fn = fn if hasattr(fn, "lower") else jax.jit(fn)
    return fn(jnp.asarray(ids), jnp.int32(cur_len), jnp.asarray(logits))


def hf_call(proc, ids, cur_len, logits):
    return proc(torch.from_numpy(ids[:, :cur_len].astype(np.int64)), torch.from_numpy(logits.copy()))


# ----------------------------------------------------------------------------- warpers
@pytest.mark.parametrize("keep", [1, 3])
def test_warpers_match_transformers(keep):
    (ids0, logits0), (ids1, logits1) = make_inputs(0), make_inputs(1, scale=4.0)
    ids, logits = np.concatenate([ids0, ids1]), np.concatenate([logits0, logits1])
    x = jnp.asarray(logits)
    cases = [
        (lambda z: apply_temperature(z, 0.7), hf.TemperatureLogitsWarper(0.7)),
        (lambda z: renormalize(z), hf.LogitNormalization()),
    ]
    for k in (1, 5, 100):
        cases.append((lambda z, k=k: top_k_filter(z, k, keep), hf.TopKLogitsWarper(k, min_tokens_to_keep=keep)))
    for p in (0.1, 0.5, 0.9, 0.99):
        cases.append((lambda z, p=p: top_p_filter(z, p, keep), hf.TopPLogitsWarper(p, min_tokens_to_keep=keep)))
    for p in (0.05, 0.3, 0.9):
        cases.append((lambda z, p=p: min_p_filter(z, p, keep), hf.MinPLogitsWarper(p, min_tokens_to_keep=keep)))
    for p in (0.2, 0.6, 0.95):
        cases.append((lambda z, p=p: typical_p_filter(z, p, keep), hf.TypicalLogitsWarper(p, min_tokens_to_keep=keep)))
    for e in (0.005, 0.02, 0.2):
        cases.append((lambda z, e=e: epsilon_filter(z, e, keep), hf.EpsilonLogitsWarper(e, min_tokens_to_keep=keep)))
        cases.append((lambda z, e=e: eta_filter(z, e, keep), hf.EtaLogitsWarper(e, min_tokens_to_keep=keep)))
    # eager (op-by-op, primitives cached) is cheaper here than one jit compile per parameter value
    for ours, theirs in cases:
        assert_match(ours(x), hf_call(theirs, ids, L, logits))


def test_warpers_on_ties():
    """Equal logits put the cumulative mass exactly on the top_p boundary (kept tokens: `<=` rule)."""
    logits = np.zeros((2, 8), np.float32)
    logits[1, :4] = 1.0
    ids = np.zeros((2, 1), np.int64)
    for p in (0.25, 0.5, 0.75):
        assert_match(top_p_filter(jnp.asarray(logits), p), hf_call(hf.TopPLogitsWarper(p), ids, 1, logits))
    assert_match(top_k_filter(jnp.asarray(logits), 3), hf_call(hf.TopKLogitsWarper(3), ids, 1, logits))


def test_warpers_on_already_masked_logits():
    """Warpers run after other processors put -inf in; the masks must still agree."""
    ids, logits = make_inputs(3)
    logits[:, ::3] = -np.inf
    x = jnp.asarray(logits)
    pairs = [
        (top_k_filter(x, 10), hf.TopKLogitsWarper(10)),
        (top_p_filter(x, 0.8), hf.TopPLogitsWarper(0.8)),
        (min_p_filter(x, 0.1), hf.MinPLogitsWarper(0.1)),
        (typical_p_filter(x, 0.8), hf.TypicalLogitsWarper(0.8)),
        (eta_filter(x, 0.05), hf.EtaLogitsWarper(0.05)),
        (renormalize(x), hf.LogitNormalization()),
    ]
    for ours, theirs in pairs:
        assert_match(ours, hf_call(theirs, ids, L, logits))


# ----------------------------------------------------------------------------- sequence processors
CUR_LENS = [1, 2, 3, 5, 11, 23, 24]


@pytest.mark.parametrize("penalty", [0.7, 1.5])
@pytest.mark.parametrize("with_pads", [False, True])
def test_repetition_penalty(penalty, with_pads):
    ids, logits = make_inputs(4)
    ids[:, :2] = np.arange(30, 30 + 2 * B).reshape(B, 2)  # tokens only present in the "padding"
    pads = np.array([0, 1, 2, 0], np.int32) if with_pads else None
    fn = jax.jit(lambda i, t, x: repetition_penalty(i, t, x, penalty, None if pads is None else jnp.asarray(pads)))
    for cur_len in CUR_LENS:
        ours = run_seq(fn, ids, cur_len, logits)
        proc = hf.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=None if pads is None
                                                   else torch.from_numpy(pads.astype(np.int64)))
        assert_match(ours, hf_call(proc, ids, cur_len, logits))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram(n):
    ids, logits = make_inputs(5)
    ids[:, :] = np.random.default_rng(5).integers(0, 3, size=(B, L))  # tiny alphabet: many repeats
    banned_somewhere = False
    fn = jax.jit(lambda i, t, x: no_repeat_ngram(i, t, x, n))
    for cur_len in CUR_LENS + [n - 1, n, n + 1]:
        if cur_len < 1:
            continue
        ours = run_seq(fn, ids, cur_len, logits)
        theirs = hf_call(hf.NoRepeatNGramLogitsProcessor(n), ids, cur_len, logits)
        assert_match(ours, theirs)
        banned_somewhere |= bool(np.isneginf(np.asarray(ours)).any())
    assert banned_somewhere, "test inputs never exercised a ban"


def _tail_sequences(ids, cur_len):
    """Biased sequences built from row 0's tail, so multi-token prefixes really match."""
    t1, t2 = int(ids[0, cur_len - 1]), int(ids[0, cur_len - 2]) if cur_len >= 2 else 7
    return [
        [[9], 1.5],
        [[t1, 40], -2.0],
        [[t2, t1, 41], 3.0],
        [[t2, t1, 40], 0.25],
        [[50, t1, 42], 7.0],  # prefix that does not match
        [[*map(int, ids[0, :3]), 44], 5.0],  # matches the buffer start: only valid once cur_len >= 3
        [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 43], 1.0],
    ]


def test_sequence_bias():
    ids, logits = make_inputs(6)
    for cur_len in [1, 2, 3, 9, 24]:
        seqs = _tail_sequences(ids, cur_len)
        ours = run_seq(lambda i, t, x: sequence_bias(i, t, x, tuple((tuple(s), b) for s, b in seqs)),
                       ids, cur_len, logits)
        assert_match(ours, hf_call(hf.SequenceBiasLogitsProcessor(seqs), ids, cur_len, logits))


def test_sequence_bias_out_of_vocab_raises():
    ids, logits = make_inputs(6)
    with pytest.raises(ValueError, match="out of range"):
        sequence_bias(jnp.asarray(ids), 3, jnp.asarray(logits), (((V + 1,), 1.0),))


@pytest.mark.parametrize("eos", [None, 2, [2, 5]])
def test_bad_words(eos):
    ids, logits = make_inputs(7)
    for cur_len in [1, 2, 4, 13, 24]:
        t1, t2 = int(ids[1, cur_len - 1]), int(ids[1, max(cur_len - 2, 0)])
        words = [[2], [11], [t1, 33], [t2, t1, 34], [60, 35], [5]]
        ours = run_seq(lambda i, t, x: bad_words(i, t, x, tuple(map(tuple, words)), eos), ids, cur_len, logits)
        assert_match(ours, hf_call(hf.NoBadWordsLogitsProcessor(words, eos), ids, cur_len, logits))


def test_step_dependent_processors():
    ids, logits = make_inputs(8)
    prompt_len, max_length, eos = 5, 12, [2, 7]
    pairs = [
        (lambda i, t, x: suppress_tokens(x, (1, 3, 99)), hf.SuppressTokensLogitsProcessor([1, 3, 99])),
        (lambda i, t, x: begin_suppress_tokens(t, x, (4, 6), prompt_len),
         hf.SuppressTokensAtBeginLogitsProcessor([4, 6], prompt_len)),
        (lambda i, t, x: force_bos(t, x, 3), hf.ForcedBOSTokenLogitsProcessor(3)),
        (lambda i, t, x: force_eos(t, x, eos, max_length), hf.ForcedEOSTokenLogitsProcessor(max_length, eos)),
        (lambda i, t, x: mask_eos_before_min_length(t, x, eos, 9), hf.MinLengthLogitsProcessor(9, eos)),
        (lambda i, t, x: mask_eos_before_min_new_tokens(t, x, eos, prompt_len, 3),
         hf.MinNewTokensLengthLogitsProcessor(prompt_len, 3, eos)),
    ]
    pairs = [(jax.jit(ours), theirs) for ours, theirs in pairs]
    for cur_len in range(1, 14):
        for ours, theirs in pairs:
            assert_match(run_seq(ours, ids, cur_len, logits), hf_call(theirs, ids, cur_len, logits))


# ----------------------------------------------------------------------------- the composed chain
def hf_processor_list(cfg: GenerationConfig, prompt_len: int, attention_mask: np.ndarray):
    """Transformers' own `_get_logits_processor`, on a config made from ours the way generate() would."""
    hf_cfg = HFGenerationConfig.from_dict(cfg.to_dict())
    hf_cfg.update(**HFGenerationConfig._get_default_generation_params(), defaults_only=True)
    hf_cfg.max_length, hf_cfg.min_length = cfg.resolve_lengths(prompt_len)
    hf_cfg._eos_token_tensor = None if cfg.eos_token_id is None else torch.tensor(list(cfg.eos_token_ids))
    dummy = SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=False))
    dummy._merge_criteria_processor_list = lambda default, custom: default
    return GenerationMixin._get_logits_processor(
        dummy, hf_cfg, input_ids_seq_length=prompt_len, device="cpu",
        model_kwargs={"attention_mask": torch.from_numpy(attention_mask.astype(np.int64))},
    )


CHAIN_CONFIGS = {
    "greedy_with_ignored_sampling_params": dict(
        do_sample=False, temperature=0.5, top_k=3, top_p=0.5, repetition_penalty=1.3, no_repeat_ngram_size=2,
        bad_words_ids=[[4], [1, 5]], eos_token_id=[2, 3], min_new_tokens=3, suppress_tokens=[8],
        begin_suppress_tokens=[0], forced_eos_token_id=3, max_new_tokens=6),
    "sampling_all_warpers": dict(
        do_sample=True, temperature=0.8, top_k=20, top_p=0.9, min_p=0.02, typical_p=0.95, epsilon_cutoff=0.001,
        eta_cutoff=0.002, sequence_bias=[[[1, 2], 2.0], [[5], -1.0]], renormalize_logits=True, eos_token_id=2,
        min_length=9, forced_bos_token_id=1, max_length=14),
    "beam_sample_min_tokens_to_keep": dict(
        do_sample=True, num_beams=2, top_k=2, top_p=0.3, eos_token_id=[2, 5], repetition_penalty=0.9),
    "sampling_defaults": dict(do_sample=True),
    "forced_bos_with_begin_suppress": dict(forced_bos_token_id=1, begin_suppress_tokens=[3, 4], max_new_tokens=4,
                                           suppress_tokens=[9]),
    "nothing": dict(),
}


@pytest.mark.parametrize("prompt_len", [1, 6])
@pytest.mark.parametrize("name", list(CHAIN_CONFIGS))
def test_chain_matches_transformers(name, prompt_len):
    cfg = GenerationConfig(**CHAIN_CONFIGS[name])
    ids, _ = make_inputs(9)
    pads = np.array([0, 2, 1, 0], np.int32) if prompt_len > 2 else np.zeros(B, np.int32)
    mask = (np.arange(prompt_len)[None] >= pads[:, None]).astype(np.int32)
    ids[np.arange(L)[None] < pads[:, None]] = 0  # pad token id 0 in the padding
    max_length, _ = cfg.resolve_lengths(prompt_len)
    hf_list = hf_processor_list(cfg, prompt_len, mask)

    @jax.jit
    def ours(ids, cur_len, logits, prompt_len, pads):
        proc = build_logits_processor(cfg, prompt_len=prompt_len, prompt_pad_len=pads)
        return proc(ids, cur_len, logits)

    rng = np.random.default_rng(10)
    for cur_len in range(prompt_len, min(max_length, L) + 1):
        logits = (rng.standard_normal((B, V)) * 3).astype(np.float32)
        got = ours(jnp.asarray(ids), jnp.int32(cur_len), jnp.asarray(logits), jnp.int32(prompt_len), jnp.asarray(pads))
        assert_match(got, hf_call(hf_list, ids, cur_len, logits), atol=2e-5)


def test_chain_order_and_greedy_ignores_warpers():
    steps = build_logits_processor(GenerationConfig(**CHAIN_CONFIGS["greedy_with_ignored_sampling_params"]),
                                   prompt_len=4).steps
    assert steps == ("repetition_penalty", "no_repeat_ngram", "bad_words", "min_length", "min_new_tokens",
                     "force_eos", "suppress_tokens", "begin_suppress_tokens")
    steps = build_logits_processor(GenerationConfig(**CHAIN_CONFIGS["sampling_all_warpers"]), prompt_len=4).steps
    assert steps == ("sequence_bias", "min_length", "force_bos", "temperature", "top_k", "top_p", "min_p",
                     "typical_p", "epsilon_cutoff", "eta_cutoff", "renormalize")


def test_unsupported_option_is_an_error():
    cfg = GenerationConfig.from_dict({"guidance_scale": 1.5})
    with pytest.raises(NotImplementedError, match="guidance_scale"):
        build_logits_processor(cfg, prompt_len=3)


def test_greedy_loop_compiles_once_and_matches_transformers():
    """A tiny bigram 'model' decoded with lax.while_loop over a static buffer, vs a Python HF loop."""
    rng = np.random.default_rng(11)
    table = (rng.standard_normal((V, V)) * 2).astype(np.float32)
    cfg = GenerationConfig(max_new_tokens=10, repetition_penalty=1.5, no_repeat_ngram_size=2, eos_token_id=63,
                           min_new_tokens=2, bad_words_ids=[[5, 6]])
    traces = []

    @jax.jit
    def generate(buf, prompt_len):
        traces.append(1)
        max_length = prompt_len + cfg.max_new_tokens
        proc = build_logits_processor(cfg, prompt_len=prompt_len, max_length=max_length)

        def body(state):
            buf, cur_len = state
            logits = jnp.asarray(table)[buf[:, cur_len - 1]]
            tok = greedy_next_token(proc(buf, cur_len, logits))
            return jax.lax.dynamic_update_slice_in_dim(buf, tok[:, None], cur_len, axis=1), cur_len + 1

        return jax.lax.while_loop(lambda s: s[1] < max_length, body, (buf, prompt_len))[0]

    for prompt_len in (3, 5):
        prompt = rng.integers(0, V, size=(2, prompt_len))
        buf = np.zeros((2, 16), np.int32)
        buf[:, :prompt_len] = prompt
        out = np.asarray(generate(jnp.asarray(buf), jnp.int32(prompt_len)))
        hf_list = hf_processor_list(cfg, prompt_len, np.ones((2, prompt_len), np.int32))
        seq = torch.from_numpy(prompt.astype(np.int64))
        for _ in range(cfg.max_new_tokens):
            logits = torch.from_numpy(table[seq[:, -1].numpy()])
            seq = torch.cat([seq, hf_list(seq, logits).argmax(-1, keepdim=True)], dim=1)
        np.testing.assert_array_equal(out[:, : prompt_len + cfg.max_new_tokens], seq.numpy())
    assert len(traces) == 1, "a new prompt length must not retrace"


# ----------------------------------------------------------------------------- sampling statistics
def _draw(logits_row, cfg, n=20000, seed=0):
    proc = build_logits_processor(cfg, prompt_len=1)
    processed = proc(jnp.zeros((1, 2), jnp.int32), 1, jnp.asarray(logits_row)[None])
    draws = sample_next_token(jax.random.key(seed), jnp.broadcast_to(processed, (n, logits_row.shape[0])))
    return np.asarray(processed[0]), np.asarray(draws)


def _check_frequencies(allowed, probs, draws):
    counts = np.bincount(draws, minlength=probs.shape[0])
    assert counts[~allowed].sum() == 0, f"drew disallowed tokens {np.nonzero(counts * ~allowed)[0]}"
    expected = probs[allowed] * draws.shape[0]
    chi2 = float(((counts[allowed] - expected) ** 2 / expected).sum())
    assert chi2 < 20 + 5 * allowed.sum(), f"chi-square {chi2:.1f} too large for {allowed.sum()} categories"


@pytest.mark.parametrize("kwargs, n_allowed", [
    (dict(top_k=3, top_p=1.0), 3),
    (dict(top_k=0, top_p=0.7), None),
    (dict(top_k=0, min_p=0.2), None),
    (dict(top_k=4, top_p=0.9, temperature=0.5), None),
])
def test_sampling_draws_only_allowed_tokens_with_right_frequencies(kwargs, n_allowed):
    logits_row = np.array([2.0, 1.5, 1.2, 0.9, 0.5, 0.1, -0.3, -1.0, -2.0, 0.0], np.float32)
    cfg = GenerationConfig(do_sample=True, **kwargs)
    processed, draws = _draw(logits_row, cfg)
    allowed = np.isfinite(processed)
    if n_allowed is not None:
        assert allowed.sum() == n_allowed
    # independent expectation: the allowed set from Transformers, the probabilities from numpy
    hf_cfg = HFGenerationConfig(do_sample=True, **kwargs)
    hf_cfg.update(**HFGenerationConfig._get_default_generation_params(), defaults_only=True)
    hf_cfg._eos_token_tensor = None
    dummy = SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=False),
                            _merge_criteria_processor_list=lambda d, c: d)
    hf_out = GenerationMixin._get_logits_processor(dummy, hf_cfg, input_ids_seq_length=1, device="cpu")(
        torch.zeros((1, 1), dtype=torch.long), torch.from_numpy(logits_row[None].copy()))[0].numpy()
    np.testing.assert_array_equal(allowed, np.isfinite(hf_out))
    t = kwargs.get("temperature", 1.0)
    p = np.exp(logits_row / t - (logits_row / t).max()) * allowed
    _check_frequencies(allowed, p / p.sum(), draws)


def test_frequency_check_can_fail():
    """The chi-square bound is generous but not vacuous: a wrong distribution is rejected."""
    logits_row = np.array([2.0, 1.5, 1.2, 0.9, 0.5, 0.1, -0.3, -1.0, -2.0, 0.0], np.float32)
    _, draws = _draw(logits_row, GenerationConfig(do_sample=True, top_k=3, temperature=0.7))
    allowed = np.zeros(10, bool)
    allowed[:3] = True
    p = np.exp(logits_row) * allowed  # the temperature-1 distribution: wrong
    with pytest.raises(AssertionError, match="chi-square"):
        _check_frequencies(allowed, p / p.sum(), draws)


def test_greedy_and_sample_helpers():
    logits = jnp.array([[0.0, 3.0, 3.0, -jnp.inf], [-jnp.inf, -jnp.inf, 1.0, -jnp.inf]])
    np.testing.assert_array_equal(greedy_next_token(logits), [1, 2])
    for s in range(20):
        tok = np.asarray(sample_next_token(jax.random.key(s), logits))
        assert tok[0] in (0, 1, 2) and tok[1] == 2
    assert sample_next_token(jax.random.PRNGKey(0), logits).dtype == jnp.int32
