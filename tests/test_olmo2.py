"""OLMo-2 parity with PyTorch Transformers: post-norms, q/k norms over the whole projection,
GQA 4:1, head_dim != hidden/heads, attention biases, tied embeddings, rope scaling."""
import numpy as np
import torch
from conftest import assert_close_rel, check_decoder_parity, left_padded_batch, make_hf_model, save_hf

from zoo import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.1, eos_token_id=5,
            pad_token_id=0)


def test_gqa4_head_dim(tmp_path):
    check_decoder_parity(tmp_path, "Olmo2Config", "Olmo2ForCausalLM", dict(BASE, head_dim=16))


def test_bias_tied_linear_rope(tmp_path):
    cfg = dict(BASE, num_key_value_heads=2, attention_bias=True, tie_word_embeddings=True,
               rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
    check_decoder_parity(tmp_path, "Olmo2Config", "Olmo2ForCausalLM", cfg, layouts=(False,), check_cache=False)


def test_bf16(tmp_path):
    check_decoder_parity(tmp_path, "Olmo2Config", "Olmo2ForCausalLM", BASE, dtype="bfloat16", layouts=(True,),
                         check_resave=False, check_cache=False)


def test_greedy_generate_matches_transformers(tmp_path):
    hf = make_hf_model("Olmo2Config", "Olmo2ForCausalLM", **BASE)
    folder = save_hf(hf, tmp_path / "hf")
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=7)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=8,
                          do_sample=False).numpy()
    ours = AutoModelForCausalLM.from_pretrained(folder, scan_layers=True).generate(ids, attention_mask=mask,
                                                                                    max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_sequence_classification(tmp_path):
    hf = make_hf_model("Olmo2Config", "Olmo2ForSequenceClassification", **BASE, num_labels=3)
    ids, mask = left_padded_batch(BASE["vocab_size"])
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = AutoModelForSequenceClassification.from_pretrained(save_hf(hf, tmp_path / "hf"))
    assert_close_rel(model(ids, attention_mask=mask).logits, ref, 1e-4)


def test_preset():
    cfg = AutoConfig.from_pretrained("olmo2-1b")
    assert type(cfg).__name__ == "Olmo2Config"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.rope_theta) == (2048, 16, 128, 500000.0)


def test_paged_cache_refuses_olmo2():
    """OLMo-2 subclasses LlamaConfig but runs its own layers: the Llama-only paged decode must say no."""
    import pytest

    from zoo.generation.paged import init_pages

    cfg = AutoConfig.for_model("olmo2", **{k: v for k, v in BASE.items() if k != "initializer_range"})
    with pytest.raises(ValueError, match="olmo2"):
        init_pages(cfg, 4, 8)


def test_tensor_parallel_mesh(tmp_path):
    """q/k norms span every head, so with heads split over ``tensor`` the RMS needs all shards."""
    from zoo import make_mesh

    hf = make_hf_model("Olmo2Config", "Olmo2ForCausalLM", **dict(BASE, num_key_value_heads=2))
    folder = save_hf(hf, tmp_path / "hf")
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules="fsdp+tp")
    assert model.params["layers"]["self_attn"]["q_norm"]["scale"].sharding.spec[1] == "tensor"
    ids, mask = left_padded_batch(BASE["vocab_size"], batch=4)
    ref = AutoModelForCausalLM.from_pretrained(folder)(ids, attention_mask=mask).logits
    assert_close_rel(model(ids, attention_mask=mask).logits, ref, 1e-5, mask.astype(bool))
