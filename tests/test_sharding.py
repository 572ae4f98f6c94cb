"""Meshes and rule presets on 8 host CPU devices (tests/conftest.py): params really spread as
the rules say, and sharded logits / train steps equal the single-device ones."""
from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from tests.conftest import assert_close_rel, left_padded_batch, make_hf_model, save_hf

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
MIXTRAL = dict(vocab_size=128, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)
MESH_SHAPE = {"data": 2, "fsdp": 2, "tensor": 2}


def spec_of(x) -> tuple:
    """A sharding's spec with trailing replicated dims dropped: ('fsdp', None) -> ('fsdp',)."""
    spec = tuple(x.sharding.spec)
    while spec and spec[-1] is None:
        spec = spec[:-1]
    return spec


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_hf(make_hf_model("LlamaConfig", "LlamaForCausalLM", **LLAMA), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def reference(folder):
    from zoo import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def test_make_mesh_shapes_and_errors():
    from zoo.sharding import make_mesh

    assert len(jax.devices()) == 8, "tests/conftest.py asks for 8 host devices"
    mesh = make_mesh(MESH_SHAPE)
    assert dict(mesh.shape) == MESH_SHAPE and mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(make_mesh().shape) == {"data": 8}
    assert dict(make_mesh({"fsdp": -1, "tensor": 2}).shape) == {"fsdp": 4, "tensor": 2}
    assert dict(make_mesh({"data": 2}, devices=jax.devices()[:2]).shape) == {"data": 2}
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"model": 8})
    with pytest.raises(ValueError, match="needs 6 devices"):
        make_mesh({"data": 3, "tensor": 2})
    from zoo.sharding import get_rules

    with pytest.raises(ValueError, match="unknown sharding rules 'zz'"):
        get_rules("zz")


def test_logical_to_spec_skips_missing_and_indivisible_axes():
    from zoo.sharding import RULE_PRESETS, logical_to_spec, make_mesh

    mesh = make_mesh(MESH_SHAPE)
    rules = RULE_PRESETS["fsdp+tp"]
    assert logical_to_spec(("batch", "seq", "act_embed"), rules, mesh, (8, 4, 32)) == P(("data", "fsdp"), None, None)
    # 2 rows: only "data" divides it; "expert" is not in the mesh.
    assert logical_to_spec(("batch", None), rules, mesh, (2, 4)) == P("data", None)
    # 3 heads: tensor (2) does not divide them, so they stay replicated.
    assert logical_to_spec(("embed", "q_heads"), rules, mesh, (32, 3)) == P("fsdp", None)
    # A mesh axis is never used twice in one spec.
    assert logical_to_spec(("vocab", "embed"), RULE_PRESETS["fsdp"], mesh, (128, 32)) == P("fsdp", None)


# Expected specs (trailing replicated dims dropped) for a few params under each preset.
EXPECTED = {
    "dp": {"embed": (), "q": (), "k": (), "gate": (), "down": (), "head": (), "norm": ()},
    "fsdp": {"embed": ("fsdp",), "q": (None, "fsdp"), "k": (None, "fsdp"), "gate": (None, "fsdp"),
             "down": (None, None, "fsdp"), "head": ("fsdp",), "norm": ()},
    "tp": {"embed": ("tensor",), "q": (None, None, "tensor"), "k": (None, None, "tensor"),
           "gate": (None, None, "tensor"), "down": (None, "tensor"), "head": (None, "tensor"), "norm": ()},
    "fsdp+tp": {"embed": ("tensor", "fsdp"), "q": (None, "fsdp", "tensor"), "k": (None, "fsdp", "tensor"),
                "gate": (None, "fsdp", "tensor"), "down": (None, "tensor", "fsdp"), "head": ("fsdp", "tensor"),
                "norm": ()},
}


def picked(params) -> dict:
    layers, attn = params["layers"], params["layers"]["self_attn"]
    return {"embed": params["embed_tokens"]["embedding"], "q": attn["q_proj"]["kernel"],
            "k": attn["k_proj"]["kernel"], "gate": layers["mlp"]["gate_proj"]["kernel"],
            "down": layers["mlp"]["down_proj"]["kernel"], "head": params["lm_head"]["kernel"],
            "norm": params["norm"]["scale"]}


