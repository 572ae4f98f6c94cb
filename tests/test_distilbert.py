"""DistilBERT parity with PyTorch Transformers: every head, padded batches, save round trip."""
import pytest
from encoder_parity import ALL_TASKS, check_encoder

BASE = dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=24,
            initializer_range=0.1)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_heads(tmp_path, task):
    check_encoder(tmp_path, "DistilBert", BASE, tasks=(task,), layouts=(True,) if task != "base" else (True, False))


def test_untied_sinusoidal_relu(tmp_path):
    cfg = dict(BASE, tie_word_embeddings=False, sinusoidal_pos_embds=True, activation="relu")
    check_encoder(tmp_path, "DistilBert", cfg, tasks=("masked_lm",), layouts=(False,))


def test_config_round_trip():
    from zoo import AutoConfig

    cfg = AutoConfig.for_model("distilbert", dim=64, n_heads=4, n_layers=3)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.head_dim) == (64, 4, 3, 16)
    data = cfg.to_dict()
    assert data["dim"] == 64 and "hidden_size" not in data
