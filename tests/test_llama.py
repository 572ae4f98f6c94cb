"""Llama parity with PyTorch Transformers across the configs real checkpoints use."""
import pytest
from conftest import check_decoder_parity

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)

ROPES = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.5],
                 "long_factor": [1.0, 2.0, 3.0, 4.0], "original_max_position_embeddings": 4},
}


def test_default_gqa(tmp_path):
    check_decoder_parity(tmp_path, "LlamaConfig", "LlamaForCausalLM", BASE)


@pytest.mark.parametrize("rope", sorted(ROPES))
def test_rope_scaling(tmp_path, rope):
    cfg = dict(BASE, rope_parameters={**ROPES[rope], "rope_theta": 10000.0})
    if rope == "dynamic":
        cfg["max_position_embeddings"] = 6  # the batch (9 tokens) is longer: the base really grows
    if rope == "longrope":
        cfg["max_position_embeddings"] = 16
    # Dynamic NTK depends on the longest position seen, so a shorter prefill legitimately
    # uses other frequencies than one full pass (Transformers does the same): no cache check.
    check_decoder_parity(tmp_path, "LlamaConfig", "LlamaForCausalLM", cfg, layouts=(True,), check_resave=False,
                         check_cache=rope != "dynamic")


def test_tied_mha_biases_explicit_head_dim(tmp_path):
    cfg = dict(BASE, num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True, head_dim=16)
    check_decoder_parity(tmp_path, "LlamaConfig", "LlamaForCausalLM", cfg)


def test_mqa(tmp_path):
    cfg = dict(BASE, num_key_value_heads=1)
    check_decoder_parity(tmp_path, "LlamaConfig", "LlamaForCausalLM", cfg, layouts=(False,))


def test_bfloat16(tmp_path):
    check_decoder_parity(tmp_path, "LlamaConfig", "LlamaForCausalLM", BASE, dtype="bfloat16", layouts=(True,),
                         check_cache=False)
