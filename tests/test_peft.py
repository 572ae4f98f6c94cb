"""LoRA in the PEFT format, against the real ``peft`` library on PyTorch Transformers: adapters
move both ways with equal logits, gradients of the adapters match, only adapters train, merging."""
from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest

from tests.conftest import assert_close_rel, left_padded_batch, make_hf_model, save_hf, torch_logits

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    hf = make_hf_model("LlamaConfig", "LlamaForCausalLM", **LLAMA)
    return save_hf(hf, tmp_path_factory.mktemp("base"))


def hf_base(folder):
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def peft_adapter(base, tmp_path_factory):
    """An adapter made and saved by ``peft`` itself, with random (non-zero) A and B."""
    import peft
    import torch

    torch.manual_seed(1)
    model = peft.get_peft_model(hf_base(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                               lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("peft-adapter")
    model.save_pretrained(str(out))
    return str(out), model.eval()


@pytest.mark.parametrize("scan_layers", [True, False])
def test_loads_adapters_saved_by_peft(base, peft_adapter, scan_layers):
    from zoo import AutoModelForCausalLM
    from zoo.peft import PeftModel

    folder, torch_peft = peft_adapter
    ids, mask = left_padded_batch(LLAMA["vocab_size"], batch=3, seq=8)
    ref = torch_logits(torch_peft, ids, mask)
    plain = torch_logits(hf_base(base), ids, mask)
    assert np.abs(ref - plain).max() > 1e-2, "the adapter must change the logits for the check to mean anything"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, scan_layers=scan_layers), folder)
    assert model.peft_config.r == 4 and model.peft_config.scaling == 2.0
    out = np.asarray(model(ids, attention_mask=mask).logits)
    assert_close_rel(out, ref, 1e-5, mask.astype(bool))
    doubled = jax.tree.map(lambda x: x, model)  # a pytree: maps back to a PeftModel
    assert isinstance(doubled, PeftModel) and doubled.peft_config == model.peft_config
    merged = model.merge_and_unload()
    assert "lora_a" not in str(jax.tree_util.tree_structure(merged.params))
    assert_close_rel(np.asarray(merged(ids, attention_mask=mask).logits), ref, 1e-5, mask.astype(bool))


def test_peft_loads_ours_and_gradients_match(base, tmp_path):
    import peft
    import torch

    from zoo import AutoModelForCausalLM
    from zoo.peft import LoraConfig, get_peft_model
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, bias="none"))
    ids, mask = left_padded_batch(LLAMA["vocab_size"], batch=3, seq=8)
    # Fresh adapters (B = 0) leave the model as it was.
    assert_close_rel(np.asarray(model(ids, attention_mask=mask).logits), torch_logits(hf_base(base), ids, mask), 1e-5,
                     mask.astype(bool))
    # Train a few steps so B is non-zero, then save in PEFT's format.
    opt = optax.adam(5e-2)
    state = create_train_state(model, opt)
    step = make_train_step(causal_lm_loss_fn(model), opt)
    labels = np.where(mask == 1, ids, -100)
    labels[1:, :5] = -100  # the first real token of a left-padded row is predicted from padding
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for _ in range(3):
        state, metrics = step(state, batch)
    trained = model.with_params(state.full_params())
    trained.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(TARGETS)
    from safetensors.numpy import load_file

    names = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in names
    assert "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" in names
    assert len(names) == 2 * len(TARGETS) * LLAMA["num_hidden_layers"]

    torch_model = peft.PeftModel.from_pretrained(hf_base(base), str(tmp_path), is_trainable=True).eval()
    ours = np.asarray(trained(ids, attention_mask=mask).logits)
    assert_close_rel(torch_logits(torch_model, ids, mask), ours, 1e-5, mask.astype(bool))

    # Loss and every adapter gradient equal peft's (a loss-free "optimizer" keeps the gradient).
    keep = optax.GradientTransformation(lambda p: jax.tree.map(np.zeros_like, p),
                                        lambda g, s, p=None: (jax.tree.map(lambda x: 0 * x, g), g))
    state = create_train_state(trained, keep)
    state, m = make_train_step(causal_lm_loss_fn(trained), keep)(state, batch)
    torch_model.train()
    out = torch_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    out.loss.backward()
    assert abs(float(m["loss"]) - out.loss.item()) <= 1e-5 * out.loss.item()
    grads = dict(trained.with_params(state.opt_state).adapter_tensors())
    ref = {k.replace(".default", ""): p.grad.numpy() for k, p in torch_model.named_parameters() if p.grad is not None}
    assert set(grads) == set(ref)
    for name, g in grads.items():
        assert_close_rel(g, ref[name], 1e-4), name


