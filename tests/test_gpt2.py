"""GPT-2 parity with PyTorch Transformers: Conv1D layout, fused qkv, learned positions, tied head."""
import numpy as np
import pytest
import torch
from conftest import check_decoder_parity, left_padded_batch, make_hf_model, save_hf

from zoo import AutoModelForCausalLM

BASE = dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1,
            bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    hf = make_hf_model("GPT2Config", "GPT2LMHeadModel", **BASE)
    return hf, save_hf(hf, tmp_path_factory.mktemp("gpt2"))


def test_fp32_parity_both_layouts_and_resave(tmp_path):
    model = check_decoder_parity(tmp_path, "GPT2Config", "GPT2LMHeadModel", BASE)
    assert model.hf_architecture() == "GPT2LMHeadModel"


def test_untied_head_gelu_exact_inner_size(tmp_path):
    cfg = dict(BASE, tie_word_embeddings=False, activation_function="gelu", n_inner=40)
    check_decoder_parity(tmp_path, "GPT2Config", "GPT2LMHeadModel", cfg, layouts=(False,), check_cache=False)


def test_bfloat16(tmp_path):
    check_decoder_parity(tmp_path, "GPT2Config", "GPT2LMHeadModel", BASE, dtype="bfloat16", layouts=(True,),
                         check_resave=False, check_cache=False)


def test_greedy_generate_matches_transformers(gpt2):
    hf, folder = gpt2
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=7)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=8, do_sample=False,
                          pad_token_id=0).numpy()
    ours = AutoModelForCausalLM.from_pretrained(folder).generate(ids, attention_mask=mask, max_new_tokens=8,
                                                                  pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_unprefixed_hub_checkpoint_with_mask_buffers(gpt2, tmp_path):
    """Old Hub GPT-2 files name tensors without ``transformer.`` and carry ``attn.bias`` buffers."""
    from safetensors.numpy import load_file, save_file

    hf, folder = gpt2
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(f"{folder}/model.safetensors").items()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    out = tmp_path / "old"
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(open(f"{folder}/config.json").read())
    ids, mask = left_padded_batch(BASE["vocab_size"])
    a = AutoModelForCausalLM.from_pretrained(folder)(ids, attention_mask=mask).logits
    b = AutoModelForCausalLM.from_pretrained(out)(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unsupported_options_are_named():
    from zoo import AutoConfig

    with pytest.raises(ValueError, match="add_cross_attention"):
        AutoConfig.for_model("gpt2", n_embd=32, n_head=4, add_cross_attention=True)
    with pytest.raises(ValueError, match="multiple of n_head"):
        AutoConfig.for_model("gpt2", n_embd=30, n_head=4)


def test_fsdp_tp_mesh_matches_unsharded(gpt2):
    """On a data x fsdp x tensor mesh of the 8 host devices the fused qkv is split over heads
    (tensor) and embed (fsdp), the MLP over its inner dim, and the logits do not change."""
    from conftest import assert_close_rel

    from zoo import make_mesh
    from zoo.sharding import use_mesh

    _, folder = gpt2
    ids, mask = left_padded_batch(BASE["vocab_size"], batch=4)
    ref = np.asarray(AutoModelForCausalLM.from_pretrained(folder)(ids, attention_mask=mask).logits)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules="fsdp+tp")
    layers = model.params["layers"]
    assert tuple(layers["attn"]["c_attn"]["kernel"].sharding.spec) == (None, "fsdp", None, "tensor", None)
    assert tuple(layers["mlp"]["c_fc"]["kernel"].sharding.spec) == (None, "fsdp", "tensor")
    with use_mesh(mesh, "fsdp+tp"):
        out = np.asarray(model(ids, attention_mask=mask).logits)
    assert_close_rel(out, ref, 1e-5, mask.astype(bool))
