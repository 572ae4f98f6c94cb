"""Gemma parity with Transformers: scaled embeddings, (1 + w) norms, GeGLU, tied head; MQA and
head_dim != hidden/heads; greedy generation; bf16; sequence classification."""
import numpy as np
import torch
from conftest import assert_close_rel, check_decoder_parity, left_padded_batch, make_hf_model, save_hf

from zoo import AutoModelForCausalLM, AutoModelForSequenceClassification

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=64, initializer_range=0.1)


def random_norms(hf, std=0.3):
    """Transformers starts (1 + w) norms at w = 0; random w makes a missing "1 +" visible."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def test_mqa_head_dim(tmp_path):
    check_decoder_parity(tmp_path, "GemmaConfig", "GemmaForCausalLM", BASE, prepare=random_norms)


def test_untied_gqa_bf16(tmp_path):
    cfg = dict(BASE, tie_word_embeddings=False, num_key_value_heads=2, head_dim=8, attention_bias=True)
    check_decoder_parity(tmp_path, "GemmaConfig", "GemmaForCausalLM", cfg, dtype="bfloat16", layouts=(True,),
                         check_resave=False,  # the fp32 test covers it; a bf16 .to() also rounds HF's rope table
                         prepare=random_norms, check_cache=False)


def test_greedy_generation_matches_transformers(tmp_path):
    hf = make_hf_model("GemmaConfig", "GemmaForCausalLM", **dict(BASE, eos_token_id=5, pad_token_id=0))
    random_norms(hf)
    folder = save_hf(hf, tmp_path / "hf")
    ids, mask = left_padded_batch(128, seq=7)
    kw = dict(max_new_tokens=10, do_sample=False)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()
    for scan in (True, False):
        ours = AutoModelForCausalLM.from_pretrained(folder, scan_layers=scan).generate(ids, attention_mask=mask, **kw)
        np.testing.assert_array_equal(ours, ref)


def test_sequence_classification(tmp_path):
    hf = make_hf_model("GemmaConfig", "GemmaForSequenceClassification", **dict(BASE, num_labels=3, pad_token_id=0))
    random_norms(hf)
    folder = save_hf(hf, tmp_path / "hf")
    ids, mask = left_padded_batch(128, seq=7)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert_close_rel(model(ids, attention_mask=mask).logits, ref, 1e-4)


def test_paged_serving_refuses_gemma():
    """GemmaConfig subclasses LlamaConfig, but the paged decode step runs Llama's layer: refuse, not miscompute."""
    import pytest

    from zoo import AutoConfig
    from zoo.generation.paged import check_supported

    check_supported(AutoConfig.for_model("llama"))
    for model_type in ("gemma", "gemma2", "gemma3_text"):
        with pytest.raises(ValueError, match=model_type):
            check_supported(AutoConfig.for_model(model_type))
