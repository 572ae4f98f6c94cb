"""Qwen2 parity: q/k/v biases, tied embeddings, windows on the upper layers only."""
from conftest import check_decoder_parity

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)


def test_biases_tied(tmp_path):
    check_decoder_parity(tmp_path, "Qwen2Config", "Qwen2ForCausalLM", dict(BASE, tie_word_embeddings=True))


def test_mixed_sliding_layers(tmp_path):
    # layer 0 full attention, layers 1-2 windowed: the scan carries a per-layer window
    cfg = dict(BASE, use_sliding_window=True, sliding_window=3, max_window_layers=1)
    model = check_decoder_parity(tmp_path, "Qwen2Config", "Qwen2ForCausalLM", cfg, seq=10)
    assert model.config.layer_windows() == (None, 3, 3)
