"""Beam search, assisted / prompt-lookup / speculative decoding, rolling caches, compile-once and
output contracts of generate(), checked against PyTorch Transformers' generate (the oracle)."""
import dataclasses

import jax
import numpy as np
import pytest
import torch
from conftest import left_padded_batch, make_hf_model, save_hf

from zoo import AutoModelForCausalLM

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.15, eos_token_id=5, pad_token_id=0)
DRAFT = dict(SMALL, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1)


def hf_generate(hf, ids, mask=None, **kw):
    mask = np.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    hf = make_hf_model("LlamaConfig", "LlamaForCausalLM", **SMALL)
    return hf, AutoModelForCausalLM.from_pretrained(save_hf(hf, tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="module")
def draft_pair(tmp_path_factory):
    hf = make_hf_model("LlamaConfig", "LlamaForCausalLM", seed=1, **DRAFT)
    return hf, AutoModelForCausalLM.from_pretrained(save_hf(hf, tmp_path_factory.mktemp("draft")))


@pytest.fixture(scope="module")
def draft(draft_pair):
    return draft_pair[1]


@pytest.fixture(scope="module")
def batch(llama):
    """A left-padded batch and an EOS id that ends row 1 early (its 2nd new token), so rows finish apart."""
    _, model = llama
    ids, mask = left_padded_batch(96, seq=6, seed=3)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None)
    eos = int(free[1, 7])
    assert not (free[0, 6:8] == eos).any()  # row 0 keeps going past that point
    return ids, mask, eos


# ---------------------------------------------------------------- beam search
BEAM_CASES = [  # num_beams, num_return_sequences, early_stopping, length_penalty
    (2, 1, False, 1.0),
    (3, 2, True, 1.0),
    (3, 3, "never", 2.0),
    (3, 1, "never", -1.5),
    (2, 2, True, 0.0),
]


