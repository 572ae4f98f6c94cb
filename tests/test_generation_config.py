"""GenerationConfig <-> Transformers' GenerationConfig and generation_config.json; validation;
stopping-criteria helpers."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import GenerationConfig as HFGenerationConfig

from zoo.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationConfig,
    StopStringMatcher,
    is_eos,
    max_length_reached,
    pad_finished_rows,
    should_continue,
    update_finished,
)

RICH = dict(
    max_new_tokens=33, min_new_tokens=2, do_sample=True, temperature=0.6, top_k=20, top_p=0.95, min_p=0.05,
    typical_p=0.9, epsilon_cutoff=0.001, repetition_penalty=1.1, no_repeat_ngram_size=3,
    bad_words_ids=[[5], [7, 8]], suppress_tokens=[1, 2], begin_suppress_tokens=[3], forced_bos_token_id=0,
    forced_eos_token_id=[2, 9], eos_token_id=[2, 9], pad_token_id=0, bos_token_id=1, decoder_start_token_id=0,
    num_beams=4, length_penalty=0.8, early_stopping="never", num_return_sequences=2, stop_strings=["\n\n", "END"],
    sequence_bias=[[[4, 5], 1.5], [[6], -2.0]], renormalize_logits=True, output_scores=True, output_logits=True,
    return_dict_in_generate=True, use_cache=False, num_assistant_tokens=7,
)


def _hf_effective(cfg: HFGenerationConfig) -> dict:
    """Transformers' values after generate() fills unset fields with its global defaults."""
    d = {k: v for k, v in cfg.to_dict().items() if v is not None}
    for k, v in HFGenerationConfig._get_default_generation_params().items():
        d.setdefault(k, v)
    return d


def _ours_as_json_values(cfg: GenerationConfig) -> dict:
    return cfg.to_dict(use_diff=False)


def _same(theirs, ours) -> bool:
    """Equal, counting Transformers' unset (None) as our False for flags like output_logits."""
    return theirs == ours or (theirs is None and ours in (None, False))


def test_defaults_are_transformers_effective_defaults():
    ours = GenerationConfig()
    hf_defaults = HFGenerationConfig._get_default_generation_params()
    for name in GenerationConfig.field_names():
        if name in hf_defaults and name != "max_length":
            assert getattr(ours, name) == hf_defaults[name], name
    assert ours.max_length is None and ours.resolve_lengths(7) == (7 + DEFAULT_MAX_NEW_TOKENS, 0)
    assert ours.top_k == 50 and ours.temperature == 1.0 and ours.num_beams == 1


def test_save_ours_load_theirs(tmp_path):
    ours = GenerationConfig(**RICH)
    ours.save_pretrained(tmp_path)
    theirs = HFGenerationConfig.from_pretrained(tmp_path)
    eff = _hf_effective(theirs)
    for name, value in _ours_as_json_values(ours).items():
        if name == "max_length":
            continue
        assert _same(eff.get(name), value), (name, eff.get(name), value)
    # and theirs written back reads as the same config here
    theirs.save_pretrained(tmp_path / "back")
    assert dataclasses.replace(GenerationConfig.from_pretrained(tmp_path / "back"), extra=()) == ours


def test_save_theirs_load_ours(tmp_path):
    theirs = HFGenerationConfig(**RICH)
    theirs.save_pretrained(tmp_path)
    ours = GenerationConfig.from_pretrained(tmp_path)
    eff = _hf_effective(theirs)
    for name, value in _ours_as_json_values(ours).items():
        if name != "max_length":
            assert _same(eff.get(name), value), (name, eff.get(name), value)
    assert ours.extras["transformers_version"] == json.load(open(tmp_path / "generation_config.json"))[
        "transformers_version"]
    # written back by us, the file has the same content Transformers wrote
    ours.save_pretrained(tmp_path / "back")
    assert json.load(open(tmp_path / "back" / "generation_config.json")) == json.load(
        open(tmp_path / "generation_config.json"))


def test_unknown_keys_are_kept_and_written_back(tmp_path):
    data = {"_from_model_config": True, "transformers_version": "4.51.3", "max_time": 12.5,
            "cache_implementation": "static", "my_custom": {"a": [1, 2]}, "eos_token_id": 7, "top_k": 50,
            "temperature": 1}
    (tmp_path / "generation_config.json").write_text(json.dumps(data))
    cfg = GenerationConfig.from_pretrained(tmp_path)
    assert cfg.extras["my_custom"] == {"a": [1, 2]} and cfg.extras["max_time"] == 12.5
    assert cfg.temperature == 1.0 and isinstance(cfg.temperature, float)
    hash(cfg)
    cfg.save_pretrained(tmp_path / "out")
    back = json.load(open(tmp_path / "out" / "generation_config.json"))
    # defaults (top_k=50, temperature=1) are dropped, everything else survives
    assert back == {k: v for k, v in data.items() if k not in ("top_k", "temperature")}
    assert HFGenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == 7


