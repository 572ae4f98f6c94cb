"""Mistral runs the Llama decoder; its config supplies the per-layer windows."""
from zoo.models.llama.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs"]
