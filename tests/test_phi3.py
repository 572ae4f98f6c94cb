"""Phi-3 parity with PyTorch Transformers: fused qkv / gate_up (split on load, fused on save),
GQA 4:1, partial rotary, longrope on both sides of original_max_position_embeddings, sliding
window, tied embeddings, bf16, greedy generation, the old ``rope_scaling`` spelling."""
import json

import numpy as np
import pytest
import torch
from conftest import (assert_close_rel, check_decoder_parity, left_padded_batch, make_hf_model, save_hf,
                      torch_logits)

from zoo import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=64, original_max_position_embeddings=64,
            initializer_range=0.1, bos_token_id=1, eos_token_id=5, pad_token_id=0)


def longrope(original: int, rotary_dim: int = 8, theta: float = 10000.0) -> dict:
    half = rotary_dim // 2
    return dict(original_max_position_embeddings=original,
                rope_parameters={"rope_type": "longrope", "rope_theta": theta,
                                 "short_factor": np.linspace(1.0, 1.5, half).tolist(),
                                 "long_factor": np.linspace(1.0, 6.0, half).tolist()})


def test_gqa4_partial_rotary(tmp_path):
    cfg = dict(BASE, rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5})
    check_decoder_parity(tmp_path, "Phi3Config", "Phi3ForCausalLM", cfg)


def test_longrope_short_sequence(tmp_path):
    """Every position below original_max_position_embeddings: short factors, attention factor from 64/16."""
    check_decoder_parity(tmp_path, "Phi3Config", "Phi3ForCausalLM", dict(BASE, **longrope(16)), layouts=(True,))


def test_longrope_long_sequence_tied(tmp_path):
    """Positions past original_max_position_embeddings (4): long factors, in one pass and cached."""
    cfg = dict(BASE, num_key_value_heads=2, tie_word_embeddings=True, **longrope(4))
    check_decoder_parity(tmp_path, "Phi3Config", "Phi3ForCausalLM", cfg, layouts=(False,))


def test_sliding_window(tmp_path):
    check_decoder_parity(tmp_path, "Phi3Config", "Phi3ForCausalLM", dict(BASE, sliding_window=3),
                         layouts=(True,))


def test_bf16(tmp_path):
    check_decoder_parity(tmp_path, "Phi3Config", "Phi3ForCausalLM", dict(BASE, **longrope(16)), dtype="bfloat16",
                         layouts=(False,), check_resave=False, check_cache=False)


def test_saved_checkpoint_is_fused(tmp_path):
    from zoo.hub import CheckpointReader

    hf = make_hf_model("Phi3Config", "Phi3ForCausalLM", **BASE)
    model = AutoModelForCausalLM.from_pretrained(save_hf(hf, tmp_path / "hf"))
    model.save_pretrained(tmp_path / "ours")
    ours, ref = CheckpointReader(tmp_path / "ours"), hf.state_dict()
    assert sorted(ours.keys()) == sorted(ref)
    for name in ("model.layers.1.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight"):
        np.testing.assert_array_equal(ours.get(name), ref[name].numpy())


def test_fused_rows_mismatch_is_named(tmp_path):
    from zoo import CheckpointError

    hf = make_hf_model("Phi3Config", "Phi3ForCausalLM", **BASE)
    with pytest.raises(CheckpointError, match="fused tensor 'model.layers.0.self_attn.qkv_proj.weight' has 48 rows"):
        AutoModelForCausalLM.from_pretrained(save_hf(hf, tmp_path / "hf"), num_key_value_heads=2)


def test_greedy_generate_matches_transformers(tmp_path):
    hf = make_hf_model("Phi3Config", "Phi3ForCausalLM", **dict(BASE, sliding_window=4, **longrope(32)))
    folder = save_hf(hf, tmp_path / "hf")
    ids, mask = left_padded_batch(BASE["vocab_size"], seq=7)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=8,
                          do_sample=False).numpy()
    ours = AutoModelForCausalLM.from_pretrained(folder, scan_layers=False).generate(ids, attention_mask=mask,
                                                                                     max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(ours), ref)


