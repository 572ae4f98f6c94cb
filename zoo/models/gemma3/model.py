"""Gemma 3 text runs the Gemma decoder; its config turns on q/k norms and gives local layers
their own rotary base (scanned over the local/global group, five locals and a global)."""
from zoo.models.gemma.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs"]