@pytest.mark.parametrize("num_beams,num_return,early_stopping,length_penalty", BEAM_CASES)
def test_beam_search_matches_transformers(llama, batch, num_beams, num_return, early_stopping, length_penalty):
    hf, model = llama
    ids, mask, eos = batch
    kw = dict(max_new_tokens=8, num_beams=num_beams, num_return_sequences=num_return, early_stopping=early_stopping,
              length_penalty=length_penalty, eos_token_id=eos, do_sample=False)
    ref = hf_generate(hf, ids, mask, **kw).numpy()
    ours = model.generate(ids, attention_mask=mask, **kw)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def test_beam_scores_match_transformers(llama, batch):
    hf, model = llama
    ids, mask, eos = batch
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, eos_token_id=eos, length_penalty=1.3,
              return_dict_in_generate=True, output_scores=True)
    ref = hf_generate(hf, ids, mask, do_sample=False, **kw)
    ours = model.generate(ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(ours.sequences, ref.sequences.numpy())
    np.testing.assert_allclose(ours.sequences_scores, ref.sequences_scores.numpy(), rtol=1e-4, atol=1e-5)
    assert len(ours.scores) == len(ref.scores)
    for a, b in zip(ours.scores, ref.scores):
        assert a.shape == (3 * 3, 96)
        # Transformers keeps -inf where we keep a large negative number; compare the finite entries
        b = b.numpy()
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- assisted / prompt lookup
@pytest.mark.parametrize("k", [1, 4])
def test_assisted_and_prompt_lookup_greedy_equal_plain_greedy(llama, draft, batch, k):
    hf, model = llama
    ids, mask, eos = batch
    kw = dict(max_new_tokens=14, eos_token_id=eos)
    plain = model.generate(ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(plain, hf_generate(hf, ids, mask, do_sample=False, **kw).numpy())
    assisted = model.generate(ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=k, **kw)
    np.testing.assert_array_equal(assisted, plain)
    lookup = model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=k, **kw)
    np.testing.assert_array_equal(lookup, plain)


def test_prompt_lookup_accepts_drafts_on_repetitive_text(llama):
    """On a prompt the model continues by copying, lookup needs fewer rounds than tokens, same output."""
    from zoo.generation import assisted

    hf, model = llama
    plain = model.generate(np.array([[10, 11, 12, 13]]), max_new_tokens=24, eos_token_id=None)
    prompt = plain[:, :20]  # the model's own greedy text: its tail repeats (see the cycles greedy falls into)
    kw = dict(max_new_tokens=8, eos_token_id=None)
    ref = hf_generate(hf, prompt, do_sample=False, **kw).numpy()
    lookup = model.generate(prompt, prompt_lookup_num_tokens=4, **kw)
    np.testing.assert_array_equal(lookup, ref)
    # count verification rounds through the compiled pieces
    from zoo.generation.decode import _resolve_config, bucket_length, left_pad

    gen = _resolve_config(model, None, dict(prompt_lookup_num_tokens=4, **kw))
    gen = dataclasses.replace(gen, max_new_tokens=8, max_length=None)
    bucket = bucket_length(prompt.shape[1])
    ids_b, mask_b = left_pad(prompt.astype(np.int32), np.ones_like(prompt, np.int32), bucket, 0)
    pad_lens = jax.numpy.asarray((mask_b != 0).argmax(axis=1), jax.numpy.int32)
    state = assisted.assisted_prefill_fn(model, None, gen, ids_b, mask_b, jax.random.PRNGKey(0), 8, 4, ())
    state = assisted.assisted_loop_fn(model, None, gen, 4, state, bucket, pad_lens, np.int32(bucket + 8), ())
    assert int(state.rounds) < 7  # 7 new tokens after prefill: fewer rounds means drafts were accepted


def _assert_rows_close(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("how,eos", [("assistant", "second"), ("self", None), ("self", "second"), ("lookup", None)])
def test_assisted_scores_and_logits_match_transformers(llama, draft_pair, how, eos):
    """Transformers' assisted generate (batch 1): one processed score row and one raw logit row per
    generated token, the target's, for accepted drafts and the token after them alike."""
    hf, model = llama
    hf_draft, draft = draft_pair
    ids = np.array([[7, 3, 9, 3, 9, 11]])
    free = model.generate(ids, max_new_tokens=12, eos_token_id=None, repetition_penalty=1.3)
    eos_id = None if eos is None else int(free[0, 7])  # ends at the 2nd new token (unless it appeared before)
    kw = dict(max_new_tokens=12, eos_token_id=eos_id, repetition_penalty=1.3, return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    # "self": the target drafts for itself, so every draft is accepted and whole blocks of rows are kept
    theirs = {"assistant": dict(assistant_model=hf_draft), "self": dict(assistant_model=hf),
              "lookup": dict(prompt_lookup_num_tokens=3)}[how]
    ours_kw = {"assistant": dict(assistant_model=draft, num_assistant_tokens=3),
               "self": dict(assistant_model=model, num_assistant_tokens=3),
               "lookup": dict(prompt_lookup_num_tokens=3)}[how]
    ref = hf_generate(hf, ids, do_sample=False, **theirs, **kw)
    ours = model.generate(ids, **ours_kw, **kw)
    np.testing.assert_array_equal(ours.sequences, ref.sequences.numpy())
    assert ours.sequences.shape[1] - ids.shape[1] == len(ours.scores) == len(ours.logits)
    _assert_rows_close(ours.scores, ref.scores)
    _assert_rows_close(ours.logits, ref.logits)
    assert not np.allclose(ours.scores[1], ours.logits[1])  # the penalty made processed differ from raw


def test_assisted_scores_equal_plain_scores_in_a_batch(llama, draft, batch, k=3):
    """Left-padded batch whose rows end apart (Transformers' assisted decoding takes one row):
    every row and step equals plain greedy's, which matches Transformers (test_return_dict_shapes)."""
    _, model = llama
    ids, mask, eos = batch
    kw = dict(max_new_tokens=10, eos_token_id=eos, no_repeat_ngram_size=2, return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    plain = model.generate(ids, attention_mask=mask, **kw)
    # the target as its own assistant: every draft accepted, so whole K + 1 blocks of rows are kept
    for extra in (dict(assistant_model=draft, num_assistant_tokens=k), dict(assistant_model=model,
                  num_assistant_tokens=k), dict(prompt_lookup_num_tokens=k)):
        ours = model.generate(ids, attention_mask=mask, **extra, **kw)
        np.testing.assert_array_equal(ours.sequences, plain.sequences)
        _assert_rows_close(ours.scores, plain.scores)
        _assert_rows_close(ours.logits, plain.logits)


def test_assisted_rejects_conflicting_options(llama, draft):
    _, model = llama
    ids = np.array([[3, 4, 5]])
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(ids, max_new_tokens=3, assistant_model=draft, num_beams=2)
    with pytest.raises(ValueError, match="either assistant_model or prompt_lookup"):
        model.generate(ids, max_new_tokens=3, assistant_model=draft, prompt_lookup_num_tokens=2)


# ---------------------------------------------------------------- speculative sampling
TINY_V = 8
TINY = dict(SMALL, vocab_size=TINY_V, eos_token_id=None, pad_token_id=0, initializer_range=0.6)


def _next_probs(hf, prefixes: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(hf(torch.tensor(prefixes)).logits[:, -1].double(), -1).numpy()


def _second_token_marginal(hf, prompt: list[int]) -> np.ndarray:
    """P(2nd new token) = sum_t1 P(t1 | prompt) P(t2 | prompt, t1), exactly, from the PyTorch model."""
    p1 = _next_probs(hf, np.array([prompt]))[0]
    p2 = _next_probs(hf, np.array([prompt + [t] for t in range(TINY_V)]))
    return p1 @ p2


def test_speculative_sampling_follows_the_target_distribution(tmp_path):
    target_hf = make_hf_model("LlamaConfig", "LlamaForCausalLM", seed=2, **TINY)
    draft_hf = make_hf_model("LlamaConfig", "LlamaForCausalLM", seed=3, **dict(TINY, num_hidden_layers=1))
    target = AutoModelForCausalLM.from_pretrained(save_hf(target_hf, tmp_path / "t"))
    drafter = AutoModelForCausalLM.from_pretrained(save_hf(draft_hf, tmp_path / "d"))
    prompt = [1, 2, 3]
    p = _second_token_marginal(target_hf, prompt)
    q = _second_token_marginal(draft_hf, prompt)
    assert 0.5 * np.abs(p - q).sum() > 0.15  # the draft disagrees, so sampling from it would be caught

    n = 4000  # identical rows are independent draws; the 2nd new token passes the rejection rule
    kw = dict(max_new_tokens=2, do_sample=True, top_k=0, assistant_model=drafter, num_assistant_tokens=3)
    out = target.generate(np.tile(prompt, (n, 1)), key=jax.random.PRNGKey(7), **kw)
    freq = np.bincount(out[:, -1], minlength=TINY_V) / n
    tv = 0.5 * np.abs(freq - p).sum()
    assert tv < 0.04, f"total variation {tv:.3f} between speculative samples and the target distribution {p}"
    first = np.bincount(out[:, -2], minlength=TINY_V) / n
    assert 0.5 * np.abs(first - _next_probs(target_hf, np.array([prompt]))[0]).sum() < 0.04

    again = target.generate(np.tile(prompt, (n, 1)), key=jax.random.PRNGKey(7), **kw)
    np.testing.assert_array_equal(again, out)  # reproducible per key
    other = target.generate(np.tile(prompt, (n, 1)), key=jax.random.PRNGKey(8), **kw)
    assert not np.array_equal(other, out)


# ---------------------------------------------------------------- rolling caches
@pytest.mark.parametrize("cache_implementation", [None, "sliding_window"])
def test_mistral_far_beyond_sliding_window(tmp_path, cache_implementation):
    hf = make_hf_model("MistralConfig", "MistralForCausalLM", **dict(SMALL, sliding_window=4))
    model = AutoModelForCausalLM.from_pretrained(save_hf(hf, tmp_path / "m"), scan_layers=False)
    ids, mask = left_padded_batch(96, seq=7, seed=1)
    kw = dict(max_new_tokens=30, eos_token_id=None, cache_implementation=cache_implementation)
    ref = hf_generate(hf, ids, mask, do_sample=False, max_new_tokens=30, eos_token_id=None).numpy()
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask, **kw), ref)
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, **kw), ref)
    if cache_implementation is None:  # beam search reorders the rolling cache too
        refb = hf_generate(hf, ids, mask, do_sample=False, max_new_tokens=30, eos_token_id=None, num_beams=2)
        np.testing.assert_array_equal(model.generate(ids, attention_mask=mask, num_beams=2,
                                                     **dict(kw, cache_implementation="sliding_window")),
                                      refb.numpy())


# ---------------------------------------------------------------- batches, sampling, compile-once, outputs
def test_left_padded_batch_rows_finish_early(llama, batch):
    hf, model = llama
    ids, mask, eos = batch
    ref = hf_generate(hf, ids, mask, do_sample=False, max_new_tokens=10, eos_token_id=eos).numpy()
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos)
    np.testing.assert_array_equal(ours, ref)
    row1 = ours[1, 6:]
    end = int(np.argmax(row1 == eos))
    assert end == 1 and (row1[end + 1:] == 0).all()  # row 1 ended early and is padded after its EOS
    # when every row ends, the output is as short as the longest row, like Transformers
    only = model.generate(ids[1:2], attention_mask=mask[1:2], max_new_tokens=10, eos_token_id=eos)
    np.testing.assert_array_equal(only, hf_generate(hf, ids[1:2], mask[1:2], do_sample=False, max_new_tokens=10,
                                                    eos_token_id=eos).numpy())
    assert only.shape == (1, 8)


