"""Gemma 2 runs the Gemma decoder; its config turns on soft-capping, the norms after attention
and MLP, and the local/global layer pattern (scanned over (local, global) pairs)."""
from zoo.models.gemma.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs"]
