"""Qwen3 family (runs the Llama decoder)."""
from zoo.models.qwen3 import convert
from zoo.models.qwen3.config import Qwen3Config
from zoo.models.qwen3.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

CONFIG_CLASS = Qwen3Config
HF_PREFIX = "Qwen3"
__all__ = ["Qwen3Config", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
