"""Phi-3 tensor names: Llama's, except that q/k/v live in one ``qkv_proj`` (all q heads, then
all k heads, then all v heads) and gate/up in one ``gate_up_proj`` (gate rows first). Each
fused tensor is split into Llama's params on load and written back fused on save."""
from __future__ import annotations

from zoo.conversion import Rule, rules_for_tree
from zoo.models.llama.convert import IGNORE, L
from zoo.models.llama.convert import RULES as LLAMA_RULES
from zoo.models.phi3.config import Phi3Config

_FUSED = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
BASE_RULES = tuple(r for r in LLAMA_RULES if not any(f".{name}." in r.hf for name in _FUSED))


def fused_rules(cfg: Phi3Config) -> tuple[Rule, ...]:
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    qkv_rows, f = q + 2 * kv, cfg.intermediate_size
    qkv, gate_up = L + "self_attn.qkv_proj.weight", L + "mlp.gate_up_proj.weight"
    attn, mlp = ("layers", "self_attn"), ("layers", "mlp")
    return (
        Rule(qkv, (*attn, "q_proj", "kernel"), split=1, rows=(0, q, qkv_rows)),
        Rule(qkv, (*attn, "k_proj", "kernel"), split=1, rows=(q, q + kv, qkv_rows)),
        Rule(qkv, (*attn, "v_proj", "kernel"), split=1, rows=(q + kv, qkv_rows, qkv_rows)),
        Rule(gate_up, (*mlp, "gate_proj", "kernel"), split=1, rows=(0, f, 2 * f)),
        Rule(gate_up, (*mlp, "up_proj", "kernel"), split=1, rows=(f, 2 * f, 2 * f)),
    )


def rules(cfg: Phi3Config, specs) -> list[Rule]:
    return rules_for_tree(specs, BASE_RULES + fused_rules(cfg))


__all__ = ["IGNORE", "BASE_RULES", "fused_rules", "rules"]
