"""The model object: a pytree through jit and grad, HF loss semantics, input checks, meshes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_close_rel, make_hf_model, save_hf

from zoo import AutoModelForCausalLM, make_mesh
from zoo.modeling import CausalLM

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = make_hf_model("LlamaConfig", "LlamaForCausalLM", **CFG)
    folder = save_hf(hf, tmp_path_factory.mktemp("m"))
    return hf, folder


def _batch():
    rng = np.random.RandomState(1)
    ids = rng.randint(0, 64, (2, 8))
    labels = ids.copy()
    labels[0, :3] = -100
    labels[1, -2:] = -100
    return ids, labels


def test_loss_and_grads_match_transformers(pair, tmp_path):
    hf, folder = pair
    ids, labels = _batch()
    model = AutoModelForCausalLM.from_pretrained(folder)
    loss, grads = jax.value_and_grad(lambda m: m(ids, labels=labels).loss)(model)
    assert isinstance(grads, CausalLM)
    hf.zero_grad()
    out = hf(torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    assert abs(float(loss) - out.loss.item()) <= 1e-5 * abs(out.loss.item())
    # the gradient tree saves under HF names; compare every tensor with torch's .grad
    grads.save_pretrained(tmp_path / "g")
    from zoo.hub import CheckpointReader

    reader = CheckpointReader(tmp_path / "g")
    for name, p in hf.named_parameters():
        assert_close_rel(reader.get(name), p.grad.numpy(), 1e-4)


def test_model_passes_through_jit(pair):
    _, folder = pair
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = jnp.arange(6)[None]
    f = jax.jit(lambda m, x: m(x).logits)
    np.testing.assert_allclose(f(model, ids), model(ids).logits, rtol=1e-6, atol=1e-6)
    doubled = jax.tree.map(lambda x: x * 2, model)
    assert type(doubled) is CausalLM and doubled.config == model.config


def test_pure_level(pair):
    from zoo.models import llama

    _, folder = pair
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = jnp.arange(5)[None]
    logits, cache = llama.forward(model.params, model.config, ids, cache=None)
    assert cache is None
    np.testing.assert_allclose(logits, model(ids).logits, rtol=1e-5, atol=1e-6)


def test_layout_conversion(pair):
    _, folder = pair
    scan = AutoModelForCausalLM.from_pretrained(folder)
    unrolled = scan.with_layout(scan_layers=False)
    assert isinstance(unrolled.params["layers"], list)
    ids = jnp.arange(7)[None]
    np.testing.assert_allclose(unrolled(ids).logits, scan(ids).logits, rtol=1e-5, atol=1e-6)


def test_bad_inputs(pair):
    _, folder = pair
    model = AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(np.zeros((2, 5), int), attention_mask=np.ones((2, 4), int))
    with pytest.raises(ValueError, match="seq >= 1"):
        model(np.zeros((2, 0), int))
    with pytest.raises(ValueError, match="cannot run on platform 'cpu'"):
        AutoModelForCausalLM.from_pretrained(folder, attn_implementation="cudnn")
    with pytest.raises(ValueError, match="unknown attn_implementation 'flashy'"):
        AutoModelForCausalLM.from_pretrained(folder, attn_implementation="flashy")
    auto = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="auto")
    np.testing.assert_allclose(auto(np.arange(4)[None]).logits, model(np.arange(4)[None]).logits, rtol=1e-6)


@pytest.mark.parametrize("rules", ["dp", "fsdp", "tp", "fsdp+tp"])
def test_load_onto_mesh(pair, rules):
    _, folder = pair
    assert len(jax.devices()) == 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules=rules)
    ref = AutoModelForCausalLM.from_pretrained(folder)
    q = model.params["layers"]["self_attn"]["q_proj"]["kernel"]
    spec = q.sharding.spec
    if rules == "dp":
        assert all(s is None for s in spec)
    else:
        assert any(s is not None for s in spec)
        assert len(q.addressable_shards[0].data.flatten()) < q.size  # really spread
    ids = np.random.RandomState(0).randint(0, 64, (4, 6))
    assert_close_rel(model(ids).logits, ref(ids).logits, 1e-5)
