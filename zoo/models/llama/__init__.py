"""Llama: the reference decoder of the zoo."""
from zoo.models.llama import convert
from zoo.models.llama.config import LlamaConfig
from zoo.models.llama.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

CONFIG_CLASS = LlamaConfig
HF_PREFIX = "Llama"
__all__ = ["LlamaConfig", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
