"""Hub I/O: sharded save/load, atomic saves, and a clear error for every bad input."""
import json
import os
import shutil

import numpy as np
import pytest
from conftest import assert_close_rel, make_hf_model, save_hf, torch_logits

from zoo import AutoConfig, AutoModel, AutoModelForCausalLM, CheckpointError
from zoo.hub import SafetensorsFile, write_safetensors

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
           num_key_value_heads=1, max_position_embeddings=32, initializer_range=0.1)


@pytest.fixture(scope="module")
def hf_llama():
    return make_hf_model("LlamaConfig", "LlamaForCausalLM", **CFG)


@pytest.fixture
def ckpt(tmp_path, hf_llama):
    return save_hf(hf_llama, tmp_path / "ckpt")


def _rewrite(folder, fn):
    """Load model.safetensors, let fn edit the dict, write it back."""
    path = os.path.join(folder, "model.safetensors")
    f = SafetensorsFile(path)
    tensors = {k: np.array(f.get(k)) for k in f.keys()}
    del f
    fn(tensors)
    write_safetensors(path, tensors)


def test_sharded_save_loads_in_transformers(tmp_path, ckpt, hf_llama):
    import transformers

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="4KB")
    files = sorted(os.listdir(tmp_path / "sharded"))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    assert not any(f.startswith(".") for f in files), files
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "sharded")).eval()
    ids = np.arange(10).reshape(1, 10)
    assert_close_rel(torch_logits(back, ids), torch_logits(hf_llama, ids), 1e-6)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    assert_close_rel(again(ids).logits, torch_logits(hf_llama, ids), 1e-4)


def test_missing_tensor_named(ckpt):
    _rewrite(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_extra_tensor_named(ckpt):
    _rewrite(ckpt, lambda t: t.__setitem__("model.layers.0.surprise.weight", np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match=r"does not use: model\.layers\.0\.surprise\.weight"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_shape_mismatch_named(ckpt):
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    cfg["intermediate_size"] = 40
    json.dump(cfg, open(os.path.join(ckpt, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=r"gate_proj\.weight' has shape \(32, 16\) but the config implies \(40, 16\)"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_truncated_file(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError, match="truncated"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_corrupt_header(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"{not json!!")
    with pytest.raises(CheckpointError, match="corrupt"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_unknown_model_type(ckpt):
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    cfg["model_type"] = "frobnicator"
    json.dump(cfg, open(os.path.join(ckpt, "config.json"), "w"))
    with pytest.raises(ValueError, match=r"unsupported model_type 'frobnicator'.*llama"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_pickle_only_refused(ckpt):
    os.remove(os.path.join(ckpt, "model.safetensors"))
    with open(os.path.join(ckpt, "pytorch_model.bin"), "wb") as f:
        f.write(b"\x80\x04 this would be a pickle")
    with pytest.raises(CheckpointError, match="never unpickles"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_remote_code_refused(ckpt):
    with pytest.raises(ValueError, match="never runs code"):
        AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True)
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    cfg.update(model_type="my_custom", auto_map={"AutoModelForCausalLM": "modeling_custom.Custom"})
    json.dump(cfg, open(os.path.join(ckpt, "config.json"), "w"))
    with pytest.raises(ValueError, match="custom code"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_missing_shard_file(tmp_path, ckpt):
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    model.save_pretrained(tmp_path / "sh", max_shard_size="4KB")
    index = json.load(open(tmp_path / "sh" / "model.safetensors.index.json"))
    victim = sorted(set(index["weight_map"].values()))[1]
    os.remove(tmp_path / "sh" / victim)
    with pytest.raises(CheckpointError, match=f"missing files listed in its index.*{victim}"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "sh")


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, ckpt, monkeypatch):
    import zoo.hub as hub

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    out = tmp_path / "out"
    model.save_pretrained(out, max_shard_size="4KB")
    before = sorted(os.listdir(out))
    calls = {"n": 0}
    real = hub.write_safetensors

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("power cut")
        return real(*a, **k)

    monkeypatch.setattr(hub, "write_safetensors", flaky)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(out, max_shard_size="4KB")
    assert sorted(os.listdir(out)) == before  # nothing half-written, old checkpoint whole
    AutoModelForCausalLM.from_pretrained(out)


def test_no_weights_at_all(tmp_path, ckpt):
    os.remove(os.path.join(ckpt, "model.safetensors"))
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        AutoModelForCausalLM.from_pretrained(ckpt)


def test_missing_folder_offline():
    with pytest.raises(OSError, match="could not resolve 'nobody/nothing-here'"):
        AutoModelForCausalLM.from_pretrained("nobody/nothing-here")


def test_push_to_hub_with_mock_api(ckpt):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
            return "ok"

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert model.push_to_hub("me/tiny", api=FakeApi()) == "ok"
    assert calls[0] == ("create", "me/tiny")
    assert calls[1][2] == ["config.json", "generation_config.json", "model.safetensors"]


def test_config_round_trip_keeps_unknown_keys(tmp_path, ckpt):
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    cfg["my_custom_field"] = {"nested": [1, 2, 3]}
    json.dump(cfg, open(os.path.join(ckpt, "config.json"), "w"))
    c = AutoConfig.from_pretrained(ckpt)
    hash(c)  # static jit argument
    c.save_pretrained(tmp_path / "c")
    back = json.load(open(tmp_path / "c" / "config.json"))
    assert back["my_custom_field"] == {"nested": [1, 2, 3]}
    for key in ("hidden_size", "num_key_value_heads", "rms_norm_eps", "vocab_size", "rope_parameters"):
        assert back[key] == cfg[key], key


def test_presets_by_name():
    c = AutoConfig.from_pretrained("qwen3-0.6b")
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.head_dim) == ("qwen3", 1024, 28, 128)
    c = AutoConfig.from_pretrained("llama3.2-1b")
    assert c.rope.rope_type == "llama3" and c.tie_word_embeddings


def test_base_model_loads_causal_checkpoint_and_saves_bare(tmp_path, ckpt, hf_llama):
    import torch
    import transformers

    base = AutoModel.from_pretrained(ckpt)
    ids = np.arange(6).reshape(1, 6)
    with torch.no_grad():
        ref = hf_llama.model(torch.tensor(ids)).last_hidden_state.numpy()
    assert_close_rel(base(ids).last_hidden_state, ref, 1e-4)
    base.save_pretrained(tmp_path / "bare")
    back = transformers.LlamaModel.from_pretrained(str(tmp_path / "bare")).eval()
    with torch.no_grad():
        assert_close_rel(back(torch.tensor(ids)).last_hidden_state.numpy(), ref, 1e-6)