def test_missing_file_gives_defaults(tmp_path):
    assert GenerationConfig.from_pretrained(tmp_path) == GenerationConfig()
    assert GenerationConfig.from_pretrained(tmp_path, top_k=5).top_k == 5
    assert GenerationConfig().to_dict() == {}


def test_from_dict_to_dict_and_tuples():
    cfg = GenerationConfig.from_dict({"eos_token_id": [1, 2], "bad_words_ids": [[3], [4, 5]],
                                      "sequence_bias": [[[1, 2], 0.5]], "suppress_tokens": [9]})
    assert cfg.eos_token_id == (1, 2) and cfg.bad_words_ids == ((3,), (4, 5)) and cfg.suppress_tokens == (9,)
    assert cfg.sequence_bias == (((1, 2), 0.5),) and cfg.eos_token_ids == (1, 2)
    assert cfg.to_dict() == {"eos_token_id": [1, 2], "bad_words_ids": [[3], [4, 5]],
                             "sequence_bias": [[[1, 2], 0.5]], "suppress_tokens": [9]}
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg
    # Transformers' legacy dict form of sequence_bias
    assert GenerationConfig(sequence_bias={(1, 2): 0.5}).sequence_bias == cfg.sequence_bias


def test_update_returns_new_config_and_unused_kwargs():
    base = GenerationConfig(top_k=10)
    new, unused = base.update(top_k=5, do_sample=True, attention_mask="x", output_attentions=True)
    assert base.top_k == 10 and new.top_k == 5 and new.do_sample
    assert unused == {"attention_mask": "x", "output_attentions": True}
    extra = GenerationConfig.from_dict({"max_time": 3.0})
    assert extra.update(max_time=4.0)[0].extras["max_time"] == 4.0
    with pytest.raises(ValueError, match="temperature"):
        base.update(do_sample=True, temperature=0.0)


def test_hashable_static_jit_argument():
    calls = []

    def scale(x, cfg):
        calls.append(1)
        return x * cfg.temperature

    f = jax.jit(scale, static_argnums=1)
    a = GenerationConfig(eos_token_id=[1, 2], temperature=2.0, do_sample=True)
    b = GenerationConfig(eos_token_id=(1, 2), temperature=2.0, do_sample=True)
    assert a == b and hash(a) == hash(b)
    np.testing.assert_allclose(f(jnp.ones(2), a), [2.0, 2.0])
    f(jnp.ones(2), b)
    assert len(calls) == 1
    f(jnp.ones(2), a.update(temperature=3.0)[0])
    assert len(calls) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.top_k = 3  # type: ignore[misc]


def test_resolve_lengths():
    assert GenerationConfig(max_new_tokens=5).resolve_lengths(10) == (15, 0)
    assert GenerationConfig(max_length=30).resolve_lengths(10) == (30, 0)
    assert GenerationConfig(max_length=30, max_new_tokens=4).resolve_lengths(10) == (14, 0)
    assert GenerationConfig(min_length=12, min_new_tokens=3).resolve_lengths(10) == (30, 13)


@pytest.mark.parametrize("kwargs, match", [
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, temperature=-1.0), "temperature"),
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, top_k=-1), "top_k"),
    (dict(do_sample=True, min_p=2.0), "min_p"),
    (dict(do_sample=True, typical_p=0.0), "typical_p"),
    (dict(do_sample=True, eta_cutoff=1.0), "eta_cutoff"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(num_beams=0), "num_beams"),
    (dict(num_return_sequences=3), "Greedy"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
    (dict(bad_words_ids=[[]]), "bad_words_ids"),
    (dict(bad_words_ids=[1, 2]), "bad_words_ids"),
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(suppress_tokens=[2], forced_eos_token_id=2), "suppress_tokens"),
    (dict(stop_strings=[""]), "stop_strings"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)


def test_sampling_params_ignored_when_greedy():
    # Transformers only warns: these values are unused with do_sample=False
    cfg = GenerationConfig(do_sample=False, temperature=0.0, top_p=1.5, top_k=-1)
    assert not cfg.is_sampling
    GenerationConfig(num_beams=4, num_return_sequences=4)  # beam search may return num_beams sequences
    GenerationConfig(do_sample=True, num_return_sequences=3)  # sampling may return several


