"""Gemma 3 text parity with Transformers: q/k (1 + w) norms, a local/global pattern that does not
divide the depth (scanned per segment), rope_local_base_freq for local layers vs rope_theta with
linear rope scaling for global ones, window 4 < sequence; MQA, head_dim != hidden/heads; greedy
generation past the window (static and rolling caches); bf16; sequence classification."""
import jax
import numpy as np
import pytest
import torch
from conftest import assert_close_rel, check_decoder_parity, left_padded_batch, make_hf_model, save_hf
from test_gemma import random_norms

from zoo import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

# Pattern 3 over 7 layers: (local, local, global) twice, then a local: two scanned segments.
BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=7, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=64, initializer_range=0.1,
            sliding_window=4, query_pre_attn_scalar=16, sliding_window_pattern=3,
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}})


def test_pattern_two_ropes_qk_norm(tmp_path):
    check_decoder_parity(tmp_path, "Gemma3TextConfig", "Gemma3ForCausalLM", BASE, seq=10, prepare=random_norms)


def test_old_style_config_and_softcap(tmp_path):
    """rope_theta / rope_local_base_freq / rope_scaling keys (pre-v5 configs); final soft-capping on
    (attention soft-capping is set too, and ignored, as Transformers' Gemma 3 ignores it)."""
    cfg = {k: v for k, v in BASE.items() if k != "rope_parameters"}
    cfg.update(rope_theta=1000.0, rope_local_base_freq=10.0, rope_scaling={"rope_type": "linear", "factor": 4.0},
               attn_logit_softcapping=2.0, final_logit_softcapping=3.0, num_key_value_heads=2, head_dim=8)
    ours = AutoConfig.for_model("gemma3_text", **cfg)
    assert (ours.rope_theta, ours.rope_local_base_freq, dict(ours.rope_scaling)["factor"]) == (1000.0, 10.0, 4.0)
    check_decoder_parity(tmp_path, "Gemma3TextConfig", "Gemma3ForCausalLM", cfg, seq=10, prepare=random_norms,
                         layouts=(True,), check_cache=False)


def test_scan_per_segment():
    from zoo.models import gemma3

    cfg = AutoConfig.for_model("gemma3_text", **BASE)
    shapes = jax.eval_shape(lambda k: gemma3.init(cfg, k), jax.random.PRNGKey(0))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    jaxpr = jax.make_jaxpr(lambda p, ids: gemma3.forward(p, cfg, ids)[0])(params, np.ones((1, 5), np.int32))
    lengths = [e.params["length"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert lengths == [2, 1]  # (local, local, global) x 2, then the last local: not 7 unrolled layers


def test_bf16(tmp_path):
    # Three layers: over seven, bf16 rounding alone (Transformers' own bf16 included) drifts ~3% from fp32.
    check_decoder_parity(tmp_path, "Gemma3TextConfig", "Gemma3ForCausalLM", dict(BASE, num_hidden_layers=3),
                         dtype="bfloat16", seq=10,
                         layouts=(True,), prepare=random_norms, check_resave=False, check_cache=False)


@pytest.mark.parametrize("scan,cache", [(True, "hybrid"), (False, None)])
def test_greedy_generation_past_the_window(tmp_path_factory, scan, cache):
    hf, folder = _generation_model(tmp_path_factory)
    ids, mask = left_padded_batch(128, seq=7)
    kw = dict(max_new_tokens=9, do_sample=False)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()
    model = AutoModelForCausalLM.from_pretrained(folder, scan_layers=scan)
    ours = model.generate(ids, attention_mask=mask, cache_implementation=cache, **kw)
    np.testing.assert_array_equal(ours, ref)


def test_sequence_classification(tmp_path):
    hf = make_hf_model("Gemma3TextConfig", "Gemma3TextForSequenceClassification",
                       **dict(BASE, num_labels=3, pad_token_id=0))
    random_norms(hf)
    folder = save_hf(hf, tmp_path / "hf")
    ids, mask = left_padded_batch(128, seq=7)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert_close_rel(model(ids, attention_mask=mask).logits, ref, 1e-4)
    assert model.hf_architecture() == "Gemma3TextForSequenceClassification"


_MODELS = {}


def _generation_model(tmp_path_factory):
    if "gen" not in _MODELS:
        hf = make_hf_model("Gemma3TextConfig", "Gemma3ForCausalLM", **dict(BASE, eos_token_id=5, pad_token_id=0))
        random_norms(hf)
        _MODELS["gen"] = hf, save_hf(hf, tmp_path_factory.mktemp("gemma3"))
    return _MODELS["gen"]


def test_loss_and_gradients_match_transformers(tmp_path_factory):
    """Training through the scanned segments: loss and the gradients of q/k norms, a post-norm
    and the (tied) embedding equal PyTorch's."""
    hf, folder = _generation_model(tmp_path_factory)
    ids = np.random.RandomState(1).randint(3, 128, (2, 10))
    hf.zero_grad()
    out = hf(torch.tensor(ids), labels=torch.tensor(ids))
    out.loss.backward()
    model = AutoModelForCausalLM.from_pretrained(folder)
    loss, grads = jax.value_and_grad(lambda m: m(ids, labels=ids).loss)(model)
    ref_loss = out.loss.item()
    assert abs(float(loss) - ref_loss) <= 1e-5 * ref_loss
    layers = grads.params["layers"]
    theirs = hf.model.layers
    for i in (0, 2, 6):  # local, global, the last (tail segment) local
        assert_close_rel(layers["self_attn"]["q_norm"]["scale"][i], theirs[i].self_attn.q_norm.weight.grad, 1e-4)
        assert_close_rel(layers["self_attn"]["k_norm"]["scale"][i], theirs[i].self_attn.k_norm.weight.grad, 1e-4)
        assert_close_rel(layers["post_feedforward_layernorm"]["scale"][i],
                         theirs[i].post_feedforward_layernorm.weight.grad, 1e-4)
    assert_close_rel(grads.params["embed_tokens"]["embedding"], hf.model.embed_tokens.weight.grad, 1e-4)
