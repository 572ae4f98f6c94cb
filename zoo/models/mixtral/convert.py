"""Mixtral tensor names: Llama's attention, ``block_sparse_moe`` with one tensor per expert
(``w1`` gate, ``w3`` up, ``w2`` down) stacked into our ``[E, ...]`` params."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.conversion import Rule, rules_for_tree
from zoo.models.llama.convert import IGNORE, RULES as LLAMA_RULES
from zoo.models.mixtral.config import MixtralConfig

L = "model.layers.{i}."
MOE = "block_sparse_moe."
EXPERT_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def _kind_ids(cfg: MixtralConfig, kind: str) -> tuple[int, ...]:
    return tuple(i for i, k in enumerate(cfg.layer_kinds()) if k == kind)


def moe_rules(cfg: MixtralConfig, moe_prefix: str, expert_names: dict[str, str]) -> list[Rule]:
    """Router and stacked-expert rules for the MoE layers only."""
    ids = _kind_ids(cfg, "moe")
    if not ids:
        return []
    rules = [Rule(L + moe_prefix + "gate.weight", ("layers", "moe", "router", "kernel"), split=1, only_layers=ids)]
    for ours, theirs in expert_names.items():
        rules.append(Rule(L + moe_prefix + "experts.{e}." + theirs + ".weight", ("layers", "moe", ours, "kernel"),
                          split=1, stack=cfg.num_experts, only_layers=ids))
    return rules


def decoder_rules(cfg: MixtralConfig, specs: Any, moe_prefix: str, expert_names: dict[str, str]) -> list[Rule]:
    """Llama's rules for everything but the MLPs, dense-MLP rules for dense layers, MoE rules."""
    common = [r for r in LLAMA_RULES if not (r.per_layer and r.path[1] == "mlp")]
    out = rules_for_tree(specs, common)  # attention and norms: the same in every layer
    dense_ids = _kind_ids(cfg, "dense")
    if dense_ids:
        out += [dataclasses.replace(r, only_layers=dense_ids) for r in LLAMA_RULES
                if r.per_layer and r.path[1] == "mlp" and (r.hf.endswith(".weight") or cfg.mlp_bias)]
    return out + moe_rules(cfg, moe_prefix, expert_names)


def rules(cfg: MixtralConfig, specs: Any) -> list[Rule]:
    return decoder_rules(cfg, specs, MOE, EXPERT_NAMES)


__all__ = ["IGNORE", "rules", "decoder_rules", "moe_rules"]