# ----------------------------------------------------------------------------- stopping criteria
def test_eos_and_length_helpers():
    toks = jnp.array([2, 5, 9, 0])
    np.testing.assert_array_equal(is_eos(toks, 9), [False, False, True, False])
    np.testing.assert_array_equal(is_eos(toks, (2, 9)), [True, False, True, False])
    np.testing.assert_array_equal(is_eos(toks, None), [False] * 4)
    finished = jnp.array([False, True, False, False])
    np.testing.assert_array_equal(pad_finished_rows(toks, finished, 0), [2, 0, 9, 0])
    np.testing.assert_array_equal(update_finished(finished, toks, (2, 9)), [True, True, True, False])
    assert bool(max_length_reached(10, 10)) and not bool(max_length_reached(9, 10))
    assert bool(should_continue(finished, 3, 10)) and not bool(should_continue(jnp.ones(4, bool), 3, 10))
    assert not bool(jax.jit(should_continue)(finished, jnp.int32(10), 10))


class PieceTokenizer:
    """Decodes by concatenating string pieces (like a tokenizer after cleaning up markers)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


PIECES = ["st", "op", "stop", "opera", "sto", "pper", "las", "topper", "s", "to", "pped", "at", "tion", " ", "x"]
P = {p: i for i, p in enumerate(PIECES)}


@pytest.mark.parametrize("pieces, n_tokens", [
    (["st", "op"], 2), (["stop"], 1), (["st", "opera"], 2), (["sto", "pper"], 2), (["las", "topper"], 2),
    (["s", "to", "pped"], 3), (["x", "stop", "at"], 2), (["st", "op", "at", "x"], 2), (["x", " ", "to"], None),
])
def test_stop_string_matcher(pieces, n_tokens):
    m = StopStringMatcher(PieceTokenizer(PIECES), ["stop", "never"])
    ids = [P[p] for p in pieces]
    match = m.find(ids)
    if n_tokens is None:
        assert match is None and not m([ids])[0]
        assert m.truncate(ids) == (ids, "".join(pieces))
        return
    assert match.num_tokens == n_tokens and match.stop_string == "stop"
    kept_ids, text = m.truncate(ids)
    assert kept_ids == ids[:n_tokens] and text.endswith("stop") and text.count("stop") == 1
    assert m.truncate(ids, include_stop_string=False)[1] == text[: -len("stop")]


def test_stop_string_matcher_batch_and_earliest():
    m = StopStringMatcher(PieceTokenizer(PIECES), ("opera", "stop"))
    # "stop" completes at token 2 (st+op), "opera" only at token 3
    ids = [P["st"], P["op"], P["opera"]]
    assert m.find(ids).stop_string == "stop"
    batch = np.array([[P["st"], P["op"], P["x"]], [P["x"], P["x"], P["x"]], [P["x"], P["opera"], P["x"]]])
    np.testing.assert_array_equal(m(batch), [True, False, True])
    np.testing.assert_array_equal(m(batch, lengths=[1, 3, 1]), [False, False, False])
    with pytest.raises(ValueError):
        StopStringMatcher(PieceTokenizer(PIECES), [])


def test_stop_string_matcher_agrees_with_transformers_stop_string_criteria():
    """On a real byte-level BPE tokenizer: the token after which Transformers' StopStringCriteria
    first fires (checked every step) is the token count our matcher reports."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.generation.stopping_criteria import StopStringCriteria

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the stop sign stopped the stopper at the top of the stairs", "Alaska Texas\n\nEND of list",
              "unstoppable tops and pops"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=120, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    stops = ["stop", "\n\n", "END"]
    criteria, matcher = StopStringCriteria(tokenizer, stops), StopStringMatcher(tokenizer, stops)
    rng = np.random.default_rng(0)
    words = ["the", "stairs", "top", "st", "op", "Texas", "\n", "EN", "D", "unstoppable", "pops"]
    n_stopped = 0
    for _ in range(40):
        ids = tokenizer(" ".join(rng.choice(words, size=6)), add_special_tokens=False)["input_ids"]
        theirs = next((k for k in range(1, len(ids) + 1) if criteria(torch.tensor([ids[:k]]), None)[0]), None)
        found = matcher.find(ids)
        assert (None if found is None else found.num_tokens) == theirs, tokenizer.decode(ids)
        n_stopped += theirs is not None
    assert 5 < n_stopped < 40
