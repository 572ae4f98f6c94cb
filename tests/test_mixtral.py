"""Mixtral parity with PyTorch Transformers: top-k routing renormalised over the chosen experts,
both expert implementations and layer layouts, odd configs (top-1, MQA, small sliding window),
the router's load-balancing loss, greedy generation and expert parallelism."""
import numpy as np
import pytest
from conftest import left_padded_batch, make_hf_model, save_hf
from moe_parity import check_aux_loss, check_expert_parallel, check_greedy_generate, check_moe_parity

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, num_local_experts=4,
            num_experts_per_tok=2)
CLASSES = ("MixtralConfig", "MixtralForCausalLM")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    hf = make_hf_model(*CLASSES, **BASE, router_aux_loss_coef=0.05, eos_token_id=5, pad_token_id=0)
    return hf, save_hf(hf, tmp_path_factory.mktemp("mixtral"))


def test_top2_every_layout_and_implementation(tmp_path):
    check_moe_parity(tmp_path, *CLASSES, BASE)


def test_top1_mqa_small_window(tmp_path):
    """One expert per token (weight 1 after renormalising), one kv head, a window of 3 on a
    9-token batch, head_dim not hidden/heads."""
    cfg = dict(BASE, num_experts_per_tok=1, num_key_value_heads=1, sliding_window=3, head_dim=12)
    check_moe_parity(tmp_path, *CLASSES, cfg, impls=("ragged",), check_resave=False)


def test_bf16(tmp_path):
    check_moe_parity(tmp_path, *CLASSES, BASE, dtype="bfloat16", layouts=(True,),
                     check_resave=False, check_cache=False)


def test_router_aux_loss_matches_transformers(mixtral):
    check_aux_loss(*mixtral, scan_layers=True, moe_implementation="ragged")


def test_train_loss_includes_router_aux_loss(mixtral):
    """zoo.train's causal-LM loss on a model configured with output_router_logits: Transformers'
    loss, aux term included (sum / count is the mean the step optimises)."""
    import torch

    from zoo import AutoModelForCausalLM
    from zoo.train.step import causal_lm_loss_fn

    hf, folder = mixtral
    ids, mask = left_padded_batch(BASE["vocab_size"])
    labels = np.where((mask == 1) & (np.roll(mask, 1, axis=1) == 1), ids, -100)  # skip pad-predicted tokens
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
                 output_router_logits=True)
    model = AutoModelForCausalLM.from_pretrained(folder, output_router_logits=True)
    total, count = causal_lm_loss_fn(model)(model.params, {"input_ids": ids, "attention_mask": mask,
                                                          "labels": labels.astype(np.int32)})
    np.testing.assert_allclose(float(total / count), float(ref.loss), rtol=1e-5)
    assert abs(float(ref.loss) - float(ref.loss - 0.05 * ref.aux_loss)) > 1e-3  # the aux term matters here


def test_greedy_generate_matches_transformers(mixtral):
    check_greedy_generate(*mixtral, scan_layers=False)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_expert_parallel(mixtral, scan_layers):
    hf, folder = mixtral
    check_expert_parallel(folder, BASE["num_local_experts"], scan_layers=scan_layers)


def test_bad_top_k_is_named():
    from zoo import AutoConfig

    with pytest.raises(ValueError, match="num_experts_per_tok"):
        AutoConfig.for_model("mixtral", num_local_experts=4, num_experts_per_tok=5)
    with pytest.raises(ValueError, match="moe_implementation"):
        AutoConfig.for_model("mixtral", moe_implementation="loop")


def test_load_balancing_loss_reference():
    """Our loss against a direct numpy transcription of the Switch-Transformer formula."""
    import jax.numpy as jnp

    from zoo.nn.moe import load_balancing_loss

    rng = np.random.RandomState(0)
    logits = rng.randn(3, 10, 4).astype(np.float32)
    mask = np.ones((2, 5), np.int64)
    mask[1, :2] = 0
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    top = np.argsort(-p, axis=-1)[..., :2]
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, top, 1.0, axis=-1)
    keep = mask.reshape(-1).astype(bool)
    f = onehot[:, keep].sum((0, 1)) / (3 * keep.sum())
    q = p[:, keep].sum((0, 1)) / (3 * keep.sum())
    np.testing.assert_allclose(float(load_balancing_loss(jnp.asarray(logits), 4, 2, jnp.asarray(mask))),
                               4 * np.sum(f * q), rtol=1e-6)
