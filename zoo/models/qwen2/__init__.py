"""Qwen2 family (runs the Llama decoder)."""
from zoo.models.qwen2 import convert
from zoo.models.qwen2.config import Qwen2Config
from zoo.models.qwen2.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

CONFIG_CLASS = Qwen2Config
HF_PREFIX = "Qwen2"
__all__ = ["Qwen2Config", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
