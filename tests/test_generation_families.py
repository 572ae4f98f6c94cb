"""Greedy and beam search token-identical to Transformers' ``generate`` on a tiny random model of
every decoder family in the zoo (left-padded batch, repetition penalty, no-repeat-ngram, eos off so
every row runs full length); and a statistical test that top-k / top-p / min-p sampling draws only
the allowed tokens with the renormalised target frequencies."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import left_padded_batch, make_hf_model, save_hf

from zoo import AutoModelForCausalLM
from zoo.generation import GenerationConfig
from zoo.generation.logits_process import build_logits_processor, sample_next_token
from zoo.models import FAMILIES as ZOO_FAMILIES

VOCAB = 128
# std 0.15 keeps logits peaked enough that greedy/beam choices are not decided by float noise.
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, initializer_range=0.15, pad_token_id=0, bos_token_id=1, eos_token_id=2)
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}

# model_type -> (config class, causal-LM class, config overrides). Windows shorter than prompt + new
# tokens so windowed families generate past their window.
DECODERS: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=6)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=16)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(num_key_value_heads=1, head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(num_key_value_heads=1, head_dim=16, sliding_window=4, query_pre_attn_scalar=12,
                    attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                    dict(num_key_value_heads=1, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                         sliding_window_pattern=2, rope_parameters=GEMMA3_ROPE)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(num_key_value_heads=1, original_max_position_embeddings=64)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(num_key_value_heads=1)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.15,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(hidden_act="gelu", rotary_pct=0.25)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_key_value_heads=2, head_dim=16, moe_intermediate_size=24, num_experts=4,
                       num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[])),
}
ENCODERS = {"bert", "roberta", "xlm-roberta", "distilbert", "modernbert"}

CASES = {
    "greedy": dict(do_sample=False, num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2),
    "beam2": dict(do_sample=False, num_beams=2, repetition_penalty=1.3, no_repeat_ngram_size=2),
}
# eos off: every row runs the full 8 new tokens, so every step is compared.
COMMON_KW = dict(max_new_tokens=8, eos_token_id=None, pad_token_id=0)

_MODELS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny torch models on 2 busy cores: torch's thread pool fighting XLA's made each HF
    generate take seconds instead of milliseconds. Restored afterwards for other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(family: str) -> dict:
    cfg_cls, _, extra = DECODERS[family]
    return extra if family == "gpt2" else {**COMMON, **extra}


def _randomise_norms(hf, std: float = 0.3) -> None:
    """Gemma-style norms start at zero (scale 1 + w); random scales make the oracle test bite."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.add_(torch.randn_like(p) * std)


def _model(family: str, tmp_path_factory):
    """(HF model, our model), built once per module."""
    if family not in _MODELS:
        cfg_cls, model_cls, _ = DECODERS[family]
        hf = make_hf_model(cfg_cls, model_cls, **_config(family))
        _randomise_norms(hf)
        folder = save_hf(hf, tmp_path_factory.mktemp(family))
        _MODELS[family] = hf, AutoModelForCausalLM.from_pretrained(folder)
    return _MODELS[family]


def test_every_decoder_family_is_covered():
    decoders = set(ZOO_FAMILIES) - ENCODERS
    assert decoders == set(DECODERS), f"add the new family to DECODERS: {sorted(decoders ^ set(DECODERS))}"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("family", sorted(DECODERS))
def test_generate_matches_transformers(family, case, tmp_path_factory):
    hf, ours = _model(family, tmp_path_factory)
    ids, mask = left_padded_batch(VOCAB, batch=2, seq=7, seed=1)
    kw = {**COMMON_KW, **CASES[case]}
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()
    assert ref.shape == (2, 7 + 8)  # ran full length: no early stop hides a mismatch
    out = np.asarray(ours.generate(ids, attention_mask=mask, **kw))
    np.testing.assert_array_equal(out, ref)


# ----------------------------------------------------------------------------- sampling statistics
LOGITS8 = np.array([2.0, 1.5, 1.2, 0.9, 0.4, 0.0, -0.6, -1.5], np.float32)  # sorted, distinct


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x[np.isfinite(x)].max())
    return e / e.sum()


def _target(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float | None = None) -> np.ndarray:
    """Target probabilities by hand from the definitions, each filter applied to the renormalised
    output of the one before, in Transformers' warper order (temperature, top-k, top-p, min-p)."""
    x = LOGITS8.astype(np.float64) / temperature
    if top_k:
        x = np.where(np.arange(8) < top_k, x, -np.inf)  # LOGITS8 is sorted descending
    if top_p < 1.0:  # keep the smallest descending prefix whose mass reaches top_p
        p = _softmax(x)
        mass_before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
        x = np.where(mass_before < top_p, x, -np.inf)
    if min_p is not None:
        p = _softmax(x)
        x = np.where(p >= min_p * p.max(), x, -np.inf)
    return _softmax(x)


SAMPLING_CASES = {
    "top_k": dict(top_k=3),
    "top_p": dict(top_k=0, top_p=0.8),
    "min_p": dict(top_k=0, min_p=0.3),
    "all": dict(temperature=0.8, top_k=6, top_p=0.9, min_p=0.1),
}


@pytest.mark.parametrize("case", sorted(SAMPLING_CASES))
def test_sampling_draws_allowed_tokens_at_target_frequencies(case):
    """The processor chain ``generate`` builds from a GenerationConfig, then one draw per key."""
    opts = SAMPLING_CASES[case]
    target = _target(**opts)
    assert 2 <= (target > 0).sum() < 8  # the filters really remove tokens and still leave a choice
    process = build_logits_processor(GenerationConfig(do_sample=True, **opts), prompt_len=1, max_length=2)
    n = 4000
    keys = jax.random.split(jax.random.PRNGKey(0), n)

    @jax.jit
    def draw(keys):
        logits = process(jnp.zeros((1, 2), jnp.int32), 1, jnp.asarray(LOGITS8)[None])
        return jax.vmap(lambda k: sample_next_token(k, logits)[0])(keys)

    tokens = np.asarray(draw(keys))
    assert set(np.unique(tokens)) <= set(np.flatnonzero(target)), "drew a filtered-out token"
    freq = np.bincount(tokens, minlength=8) / n
    # 4 binomial standard errors per token: fails on a wrong distribution, not on chance.
    tol = 4 * np.sqrt(target * (1 - target) / n) + 1e-9
    assert np.all(np.abs(freq - target) <= tol), f"freq {freq.round(3)} vs target {target.round(3)}"