def test_only_adapters_train(base, capsys):
    import peft

    from zoo import AutoModelForCausalLM
    from zoo.peft import LoraConfig, get_peft_model
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["q_proj", "up_proj"]))
    opt = optax.adamw(1e-2)
    state = create_train_state(model, opt)
    trainable = jax.tree.leaves(state.params)
    assert len(trainable) == 4  # lora_a, lora_b of two (stacked) modules
    adam = state.opt_state[0]
    assert {x.shape for x in jax.tree.leaves(adam.mu)} == {x.shape for x in trainable}
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert n_opt == 2 * sum(x.size for x in trainable) + 1, "Adam's moments for the adapters, and a count"
    frozen_before = jax.tree.map(np.asarray, state.frozen)
    step = make_train_step(causal_lm_loss_fn(model), opt)
    ids = np.random.RandomState(0).randint(3, 128, (2, 8)).astype(np.int32)
    state, _ = step(state, {"input_ids": ids})
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(state.frozen)):
        np.testing.assert_array_equal(a, np.asarray(b))
    # Dropout is on while training (two keys, two losses) and off in the model's own call.
    loss_fn = causal_lm_loss_fn(model)
    full = state.full_params()
    l1, l2 = (float(loss_fn(full, {"input_ids": ids}, jax.random.PRNGKey(k))[0]) for k in (1, 2))
    assert l1 != l2
    l0 = float(loss_fn(full, {"input_ids": ids}, None)[0])
    assert l0 == float(loss_fn(full, {"input_ids": ids}, None)[0])

    model.print_trainable_parameters()
    printed = capsys.readouterr().out.strip()
    torch_model = peft.get_peft_model(hf_base(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj",
                                                                                                    "up_proj"]))
    trainable_n, total_n = torch_model.get_nb_trainable_parameters()
    assert printed == (f"trainable params: {trainable_n:,d} || all params: {total_n:,d} || "
                       f"trainable%: {100 * trainable_n / total_n:.4f}")


def test_bad_configs_are_named():
    from zoo.peft import LoraConfig

    with pytest.raises(ValueError, match="bias='all' is not supported"):
        LoraConfig(bias="all")
    with pytest.raises(ValueError, match="rank r"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="use_dora"):
        LoraConfig.from_dict({"peft_type": "LORA", "r": 4, "use_dora": True})


def test_unknown_target_module_is_named(base):
    from zoo import AutoModelForCausalLM
    from zoo.peft import LoraConfig, get_peft_model

    with pytest.raises(ValueError, match=r"target_modules \['qkv'\] not found"):
        get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(target_modules=["q_proj", "qkv"]))


def test_adapters_on_a_sharded_base(base, peft_adapter):
    from zoo import AutoModelForCausalLM
    from zoo.peft import PeftModel
    from zoo.sharding import make_mesh, use_mesh

    folder, torch_peft = peft_adapter
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, mesh=mesh, rules="fsdp+tp"), folder)
    lora_a = model.params["layers"]["self_attn"]["q_proj"]["lora_a"]
    assert lora_a.sharding.mesh.shape == mesh.shape  # small adapters: replicated on the base's mesh
    ids, mask = left_padded_batch(LLAMA["vocab_size"], batch=4, seq=8)
    with use_mesh(mesh, "fsdp+tp"):
        out = np.asarray(model(ids, attention_mask=mask).logits)
    assert_close_rel(out, torch_logits(torch_peft, ids, mask), 1e-5, mask.astype(bool))
