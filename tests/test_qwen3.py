"""Qwen3 parity: q/k norms, head_dim larger than hidden/heads, GQA 4:1."""
from conftest import check_decoder_parity

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=64, initializer_range=0.1)


def test_qk_norm_head_dim(tmp_path):
    check_decoder_parity(tmp_path, "Qwen3Config", "Qwen3ForCausalLM", BASE)


def test_untied_with_bias_bf16(tmp_path):
    cfg = dict(BASE, tie_word_embeddings=False, attention_bias=True, num_key_value_heads=2)
    check_decoder_parity(tmp_path, "Qwen3Config", "Qwen3ForCausalLM", cfg, dtype="bfloat16", layouts=(False,),
                         check_cache=False)
