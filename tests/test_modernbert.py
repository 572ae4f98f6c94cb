"""ModernBERT parity with PyTorch Transformers: every head, alternating global/local layers with
windows shorter than the batch, both rope thetas, padded batches, save round trip."""
import pytest
from encoder_parity import ALL_TASKS, check_encoder

# 4 layers, global every 2nd, local window of 4 tokens (|q - k| <= 2) on 10-token rows: the
# window really cuts; separate thetas so swapping the rope tables would show.
BASE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=40,
            global_attn_every_n_layers=2, local_attention=4, initializer_range=0.1, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, global_rope_theta=500.0,
            local_rope_theta=30.0, max_position_embeddings=64)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_heads(tmp_path, task):
    check_encoder(tmp_path, "ModernBert", BASE, tasks=(task,),
                  layouts=(True, False) if task in ("base", "masked_lm") else (True,))


def test_biases_mean_pooling_untied(tmp_path):
    cfg = dict(BASE, norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
               classifier_pooling="mean", tie_word_embeddings=False, hidden_activation="gelu_pytorch_tanh",
               classifier_activation="silu", global_attn_every_n_layers=3)
    check_encoder(tmp_path, "ModernBert", cfg, tasks=("sequence_classification", "masked_lm"), layouts=(True,))


def test_bf16(tmp_path):
    check_encoder(tmp_path, "ModernBert", BASE, tasks=("masked_lm",), dtype="bfloat16", layouts=(True,),
                  resave=False)


def test_config_round_trip_and_errors():
    from zoo import AutoConfig

    cfg = AutoConfig.for_model("modernbert", num_hidden_layers=5, global_attn_every_n_layers=3, local_attention=8)
    assert cfg.layer_types == ("full_attention", "sliding_attention", "sliding_attention", "full_attention",
                               "sliding_attention")
    assert cfg.layer_windows() == (None, 5, 5, None, 5)
    data = cfg.to_dict()
    assert data["rope_parameters"]["full_attention"]["rope_theta"] == 160_000.0
    assert "global_rope_theta" not in data
    with pytest.raises(ValueError, match="classifier_pooling"):
        AutoConfig.for_model("modernbert", classifier_pooling="max")
    with pytest.raises(ValueError, match="rope_parameters"):
        AutoConfig.for_model("modernbert", rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0}})
