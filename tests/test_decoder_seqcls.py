"""AutoModelForSequenceClassification on the decoder families: the ``score`` head read at the last
non-padding token, exactly as Transformers picks it (right and left padding), loss, save round trip."""
import numpy as np
import pytest
from conftest import assert_close_rel, make_hf_model, save_hf

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, num_labels=3, initializer_range=0.1)
FAMILIES = {
    "Llama": {},
    "Mistral": {"sliding_window": 4},
    "Qwen2": {},
    "Qwen3": {"head_dim": 16},
}


def batch():
    """Row 0 full, row 1 right-padded, row 2 left-padded; pad id 0 nowhere else."""
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 97, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :4] = 0
    return np.where(mask == 1, ids, 0), mask


def torch_seqcls(model, ids, mask, labels=None):
    import torch

    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    labels=None if labels is None else torch.tensor(labels))
    return out.logits.numpy(), (None if out.loss is None else float(out.loss))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_sequence_classification(tmp_path, family):
    import torch
    import transformers

    from zoo import AutoModelForSequenceClassification

    hf = make_hf_model(f"{family}Config", f"{family}ForSequenceClassification", **TINY, **FAMILIES[family])
    src = save_hf(hf, tmp_path / "hf")
    ids, mask = batch()
    labels = np.array([0, 2, 1])
    ref_logits, ref_loss = torch_seqcls(hf, ids, mask, labels)
    model = AutoModelForSequenceClassification.from_pretrained(src)
    assert type(model).__name__ == "DecoderForSequenceClassification"
    out = model(ids, attention_mask=mask, labels=labels)
    assert_close_rel(out.logits, ref_logits, 1e-4)
    assert abs(float(out.loss) - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss))
    assert model.num_labels == 3
    if family == "Llama":  # our checkpoint loads back into Transformers with the same logits
        model.save_pretrained(tmp_path / "ours")
        back = transformers.LlamaForSequenceClassification.from_pretrained(str(tmp_path / "ours"),
                                                                           dtype=torch.float32).eval()
        assert_close_rel(torch_seqcls(back, ids, mask)[0], ref_logits, 1e-6)


def test_no_pad_token_batch_error(tmp_path):
    from zoo import AutoModelForSequenceClassification

    cfg = dict(TINY, pad_token_id=None)
    hf = make_hf_model("LlamaConfig", "LlamaForSequenceClassification", **cfg)
    model = AutoModelForSequenceClassification.from_pretrained(save_hf(hf, tmp_path / "hf"))
    ids, _ = batch()
    with pytest.raises(ValueError, match="padding token"):
        model(ids)
    from conftest import torch_logits

    assert_close_rel(model(ids[:1]).logits, torch_logits(hf, ids[:1]), 1e-4)