def test_sampling_strategies_reproducible_per_seed(llama, draft):
    _, model = llama
    ids, mask = left_padded_batch(96, seq=5, seed=4)
    for extra in (dict(), dict(num_beams=2), dict(prompt_lookup_num_tokens=2), dict(assistant_model=draft)):
        kw = dict(max_new_tokens=8, do_sample=True, temperature=1.3, top_k=0, eos_token_id=None, **extra)
        a = model.generate(ids, attention_mask=mask, seed=11, **kw)
        b = model.generate(ids, attention_mask=mask, seed=11, **kw)
        c = model.generate(ids, attention_mask=mask, seed=12, **kw)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c), extra


@pytest.fixture
def compile_counter():
    """Counts XLA backend compilations (every jit cache miss anywhere, host helpers included)."""
    events = []

    def listen(name, _secs, **_kw):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield events
    jax.monitoring.unregister_event_duration_listener(listen)


@pytest.mark.parametrize("strategy", [dict(), dict(num_beams=2), dict(prompt_lookup_num_tokens=2),
                                      dict(do_sample=True, top_p=0.9)])
def test_second_prompt_length_in_bucket_compiles_nothing(llama, compile_counter, strategy):
    _, model = llama
    model.generate(np.arange(3, 8)[None], max_new_tokens=5, **strategy)
    compile_counter.clear()
    out = model.generate(np.arange(3, 14)[None], max_new_tokens=5, **strategy)  # 5 and 11 share bucket 16
    assert out.shape[1] <= 16
    assert compile_counter == [], f"{len(compile_counter)} new compilation(s) for a prompt in the same bucket"


