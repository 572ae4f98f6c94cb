"""Mixtral: Mistral attention with a top-2 sparse mixture-of-experts MLP."""
from zoo.models.mixtral import convert
from zoo.models.mixtral.config import MixtralConfig
from zoo.models.mixtral.model import (
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

CONFIG_CLASS = MixtralConfig
HF_PREFIX = "Mixtral"
TASK_CLASSES = {"causal_lm": MoeCausalLM}
__all__ = ["MixtralConfig", "forward", "forward_hidden", "forward_with_router_logits", "init", "init_cache",
           "param_axes", "param_specs", "stack_layers", "unstack_layers", "convert", "TASK_CLASSES"]
