"""generate(): token-identical greedy decoding vs Transformers, sampling by key, compile-once, bad input."""
import jax
import numpy as np
import pytest
import torch
from conftest import left_padded_batch, make_hf_model, save_hf

from zoo import AutoModelForCausalLM
from zoo.generation import decode

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.15, eos_token_id=5, pad_token_id=0)

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 16}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
}


def hf_generate(hf, ids, mask, **kw):
    with torch.no_grad():
        return hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    hf = make_hf_model("LlamaConfig", "LlamaForCausalLM", **SMALL)
    return hf, save_hf(hf, tmp_path_factory.mktemp("llama"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_matches_transformers(tmp_path, family):
    cfg_cls, model_cls, extra = FAMILIES[family]
    hf = make_hf_model(cfg_cls, model_cls, **{**SMALL, **extra})
    folder = save_hf(hf, tmp_path / family)
    ids, mask = left_padded_batch(96, seq=7)
    kw = dict(max_new_tokens=10, do_sample=False, repetition_penalty=1.2, no_repeat_ngram_size=3)
    ref = hf_generate(hf, ids, mask, **kw)
    ours = AutoModelForCausalLM.from_pretrained(folder, scan_layers=family != "qwen2").generate(
        ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(ours, ref)


def test_eos_stops_and_pads(llama):
    hf, folder = llama
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids, mask = left_padded_batch(96, seq=6, seed=3)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    eos = int(free[0, 7])  # make row 0's second new token the end of its sequence
    ref = hf_generate(hf, ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=eos)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos)
    np.testing.assert_array_equal(ours, ref)
    assert (ours[0, 8:] == 0).all()  # padded after eos


def test_scores_match_transformers(llama):
    hf, folder = llama
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids, mask = left_padded_batch(96, seq=5)
    kw = dict(max_new_tokens=4, return_dict_in_generate=True, output_scores=True, output_logits=True)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                          repetition_penalty=1.5, **kw)
    ours = model.generate(ids, attention_mask=mask, repetition_penalty=1.5, **kw)
    np.testing.assert_array_equal(ours.sequences, ref.sequences.numpy())
    for a, b in zip(ours.scores, ref.scores):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5)
    for a, b in zip(ours.logits, ref.logits):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5)


def test_sampling_reproducible_per_key(llama):
    _, folder = llama
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = np.array([[7, 8, 9, 10]])
    kw = dict(max_new_tokens=12, do_sample=True, top_k=0, temperature=1.5)
    a = model.generate(ids, key=jax.random.PRNGKey(1), **kw)
    b = model.generate(ids, key=jax.random.PRNGKey(1), **kw)
    c = model.generate(ids, key=jax.random.PRNGKey(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    many = model.generate(ids, seed=3, num_return_sequences=3, **kw)
    assert many.shape == (3, 16) and len({tuple(r) for r in many}) > 1


def test_compiles_once_per_bucket(llama):
    _, folder = llama
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.generate(np.arange(3, 8)[None], max_new_tokens=5)
    prefill, dec = decode.prefill_fn._cache_size(), decode.decode_fn._cache_size()
    for n in (6, 9, 12):  # other prompt lengths in the same bucket (16)
        model.generate(np.arange(3, 3 + n)[None], max_new_tokens=5)
    assert (decode.prefill_fn._cache_size(), decode.decode_fn._cache_size()) == (prefill, dec)
    model.generate(np.arange(3, 23)[None], max_new_tokens=5)  # next bucket: one new compile each
    assert decode.prefill_fn._cache_size() == prefill + 1


def test_bad_inputs(llama):
    _, folder = llama
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = np.array([[3, 4, 5]])
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        model.generate(ids, max_new_tokens=70)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="empty"):
        model.generate(np.zeros((1, 0), int), max_new_tokens=3)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model.generate(ids, attention_mask=np.ones((1, 4)), max_new_tokens=3)
    with pytest.raises(TypeError, match="unknown arguments"):
        model.generate(ids, max_new_tokens=3, not_an_option=1)


class CharTokenizer:
    """Just enough of a tokenizer for stop strings: token i decodes to chr(ord('a') + i % 26)."""

    def decode(self, ids, **kw):
        return "".join(chr(ord("a") + int(i) % 26) for i in ids)


def test_stop_strings_and_streaming(llama):
    _, folder = llama
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = np.array([[11, 12, 13]])
    free = model.generate(ids, max_new_tokens=12)
    text = CharTokenizer().decode(free[0, 3:])
    stop = text[4:6]  # appears first at characters 4-5: generation ends after new token 6 (or earlier)
    first = text.find(stop) + len(stop)

    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, x):
            self.chunks.append(np.asarray(x).reshape(-1))

        def end(self):
            self.ended = True

    s = Collect()
    out = model.generate(ids, max_new_tokens=12, stop_strings=stop, tokenizer=CharTokenizer(), streamer=s,
                         stream_chunk_size=2)
    np.testing.assert_array_equal(out[0], free[0, : 3 + first])
    assert s.ended and np.array_equal(np.concatenate(s.chunks), out[0])
