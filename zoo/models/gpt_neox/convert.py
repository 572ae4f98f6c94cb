"""GPT-NeoX tensor names. ``query_key_value`` interleaves per head: its output rows are
``[head, (q|k|v), head_dim]``, which our ``[embed, heads, 3, head_dim]`` kernel mirrors."""
from __future__ import annotations

from zoo.conversion import Rule, rules_for_tree
from zoo.models.gpt_neox.config import GPTNeoXConfig

BASE_PREFIX = "gpt_neox."
L = "gpt_neox.layers.{i}."

RULES = (
    Rule("gpt_neox.embed_in.weight", ("embed_in", "embedding")),
    Rule(L + "input_layernorm.weight", ("layers", "input_layernorm", "scale")),
    Rule(L + "input_layernorm.bias", ("layers", "input_layernorm", "bias")),
    Rule(L + "attention.query_key_value.weight", ("layers", "attention", "query_key_value", "kernel"), split=1),
    Rule(L + "attention.query_key_value.bias", ("layers", "attention", "query_key_value", "bias"), flat=True),
    Rule(L + "attention.dense.weight", ("layers", "attention", "dense", "kernel"), split=2),
    Rule(L + "attention.dense.bias", ("layers", "attention", "dense", "bias")),
    Rule(L + "post_attention_layernorm.weight", ("layers", "post_attention_layernorm", "scale")),
    Rule(L + "post_attention_layernorm.bias", ("layers", "post_attention_layernorm", "bias")),
    Rule(L + "mlp.dense_h_to_4h.weight", ("layers", "mlp", "dense_h_to_4h", "kernel"), split=1),
    Rule(L + "mlp.dense_h_to_4h.bias", ("layers", "mlp", "dense_h_to_4h", "bias")),
    Rule(L + "mlp.dense_4h_to_h.weight", ("layers", "mlp", "dense_4h_to_h", "kernel"), split=1),
    Rule(L + "mlp.dense_4h_to_h.bias", ("layers", "mlp", "dense_4h_to_h", "bias")),
    Rule("gpt_neox.final_layer_norm.weight", ("final_layer_norm", "scale")),
    Rule("gpt_neox.final_layer_norm.bias", ("final_layer_norm", "bias")),
    # The Hub (and Transformers' save) name the untied head embed_out.
    Rule("embed_out.weight", ("embed_out", "kernel"), split=1),
)

IGNORE = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


def rules(cfg: GPTNeoXConfig, specs) -> list[Rule]:
    return rules_for_tree(specs, RULES)
