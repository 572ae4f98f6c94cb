"""Qwen3-MoE runs the mixture-of-experts decoder; its config supplies q/k norms, the
routing normalisation and the dense/MoE layer pattern."""
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

__all__ = ["forward", "forward_hidden", "forward_with_router_logits", "init", "init_cache", "param_axes",
           "param_specs", "stack_layers", "unstack_layers"]