def test_return_dict_shapes(llama, batch):
    hf, model = llama
    ids, mask, eos = batch
    kw = dict(max_new_tokens=6, eos_token_id=eos, return_dict_in_generate=True, output_scores=True,
              output_logits=True)
    ours = model.generate(ids, attention_mask=mask, **kw)
    ref = hf_generate(hf, ids, mask, do_sample=False, **kw)
    np.testing.assert_array_equal(ours.sequences, ref.sequences.numpy())
    assert len(ours.scores) == len(ours.logits) == ours.sequences.shape[1] - ids.shape[1] == len(ref.scores)
    assert all(s.shape == (3, 96) for s in ours.scores + ours.logits)
    sampled = model.generate(ids, attention_mask=mask, do_sample=True, num_return_sequences=2, seed=0,
                             max_new_tokens=4, eos_token_id=None, return_dict_in_generate=True, output_scores=True)
    assert sampled.sequences.shape == (6, 10) and len(sampled.scores) == 4 and sampled.scores[0].shape == (6, 96)
    assert sampled.logits is None
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=4, return_dict_in_generate=True)
    assert plain.scores is None and plain["sequences"].shape[0] == 3


def test_bad_inputs_give_clear_errors(llama):
    _, model = llama
    ids = np.array([[3, 4, 5, 6, 7]])
    with pytest.raises(ValueError, match="prompt has 5 tokens and max_length is 4"):
        model.generate(ids, max_length=4)
    with pytest.raises(ValueError, match=r"num_return_sequences`? \(3\) must be <= `?num_beams`? \(2\)"):
        model.generate(ids, max_new_tokens=3, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="cannot return several sequences"):
        model.generate(ids, max_new_tokens=3, num_return_sequences=2)
    with pytest.raises(ValueError, match=r"token id 96 at \[0, 1\].*vocabulary \[0, 96\)"):
        model.generate(np.array([[3, 96, 5]]), max_new_tokens=3)
    with pytest.raises(ValueError, match="token id -2"):
        model.generate(np.array([[3, -2, 5]]), max_new_tokens=3)
    # padded (masked) slots may hold anything, as with Transformers
    model.generate(np.array([[-1, 4, 5]]), attention_mask=np.array([[0, 1, 1]]), max_new_tokens=2)


