"""Orbax checkpoints of the sharded TrainState: resume equals not stopping (also onto another
mesh), keep-N, interrupted saves never hide the last good step, export to a Hub folder."""
from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from tests.conftest import assert_close_rel, make_hf_model, save_hf, torch_logits

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_hf(make_hf_model("LlamaConfig", "LlamaForCausalLM", **LLAMA), tmp_path_factory.mktemp("llama"))


def batches(seed=0):
    from zoo.train.data import PackedBatches, pack_documents

    rng = np.random.RandomState(seed)
    docs = [(s + np.arange(n)) % 120 + 3 for s, n in zip(rng.randint(0, 120, 40), rng.randint(4, 12, 40))]
    return PackedBatches(pack_documents(docs, 12), 4, seed=seed)


def setup(folder, mesh_shape, rules):
    from zoo import AutoModelForCausalLM
    from zoo.sharding import make_mesh, param_shardings
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    mesh = make_mesh(mesh_shape, devices=jax.devices()[:int(np.prod(list(mesh_shape.values())))])
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules=rules)
    opt = optax.adamw(1e-2)
    state = create_train_state(model, opt, rng=0, shardings=param_shardings(model.params, model.param_axes(), mesh,
                                                                             rules))
    step = make_train_step(causal_lm_loss_fn(model), opt, max_grad_norm=1.0, mesh=mesh, rules=rules)
    return model, mesh, state, step


def test_resume_onto_another_mesh_equals_not_stopping(folder, tmp_path):
    from zoo.sharding import shard_batch
    from zoo.train.checkpoint import CheckpointManager, abstract_state

    model, mesh, state, step = setup(folder, {"fsdp": 4, "tensor": 2}, "fsdp+tp")
    data = batches()
    with CheckpointManager(tmp_path / "ckpt", max_to_keep=2) as ckpt:
        for i in range(1, 3):
            state, _ = step(state, shard_batch(next(data), mesh, "fsdp+tp"))
            ckpt.save(i, state, data_state=data.state_dict(), metadata={"note": "tiny"})
        # Keep going without stopping: the reference for the next losses.
        expected = []
        for _ in range(2):
            state, m = step(state, shard_batch(next(data), mesh, "fsdp+tp"))
            expected.append(float(m["loss"]))
    # A new process on a 2-device fsdp mesh picks up where step 2 left off.
    _, mesh2, fresh, step2 = setup(folder, {"fsdp": 2}, "fsdp")
    with CheckpointManager(tmp_path / "ckpt") as ckpt:
        assert ckpt.all_steps() == [1, 2] and ckpt.latest_step() == 2
        restored, extra = ckpt.restore(abstract_state(fresh))
    assert int(restored.step) == 2 and extra["metadata"] == {"note": "tiny"}
    q = restored.params["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.mesh.shape == {"fsdp": 2} and q.sharding.spec[1] == "fsdp"
    data2 = batches()
    data2.load_state_dict(extra["data_state"])
    got = []
    for _ in range(2):
        restored, m = step2(restored, shard_batch(next(data2), mesh2, "fsdp"))
        got.append(float(m["loss"]))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_keep_n_and_interrupted_save(folder, tmp_path):
    from zoo import AutoModelForCausalLM
    from zoo.train import create_train_state
    from zoo.train.checkpoint import CheckpointManager

    model = AutoModelForCausalLM.from_pretrained(folder)
    state = create_train_state(model, optax.sgd(0.1))
    directory = tmp_path / "ckpt"
    with CheckpointManager(directory, max_to_keep=2, async_save=True) as ckpt:
        for i in (1, 2, 3):
            ckpt.save(i, state.replace(step=state.step + i))
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [2, 3]
    # A save killed half-way: orbax's temporary directory holding a partial array file.
    partial = directory / "4.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\x00" * 10)
    with CheckpointManager(directory, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() == 3
        restored, _ = ckpt.restore(state)
        assert int(restored.step) == 3
        for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # Saving again after the crash works and the partial directory is never taken for a step.
        ckpt.save(5, state.replace(step=state.step + 5))
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [3, 5]
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        CheckpointManager(tmp_path / "empty").restore(state)


def test_export_trained_params_loads_in_transformers(folder, tmp_path):
    import transformers

    from zoo import AutoModelForCausalLM
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step
    from zoo.train.checkpoint import export_pretrained

    model = AutoModelForCausalLM.from_pretrained(folder)
    opt = optax.adamw(1e-2)
    state = create_train_state(model, opt)
    state, _ = make_train_step(causal_lm_loss_fn(model), opt)(state, next(batches()))
    export_pretrained(model, state, tmp_path / "out")
    ids = np.random.RandomState(0).randint(3, 128, (2, 8)).astype(np.int32)
    ours = np.asarray(type(model)(model.config, state.full_params())(ids).logits)
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert_close_rel(torch_logits(back, ids), ours, 1e-5)
    assert np.abs(ours - np.asarray(model(ids).logits)).max() > 1e-3, "the export holds the trained params"
