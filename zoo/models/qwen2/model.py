"""Qwen2 runs the Llama decoder; its config turns on q/k/v biases."""
from zoo.models.llama.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

__all__ = ["forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs"]