@pytest.mark.parametrize("preset", ["dp", "fsdp", "tp", "fsdp+tp"])
def test_from_pretrained_places_params_and_logits_match(folder, reference, preset):
    from zoo import AutoModelForCausalLM
    from zoo.sharding import make_mesh, use_mesh

    mesh = make_mesh(MESH_SHAPE)
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules=preset)
    for name, arr in picked(model.params).items():
        assert spec_of(arr) == EXPECTED[preset][name], (preset, name, arr.sharding.spec)
    if preset != "dp":  # really spread: a device holds only part of a sharded weight
        q = picked(model.params)["q"]
        assert q.addressable_shards[0].data.size < q.size
    ids, mask = left_padded_batch(LLAMA["vocab_size"], batch=4, seq=8)
    ref = np.asarray(reference(ids, attention_mask=mask).logits)
    with use_mesh(mesh, preset):
        out = model(ids, attention_mask=mask).logits
    assert_close_rel(np.asarray(out), ref, 1e-5, mask.astype(bool))


def test_shard_params_places_a_loaded_tree(reference):
    from zoo.sharding import make_mesh, shard_params

    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    sharded = shard_params(reference.params, reference.param_axes(), mesh, "fsdp+tp")
    assert spec_of(picked(sharded)["q"]) == (None, "fsdp", "tensor")
    assert spec_of(picked(sharded)["down"]) == (None, "tensor", "fsdp")
    np.testing.assert_array_equal(np.asarray(picked(sharded)["q"]), np.asarray(picked(reference.params)["q"]))


