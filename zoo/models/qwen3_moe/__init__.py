"""Qwen3-MoE: Qwen3 attention with a top-8-of-128 mixture of experts (dense layers optional)."""
from zoo.models.qwen3_moe import convert
from zoo.models.qwen3_moe.config import Qwen3MoeConfig
from zoo.models.qwen3_moe.model import (
    forward,
    forward_hidden,
    forward_with_router_logits,
    init,
    init_cache,
    param_axes,
    param_specs,
    stack_layers,
    unstack_layers,
)
from zoo.modeling_moe import MoeCausalLM

CONFIG_CLASS = Qwen3MoeConfig
HF_PREFIX = "Qwen3Moe"
TASK_CLASSES = {"causal_lm": MoeCausalLM}
__all__ = ["Qwen3MoeConfig", "forward", "forward_hidden", "forward_with_router_logits", "init", "init_cache",
           "param_axes", "param_specs", "stack_layers", "unstack_layers", "convert", "TASK_CLASSES"]
