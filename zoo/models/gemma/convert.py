"""Gemma tensor names (also Gemma 2 and Gemma 3 text): Llama's table plus the norms around
the MLP. Norm weights are stored as w in (1 + w), in our params as on disk."""
from __future__ import annotations

from typing import Any

from zoo.conversion import Rule, rules_for_tree
from zoo.models.llama.convert import IGNORE, RULES as LLAMA_RULES

L = "model.layers.{i}."

RULES = LLAMA_RULES + (
    Rule(L + "pre_feedforward_layernorm.weight", ("layers", "pre_feedforward_layernorm", "scale")),
    Rule(L + "post_feedforward_layernorm.weight", ("layers", "post_feedforward_layernorm", "scale")),
)


def rules(cfg: Any, specs: Any) -> list[Rule]:
    return rules_for_tree(specs, RULES)


__all__ = ["IGNORE", "RULES", "rules"]
