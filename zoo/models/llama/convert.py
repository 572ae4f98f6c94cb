"""Llama-family tensor names (also Mistral, Qwen2, Qwen3): one table, both directions."""
from __future__ import annotations

from zoo.conversion import Rule, rules_for_tree
from zoo.models.llama.config import LlamaConfig

L = "model.layers.{i}."

RULES = (
    Rule("model.embed_tokens.weight", ("embed_tokens", "embedding")),
    Rule(L + "input_layernorm.weight", ("layers", "input_layernorm", "scale")),
    Rule(L + "self_attn.q_proj.weight", ("layers", "self_attn", "q_proj", "kernel"), split=1),
    Rule(L + "self_attn.k_proj.weight", ("layers", "self_attn", "k_proj", "kernel"), split=1),
    Rule(L + "self_attn.v_proj.weight", ("layers", "self_attn", "v_proj", "kernel"), split=1),
    Rule(L + "self_attn.o_proj.weight", ("layers", "self_attn", "o_proj", "kernel"), split=2),
    Rule(L + "self_attn.q_proj.bias", ("layers", "self_attn", "q_proj", "bias"), flat=True),
    Rule(L + "self_attn.k_proj.bias", ("layers", "self_attn", "k_proj", "bias"), flat=True),
    Rule(L + "self_attn.v_proj.bias", ("layers", "self_attn", "v_proj", "bias"), flat=True),
    Rule(L + "self_attn.o_proj.bias", ("layers", "self_attn", "o_proj", "bias")),
    Rule(L + "self_attn.q_norm.weight", ("layers", "self_attn", "q_norm", "scale")),
    Rule(L + "self_attn.k_norm.weight", ("layers", "self_attn", "k_norm", "scale")),
    Rule(L + "post_attention_layernorm.weight", ("layers", "post_attention_layernorm", "scale")),
    Rule(L + "mlp.gate_proj.weight", ("layers", "mlp", "gate_proj", "kernel"), split=1),
    Rule(L + "mlp.up_proj.weight", ("layers", "mlp", "up_proj", "kernel"), split=1),
    Rule(L + "mlp.down_proj.weight", ("layers", "mlp", "down_proj", "kernel"), split=1),
    Rule(L + "mlp.gate_proj.bias", ("layers", "mlp", "gate_proj", "bias")),
    Rule(L + "mlp.up_proj.bias", ("layers", "mlp", "up_proj", "bias")),
    Rule(L + "mlp.down_proj.bias", ("layers", "mlp", "down_proj", "bias")),
    Rule("model.norm.weight", ("norm", "scale")),
    Rule("lm_head.weight", ("lm_head", "kernel"), split=1),
)

# Buffers some checkpoints carry that hold nothing we need.
IGNORE = ("rotary_emb.inv_freq",)


def rules(cfg: LlamaConfig, specs) -> list[Rule]:
    return rules_for_tree(specs, RULES)
