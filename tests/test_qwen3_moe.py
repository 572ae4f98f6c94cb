"""Qwen3-MoE parity with PyTorch Transformers: q/k norms, routing weights renormalised only with
norm_topk_prob, dense and MoE layers mixed by decoder_sparse_step / mlp_only_layers (scanned
over the repeating group), the router's load-balancing loss, greedy generation and expert
parallelism."""
import jax
import numpy as np
import pytest
from conftest import left_padded_batch, make_hf_model, save_hf
from moe_parity import check_aux_loss, check_expert_parallel, check_greedy_generate, check_moe_parity

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
            initializer_range=0.1, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)
CLASSES = ("Qwen3MoeConfig", "Qwen3MoeForCausalLM")
# dense, moe, dense, moe: one scanned segment over the (dense, moe) group
MIXED = dict(BASE, num_hidden_layers=4, decoder_sparse_step=2)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    hf = make_hf_model(*CLASSES, **MIXED, router_aux_loss_coef=0.05, eos_token_id=5, pad_token_id=0)
    return hf, save_hf(hf, tmp_path_factory.mktemp("qwen3_moe"))


def test_top2_unnormalised_every_layout_and_implementation(tmp_path):
    check_moe_parity(tmp_path, *CLASSES, BASE)


def test_top1_normalised_mqa_window(tmp_path):
    cfg = dict(BASE, num_experts_per_tok=1, norm_topk_prob=True, num_key_value_heads=1, use_sliding_window=True,
               sliding_window=4)
    check_moe_parity(tmp_path, *CLASSES, cfg, layouts=(False,), check_resave=False, check_cache=False)


def test_sparse_step_mixes_dense_and_moe(tmp_path):
    check_moe_parity(tmp_path, *CLASSES, dict(MIXED, norm_topk_prob=True), impls=("dense",))


def test_mlp_only_layers(tmp_path):
    """A dense first layer then MoE layers: an irregular pattern, scanned in segments."""
    cfg = dict(BASE, num_hidden_layers=3, mlp_only_layers=[0])
    check_moe_parity(tmp_path, *CLASSES, cfg, impls=("ragged",), check_resave=True, check_cache=False)


def test_bf16(tmp_path):
    check_moe_parity(tmp_path, *CLASSES, dict(BASE, norm_topk_prob=True), dtype="bfloat16", layouts=(True,),
                     check_resave=False, check_cache=False)


def test_mixed_pattern_compiles_as_one_scan(mixed):
    """Four layers of (dense, moe) x 2 lower to one scan of length 2 whose body holds one
    dense and one MoE layer, not four unrolled layers."""
    from zoo import AutoModelForCausalLM
    from zoo.models import qwen3_moe
    from zoo.nn.scan import Segment, plan_segments

    _, folder = mixed
    model = AutoModelForCausalLM.from_pretrained(folder)
    cfg = model.config
    assert cfg.layer_kinds() == ("dense", "moe", "dense", "moe")
    assert plan_segments(cfg.layer_kinds()) == (Segment(0, ("dense", "moe"), 2),)
    assert model.params["layers"]["moe"]["gate_proj"]["kernel"].shape[:2] == (2, 4)
    assert model.params["layers"]["mlp"]["gate_proj"]["kernel"].shape[0] == 2
    ids = np.zeros((1, 4), np.int32)
    jaxpr = jax.make_jaxpr(lambda p: qwen3_moe.forward(p, cfg, ids)[0])(model.params)
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert [e.params["length"] for e in scans] == [2]
    # Irregular patterns: a handful of segments, each a scan, never one per layer.
    assert plan_segments(("dense",) + ("moe",) * 31) == (Segment(0, ("dense",), 1), Segment(1, ("moe",), 31))
    assert len(plan_segments(("dense", "moe") * 16)) == 1


def test_layout_round_trip_mixed(mixed):
    """with_layout converts a mixed dense/MoE model between stacked and per-layer params."""
    from zoo import AutoModelForCausalLM

    _, folder = mixed
    ids, mask = left_padded_batch(MIXED["vocab_size"])
    scanned = AutoModelForCausalLM.from_pretrained(folder)
    ref = np.asarray(scanned(ids, attention_mask=mask).logits)
    unrolled = scanned.with_layout(False)
    np.testing.assert_allclose(np.asarray(unrolled(ids, attention_mask=mask).logits), ref, rtol=1e-5, atol=1e-6)
    again = unrolled.with_layout(True)
    np.testing.assert_allclose(np.asarray(again(ids, attention_mask=mask).logits), ref, rtol=1e-5, atol=1e-6)


def test_router_aux_loss_matches_transformers(mixed):
    check_aux_loss(*mixed, scan_layers=True)


def test_router_aux_loss_unrolled_ragged(mixed):
    check_aux_loss(*mixed, scan_layers=False, moe_implementation="ragged")


def test_greedy_generate_matches_transformers(mixed):
    check_greedy_generate(*mixed, scan_layers=True)


def test_expert_parallel_mixed_layers(mixed):
    check_expert_parallel(mixed[1], MIXED["num_experts"], scan_layers=True)


def test_expert_parallel_ragged(mixed):
    check_expert_parallel(mixed[1], MIXED["num_experts"], scan_layers=False, moe_implementation="ragged")


def test_config_round_trip_names():
    """The Hub spelling (num_experts) reads and writes back; bad layer indices are named."""
    from zoo import AutoConfig

    cfg = AutoConfig.for_model("qwen3_moe", num_experts=6, num_experts_per_tok=2, num_hidden_layers=2)
    assert cfg.num_experts == 6 and cfg.to_dict()["num_experts"] == 6
    assert "num_local_experts" not in cfg.to_dict()
    with pytest.raises(ValueError, match="mlp_only_layers"):
        AutoConfig.for_model("qwen3_moe", num_hidden_layers=2, mlp_only_layers=[5])


@pytest.mark.parametrize("preset,hf_classes,billions", [
    ("qwen3-30b-a3b", CLASSES, 30.5),
    ("mixtral-8x7b", ("MixtralConfig", "MixtralForCausalLM"), 46.7),
])
def test_presets_match_transformers_param_count(preset, hf_classes, billions):
    """The named presets load, and our (abstract) params count exactly what Transformers builds
    from the config.json we would write (on the meta device: nothing allocated)."""
    import torch
    import transformers

    from zoo import AutoConfig
    from zoo.models import get_family

    cfg = AutoConfig.from_pretrained(preset)
    shapes = jax.eval_shape(lambda: get_family(cfg.model_type).init(cfg, jax.random.PRNGKey(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    data = cfg.to_dict()
    data.pop("model_type")
    with torch.device("meta"):
        hf = getattr(transformers, hf_classes[1])(getattr(transformers, hf_classes[0])(**data))
    assert ours == sum(p.numel() for p in hf.parameters())
    assert abs(ours / 1e9 - billions) < 0.1