def tiny_batch():
    rng = np.random.RandomState(1)
    ids = rng.randint(3, LLAMA["vocab_size"], (8, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    labels = np.where(mask == 1, ids, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# SGD with momentum: linear in the gradient (Adam's first step is sign(g), which turns
# round-off in near-zero gradients into full-size differences), yet with a moment to check.
OPT = optax.sgd(0.5, momentum=0.9)


@pytest.fixture(scope="module")
def reference_step(reference):
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    step = make_train_step(causal_lm_loss_fn(reference), OPT, grad_accum_steps=2, max_grad_norm=1.0)
    return step(create_train_state(reference, OPT), tiny_batch())


@pytest.mark.parametrize("preset", ["dp", "fsdp+tp"])
def test_sharded_train_step_equals_unsharded(folder, reference_step, preset):
    from zoo import AutoModelForCausalLM
    from zoo.sharding import make_mesh, param_shardings, shard_batch
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    ref_state, ref_m = reference_step
    mesh = make_mesh(MESH_SHAPE)
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules=preset)
    shardings = param_shardings(model.params, model.param_axes(), mesh, preset)
    state = create_train_state(model, OPT, shardings=shardings)
    step = make_train_step(causal_lm_loss_fn(model), OPT, grad_accum_steps=2, max_grad_norm=1.0,
                           mesh=mesh, rules=preset)
    state, m = step(state, shard_batch(tiny_batch(), mesh, preset))
    assert abs(float(m["loss"]) - float(ref_m["loss"])) <= 1e-5 * float(ref_m["loss"])
    assert abs(float(m["grad_norm"]) - float(ref_m["grad_norm"])) <= 1e-4 * float(ref_m["grad_norm"])
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    # The updated params and the momentum keep their shards.
    assert spec_of(picked(state.params)["q"]) == EXPECTED[preset]["q"]
    trace = state.opt_state[0].trace
    assert spec_of(picked(trace)["q"]) == EXPECTED[preset]["q"]


@pytest.mark.parametrize("preset", ["dp", "fsdp+tp"])
def test_zero_sharded_update_equals_unsharded(folder, reference_step, preset):
    """ZeRO: params placed by the preset, Adam-style state and the update split further over the
    data-parallel axes; the step still equals the single-device one and the params keep their place."""
    from zoo import AutoModelForCausalLM
    from zoo.sharding import make_mesh, param_shardings, shard_batch, zero_shardings
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    ref_state, ref_m = reference_step
    mesh = make_mesh(MESH_SHAPE)
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules=preset)
    shardings = param_shardings(model.params, model.param_axes(), mesh, preset)
    zero = zero_shardings(shardings, model.params, preset)
    state = create_train_state(model, OPT, shardings=shardings, opt_shardings=zero)
    step = make_train_step(causal_lm_loss_fn(model), OPT, grad_accum_steps=2, max_grad_norm=1.0,
                           mesh=mesh, rules=preset, param_sharding=shardings, update_sharding=zero)
    state, m = step(state, shard_batch(tiny_batch(), mesh, preset))
    assert abs(float(m["loss"]) - float(ref_m["loss"])) <= 1e-5 * float(ref_m["loss"])
    assert abs(float(m["grad_norm"]) - float(ref_m["grad_norm"])) <= 1e-4 * float(ref_m["grad_norm"])
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    assert spec_of(picked(state.params)["q"]) == EXPECTED[preset]["q"]
    # q kernel [layers 2, embed 32, heads 4, head_dim 8]: the largest dimension not yet split takes
    # the data-parallel axes the preset leaves free.
    zero_q = {"dp": (None, ("data", "fsdp")), "fsdp+tp": (None, "fsdp", "tensor", "data")}[preset]
    assert spec_of(picked(state.opt_state[0].trace)["q"]) == zero_q
    # Later steps keep the placement (params not left split the ZeRO way), so nothing recompiles.
    state, _ = step(state, shard_batch(tiny_batch(), mesh, preset))
    compiled = step._cache_size()
    state, m3 = step(state, shard_batch(tiny_batch(), mesh, preset))
    assert np.isfinite(float(m3["loss"])) and spec_of(picked(state.params)["q"]) == EXPECTED[preset]["q"]
    assert step._cache_size() == compiled


def test_zero_shardings_leaves_indivisible_and_used_axes():
    from zoo.sharding import make_mesh, zero_shardings

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sh = jax.sharding.NamedSharding
    shardings = {"a": sh(mesh, P()), "b": sh(mesh, P(None, "fsdp")), "c": sh(mesh, P())}
    shapes = {"a": jax.ShapeDtypeStruct((6, 8), np.float32), "b": jax.ShapeDtypeStruct((6, 8), np.float32),
              "c": jax.ShapeDtypeStruct((3,), np.float32)}
    out = zero_shardings(shardings, shapes, "dp")
    assert out["a"].spec == P(None, ("data", "fsdp"))  # 8 divides by 4; 6 would not
    assert out["b"].spec == P("data", "fsdp")           # fsdp already used: data takes the other dim
    assert out["c"].spec == P()                          # 3 divides by nothing: stays replicated


def test_expert_parallel_mixtral(tmp_path):
    from zoo import AutoModelForCausalLM
    from zoo.sharding import make_mesh, use_mesh

    src = save_hf(make_hf_model("MixtralConfig", "MixtralForCausalLM", **MIXTRAL), tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(src)
    mesh = make_mesh({"data": 2, "expert": 4})
    model = AutoModelForCausalLM.from_pretrained(src, mesh=mesh, rules="ep")
    kernels = [x for p, x in jax.tree_util.tree_leaves_with_path(model.params)
               if x.ndim == 4 and "gate_proj" in jax.tree_util.keystr(p)]
    assert kernels, "stacked expert kernels [layers, expert, embed, mlp]"
    assert spec_of(kernels[0]) == (None, "expert"), kernels[0].sharding.spec
    ids, mask = left_padded_batch(MIXTRAL["vocab_size"], batch=4, seq=8)
    with use_mesh(mesh, "ep"):
        out = model(ids, attention_mask=mask).logits
    assert_close_rel(np.asarray(out), np.asarray(ref(ids, attention_mask=mask).logits), 1e-5, mask.astype(bool))