@pytest.fixture(scope="module")
def crossing_model(tmp_path_factory):
    """Longrope switching at 8 positions: a 5-token prompt with 10 new tokens crosses it mid-generation.
    Long factors far from the short ones and larger weights make a stale cache change the tokens."""
    cfg = dict(BASE, initializer_range=0.2, **longrope(8))
    cfg["rope_parameters"]["long_factor"] = np.linspace(1.0, 40.0, 4).tolist()
    hf = make_hf_model("Phi3Config", "Phi3ForCausalLM", **cfg)
    return hf, AutoModelForCausalLM.from_pretrained(save_hf(hf, tmp_path_factory.mktemp("phi3")), scan_layers=False)


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_generate_across_original_max_position_embeddings(crossing_model, batch, monkeypatch):
    """Transformers drops the cache once when the sequence reaches 8 + 1 tokens (counting left padding)
    and recomputes every position with the long factors; tokens and every step's logits must match."""
    hf, model = crossing_model
    ids, mask = left_padded_batch(BASE["vocab_size"], batch=batch, seq=5, seed=0)
    assert ids.shape[1] <= 8 < ids.shape[1] + 10 - 1  # the prompt is short, a generated token is fed past 8
    kw = dict(max_new_tokens=10, eos_token_id=None, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, **kw)
    ours = model.generate(ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(ours.sequences, ref.sequences.numpy())
    for a, b in zip(ours.logits, ref.logits):
        assert_close_rel(a, b.numpy(), 1e-4)
    if batch == 1:  # streamed in chunks of 2 steps (17 -> 19 -> 21 in the buffer): the switch at 20 falls inside one
        got = []

        class Collect:
            def put(self, x):
                got.extend(np.asarray(x).reshape(-1).tolist())

            def end(self):
                pass

        model.generate(ids, max_new_tokens=10, eos_token_id=None, streamer=Collect(), stream_chunk_size=2)
        assert got == ref.sequences[0].tolist()
    # the case is sensitive: keeping the short-factor cache across the switch changes the tokens
    import zoo.models.phi3 as phi3

    monkeypatch.delattr(phi3, "cache_reset_length")
    stale = model.generate(ids, attention_mask=mask, **kw)
    assert not np.array_equal(stale.sequences, ref.sequences.numpy())


def test_beam_search_across_original_max_position_embeddings(crossing_model, monkeypatch):
    """Beam search (Transformers' prepare_inputs_for_generation serves it too): the beams' sequences are
    re-run with the long factors at the same step."""
    hf, model = crossing_model
    ids, mask = left_padded_batch(BASE["vocab_size"], batch=2, seq=5, seed=0)
    kw = dict(max_new_tokens=10, eos_token_id=None, num_beams=2, num_return_sequences=2)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, **kw).numpy()
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask, **kw), ref)
    import zoo.models.phi3 as phi3

    monkeypatch.delattr(phi3, "cache_reset_length")
    assert not np.array_equal(model.generate(ids, attention_mask=mask, **kw), ref)


def test_assisted_across_original_max_position_embeddings_falls_back_to_plain(crossing_model):
    """A verification forward spanning the switch would mix factors; assisted decoding hands the call to
    plain decoding (same greedy tokens, which equal Transformers' plain greedy) and says so."""
    hf, model = crossing_model
    ids, mask = left_padded_batch(BASE["vocab_size"], batch=1, seq=5, seed=0)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, max_new_tokens=10,
                          eos_token_id=None).numpy()
    for extra in (dict(prompt_lookup_num_tokens=3), dict(assistant_model=model, num_assistant_tokens=3)):
        with pytest.warns(UserWarning, match="falls back to plain decoding"):
            out = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None, **extra)
        np.testing.assert_array_equal(out, ref)


def test_sequence_classification(tmp_path):
    hf = make_hf_model("Phi3Config", "Phi3ForSequenceClassification", **BASE, num_labels=3)
    ids, mask = left_padded_batch(BASE["vocab_size"])
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = AutoModelForSequenceClassification.from_pretrained(save_hf(hf, tmp_path / "hf"))
    assert_close_rel(model(ids, attention_mask=mask).logits, ref, 1e-4)


def test_old_rope_scaling_spelling(tmp_path):
    """Older config.json files: rope_scaling of type "su" (Phi-3-mini-128k), rope_theta and
    partial_rotary_factor (Phi-4-mini) at the top level."""
    cfg = dict(BASE, **longrope(4, rotary_dim=4))
    cfg["rope_parameters"]["partial_rotary_factor"] = 0.5
    hf = make_hf_model("Phi3Config", "Phi3ForCausalLM", **cfg)
    folder = save_hf(hf, tmp_path / "hf")
    data = json.loads(open(f"{folder}/config.json").read())
    rp = data.pop("rope_parameters")
    data["rope_theta"] = rp.pop("rope_theta")
    data["partial_rotary_factor"] = rp.pop("partial_rotary_factor")
    data["rope_scaling"] = {"type": "su", "short_factor": rp["short_factor"], "long_factor": rp["long_factor"]}
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps(data))
    (old / "model.safetensors").write_bytes(open(f"{folder}/model.safetensors", "rb").read())
    ids, mask = left_padded_batch(BASE["vocab_size"])
    a = AutoModelForCausalLM.from_pretrained(folder)(ids, attention_mask=mask).logits
    b = AutoModelForCausalLM.from_pretrained(old)(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert AutoConfig.from_pretrained(old).rope.dim == 4
    assert_close_rel(b, torch_logits(hf, ids, mask), 1e-4, mask.astype(bool))


def test_bad_longrope_factors_are_named():
    cfg = dict(BASE, **longrope(16))
    cfg["rope_parameters"] = dict(cfg["rope_parameters"], long_factor=[1.0, 2.0])
    with pytest.raises(ValueError, match="long_factor"):
        AutoConfig.for_model("phi3", **cfg)


def test_preset():
    cfg = AutoConfig.from_pretrained("phi3-mini")
    assert type(cfg).__name__ == "Phi3Config"
    assert (cfg.hidden_size, cfg.head_dim, cfg.sliding_window, cfg.layer_windows()[-1]) == (3072, 96, 2047, 2047)


def test_tensor_parallel_mesh(tmp_path):
    """The fused tensors are split before placement, so q/k/v and gate/up shard like Llama's."""
    from zoo import make_mesh

    hf = make_hf_model("Phi3Config", "Phi3ForCausalLM", **dict(BASE, num_key_value_heads=2))
    folder = save_hf(hf, tmp_path / "hf")
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules="fsdp+tp")
    assert "tensor" in model.params["layers"]["self_attn"]["k_proj"]["kernel"].sharding.spec
    ids, mask = left_padded_batch(BASE["vocab_size"], batch=4)
    ref = AutoModelForCausalLM.from_pretrained(folder)(ids, attention_mask=mask).logits
    assert_close_rel(model(ids, attention_mask=mask).logits, ref, 1e-5, mask.astype(bool))