class _NullStreamer:
    def put(self, value):
        pass

    def end(self):
        pass


BAD_INPUTS = [  # (input_ids, attention_mask, generate kwargs, error message)
    ([[3, 4, 5]], None, dict(max_new_tokens=62, prompt_lookup_num_tokens=2), "65 exceeds the model's context of 64"),
    ([[3, 4, 5]], None, dict(max_new_tokens=62, num_beams=2), "65 exceeds the model's context of 64"),
    ([[3, 4, 5]], None, dict(max_length=100), "100 exceeds the model's context of 64"),
    ([[3, 4, 5]], None, dict(do_sample=True, temperature=-1.0, max_new_tokens=3), "temperature"),
    ([[3, 4, 5]], None, dict(do_sample=True, temperature=0.0, num_beams=2, max_new_tokens=3), "temperature"),
    ([[3, 4, 5]], None, dict(do_sample=True, temperature=0.0, prompt_lookup_num_tokens=2, max_new_tokens=3),
     "temperature"),
    (np.zeros((0, 3), int), None, dict(max_new_tokens=3), r"empty or badly shaped.*\(0, 3\)"),
    ([[3, 4, 5], [6, 7, 8]], [[1, 1, 1], [0, 0, 0]], dict(max_new_tokens=3), "row has no tokens"),
    ([[3, 4, 5]], np.ones((1, 1, 3)), dict(max_new_tokens=3), r"attention_mask shape \(1, 1, 3\) does not match"),
    ([[3, 4, 5]], np.ones((2, 3)), dict(max_new_tokens=3, num_beams=2), r"attention_mask shape \(2, 3\)"),
    ([[3, 4, 5]], np.ones((1, 2)), dict(max_new_tokens=3, prompt_lookup_num_tokens=2), r"attention_mask shape"),
    ([[3.0, 4.0]], None, dict(max_new_tokens=3), "must be integers"),
    ([[3, 4, 5]], None, dict(num_beams=2, prompt_lookup_num_tokens=2, max_new_tokens=3), "num_beams > 1"),
    ([[3, 4, 5]], None, dict(prompt_lookup_num_tokens=-1, max_new_tokens=3), "positive integer, got -1"),
    ([[3, 4, 5]], None, dict(num_beams=2, max_new_tokens=3, streamer=_NullStreamer()), "beam search"),
    ([[3, 4], [5, 6]], None, dict(max_new_tokens=3, streamer=_NullStreamer()), "batch size 1"),
    ([[3, 4], [5, 6]], None, dict(max_new_tokens=3, streamer=_NullStreamer(), prompt_lookup_num_tokens=2),
     "batch size 1"),
    ([[3, 4, 5]], None, dict(max_new_tokens=3, stop_strings=["ab"]), "needs the tokenizer"),
]


@pytest.mark.parametrize("ids,mask,kw,match", BAD_INPUTS)
def test_bad_input_is_named_for_every_strategy(llama, ids, mask, kw, match):
    """Issue 3's bad-input list, through plain, beam and assisted decoding alike (raised before compiling)."""
    _, model = llama
    with pytest.raises(ValueError, match=match):
        model.generate(np.asarray(ids), attention_mask=mask, **kw)
