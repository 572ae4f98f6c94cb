"""GPT-NeoX parity with PyTorch Transformers: partial rotary, parallel residual on/off, per-head fused qkv."""
import json

import numpy as np
import pytest
import torch
from conftest import check_decoder_parity, left_padded_batch, make_hf_model, save_hf

from zoo import AutoModelForCausalLM

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, initializer_range=0.1, hidden_act="gelu")


def rope(pct, theta=10000.0):
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": pct}}


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    hf = make_hf_model("GPTNeoXConfig", "GPTNeoXForCausalLM", **BASE, **rope(0.25), eos_token_id=5, pad_token_id=0)
    return hf, save_hf(hf, tmp_path_factory.mktemp("neox"))


def test_rotary_quarter_parallel_residual(tmp_path):
    check_decoder_parity(tmp_path, "GPTNeoXConfig", "GPTNeoXForCausalLM", dict(BASE, **rope(0.25)))


def test_sequential_residual_full_rotary_no_bias(tmp_path):
    cfg = dict(BASE, use_parallel_residual=False, attention_bias=False, **rope(1.0, 500.0))
    check_decoder_parity(tmp_path, "GPTNeoXConfig", "GPTNeoXForCausalLM", cfg, layouts=(False,))


def test_tied_head_bf16(tmp_path):
    cfg = dict(BASE, tie_word_embeddings=True, **rope(0.5))
    check_decoder_parity(tmp_path, "GPTNeoXConfig", "GPTNeoXForCausalLM", cfg, dtype="bfloat16", layouts=(True,),
                         check_resave=False, check_cache=False)


def test_greedy_generate_matches_transformers(neox):
    hf, folder = neox
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=7)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=8,
                          do_sample=False).numpy()
    ours = AutoModelForCausalLM.from_pretrained(folder, scan_layers=False).generate(ids, attention_mask=mask,
                                                                                     max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_old_config_spelling(neox, tmp_path):
    """Pythia's config.json says rotary_pct / rotary_emb_base instead of rope_parameters."""
    hf, folder = neox
    data = json.loads(open(f"{folder}/config.json").read())
    rp = data.pop("rope_parameters")
    data.update(rotary_pct=rp["partial_rotary_factor"], rotary_emb_base=rp["rope_theta"])
    (tmp_path / "config.json").write_text(json.dumps(data))
    (tmp_path / "model.safetensors").write_bytes(open(f"{folder}/model.safetensors", "rb").read())
    ids, mask = left_padded_batch(BASE["vocab_size"])
    a = AutoModelForCausalLM.from_pretrained(folder)(ids, attention_mask=mask).logits
    b = AutoModelForCausalLM.from_pretrained(tmp_path)(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_rotary_pct_is_named():
    from zoo import AutoConfig

    with pytest.raises(ValueError, match="rotary_pct"):
        AutoConfig.for_model("gpt_neox", hidden_size=32, num_attention_heads=4, rotary_pct=1.5)


def test_fsdp_tp_mesh_matches_unsharded(neox):
    """On a data x fsdp x tensor mesh of the 8 host devices the per-head fused qkv is split over
    heads (tensor) and embed (fsdp), and the logits do not change."""
    from conftest import assert_close_rel

    from zoo import make_mesh
    from zoo.sharding import use_mesh

    _, folder = neox
    ids, mask = left_padded_batch(BASE["vocab_size"], batch=4)
    ref = np.asarray(AutoModelForCausalLM.from_pretrained(folder)(ids, attention_mask=mask).logits)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules="fsdp+tp")
    qkv = model.params["layers"]["attention"]["query_key_value"]["kernel"]
    assert tuple(qkv.sharding.spec)[:3] == (None, "fsdp", "tensor")
    with use_mesh(mesh, "fsdp+tp"):
        out = np.asarray(model(ids, attention_mask=mask).logits)
    assert_close_rel(out, ref, 1e-5, mask.astype(bool))
