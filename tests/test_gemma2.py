"""Gemma 2 parity with Transformers: attention and final soft-capping, alternating local/global
layers with a window (4) shorter than the sequence, pre- and post-norms, query_pre_attn_scalar;
MQA, head_dim != hidden/heads; generation past the window (static and rolling caches); bf16."""
import jax
import numpy as np
import pytest
import torch
from conftest import check_decoder_parity, left_padded_batch, make_hf_model, save_hf
from test_gemma import random_norms

from zoo import AutoModelForCausalLM

# Small caps so soft-capping actually bends the scores and logits.
BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=64, initializer_range=0.1,
            sliding_window=4, query_pre_attn_scalar=12, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)


def test_window_softcap_mqa(tmp_path):
    check_decoder_parity(tmp_path, "Gemma2Config", "Gemma2ForCausalLM", BASE, seq=10, prepare=random_norms)


def test_scan_is_over_the_layer_pair():
    from zoo import AutoConfig
    from zoo.nn.scan import plan_segments

    cfg = AutoConfig.for_model("gemma2", num_hidden_layers=26)
    (seg,) = plan_segments(cfg.layer_kinds())
    assert seg.group == ("sliding_attention", "full_attention") and seg.reps == 13
    from zoo.models import gemma2

    small = AutoConfig.for_model("gemma2", **{**BASE, "num_hidden_layers": 6})
    shapes = jax.eval_shape(lambda k: gemma2.init(small, k), jax.random.PRNGKey(0))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    jaxpr = jax.make_jaxpr(lambda p, ids: gemma2.forward(p, small, ids)[0])(params, np.ones((1, 5), np.int32))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 3  # one scan, 3 reps of the pair: not unrolled


def test_untied_gqa_bf16(tmp_path):
    cfg = dict(BASE, tie_word_embeddings=False, num_key_value_heads=2, head_dim=8)
    check_decoder_parity(tmp_path, "Gemma2Config", "Gemma2ForCausalLM", cfg, dtype="bfloat16", layouts=(True,),
                         check_resave=False,  # the fp32 test covers it; a bf16 .to() also rounds HF's rope table
                         seq=10, prepare=random_norms, check_cache=False)


@pytest.mark.parametrize("scan,cache,beams", [(True, None, 1), (True, "hybrid", 1), (False, "sliding_window", 1),
                                              (True, None, 2)])  # beams: per-kind cache stacks reordered
def test_greedy_generation_past_the_window(tmp_path_factory, scan, cache, beams):
    hf, folder = _generation_model(tmp_path_factory)
    ids, mask = left_padded_batch(128, seq=7)
    kw = dict(max_new_tokens=9, do_sample=False, num_beams=beams)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()
    model = AutoModelForCausalLM.from_pretrained(folder, scan_layers=scan)
    ours = model.generate(ids, attention_mask=mask, cache_implementation=cache, **kw)
    np.testing.assert_array_equal(ours, ref)


_MODELS = {}


def _generation_model(tmp_path_factory):
    if "gen" not in _MODELS:
        hf = make_hf_model("Gemma2Config", "Gemma2ForCausalLM", **dict(BASE, eos_token_id=5, pad_token_id=0))
        random_norms(hf)
        _MODELS["gen"] = hf, save_hf(hf, tmp_path_factory.mktemp("gemma2"))
    return _MODELS["gen"]


def test_sharded_fsdp_tp(tmp_path_factory):
    from zoo import make_mesh

    hf, folder = _generation_model(tmp_path_factory)
    ids, mask = left_padded_batch(128, batch=4, seq=10)
    ref = AutoModelForCausalLM.from_pretrained(folder)(ids, attention_mask=mask).logits
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = AutoModelForCausalLM.from_pretrained(folder, mesh=mesh, rules="fsdp+tp")
    up = model.params["layers"]["mlp"]["up_proj"]["kernel"]
    assert len(up.addressable_shards[0].data.flatten()) < up.size  # really spread
    np.testing.assert_allclose(model(ids, attention_mask=mask).logits, ref, rtol=1e-5, atol=1e-5)
