"""Qwen3-MoE tensor names: Qwen3's attention, ``mlp.gate`` router and per-expert
``mlp.experts.{e}.{gate,up,down}_proj``; dense layers use the Llama MLP names."""
from __future__ import annotations

from typing import Any

from zoo.models.llama.convert import IGNORE
from zoo.models.mixtral.convert import decoder_rules
from zoo.models.qwen3_moe.config import Qwen3MoeConfig

EXPERT_NAMES = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}


def rules(cfg: Qwen3MoeConfig, specs: Any):
    return decoder_rules(cfg, specs, "mlp.", EXPERT_NAMES)


__all__ = ["IGNORE", "rules"]
