"""OLMo-2 tensor names: Llama's, less ``input_layernorm``, plus ``post_feedforward_layernorm``.
The q/k norms span every head, so HF stores them flat ``[heads * head_dim]``."""
from __future__ import annotations

from zoo.conversion import Rule, rules_for_tree
from zoo.models.llama.convert import IGNORE, L
from zoo.models.llama.convert import RULES as LLAMA_RULES
from zoo.models.olmo2.config import Olmo2Config

_REPLACED = ("input_layernorm", "q_norm", "k_norm")

RULES = tuple(r for r in LLAMA_RULES if not any(name in r.hf for name in _REPLACED)) + (
    Rule(L + "self_attn.q_norm.weight", ("layers", "self_attn", "q_norm", "scale"), flat=True),
    Rule(L + "self_attn.k_norm.weight", ("layers", "self_attn", "k_norm", "scale"), flat=True),
    Rule(L + "post_feedforward_layernorm.weight", ("layers", "post_feedforward_layernorm", "scale")),
)


def rules(cfg: Olmo2Config, specs) -> list[Rule]:
    return rules_for_tree(specs, RULES)


__all__ = ["IGNORE", "RULES", "rules"]
