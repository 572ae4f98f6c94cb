"""Phi-3 runs the Llama decoder unchanged: the fused projections are split at load (see convert)."""
from zoo.models.llama.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs"]
