"""RoBERTa and XLM-RoBERTa parity with PyTorch Transformers (positions counted from padding_idx + 1)."""
import pytest
from encoder_parity import ALL_TASKS, check_encoder

BASE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=24, type_vocab_size=1, initializer_range=0.1, pad_token_id=1, bos_token_id=0,
            eos_token_id=2)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_roberta_heads(tmp_path, task):
    check_encoder(tmp_path, "Roberta", BASE, tasks=(task,), pad=1, layouts=(True,) if task != "base" else (True, False))


def test_xlm_roberta_all_heads(tmp_path):
    # hidden_act relu: RoBERTa's LM head keeps gelu whatever hidden_act says
    cfg = dict(BASE, hidden_act="relu", tie_word_embeddings=False)
    check_encoder(tmp_path, "XLMRoberta", cfg, pad=1, layouts=(False,))


def test_roberta_bf16(tmp_path):
    check_encoder(tmp_path, "Roberta", BASE, tasks=("masked_lm",), pad=1, dtype="bfloat16", layouts=(True,))
