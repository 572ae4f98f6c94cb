"""Mistral parity: sliding window shorter than the sequence."""
from conftest import check_decoder_parity

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)


def test_sliding_window_shorter_than_sequence(tmp_path):
    check_decoder_parity(tmp_path, "MistralConfig", "MistralForCausalLM", dict(BASE, sliding_window=3), seq=10)


def test_no_window_mqa(tmp_path):
    cfg = dict(BASE, sliding_window=None, num_key_value_heads=1, head_dim=16)
    check_decoder_parity(tmp_path, "MistralConfig", "MistralForCausalLM", cfg, layouts=(True,))
