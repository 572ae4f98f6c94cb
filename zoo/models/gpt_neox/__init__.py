"""GPT-NeoX (Pythia): partial rotary, parallel residual, per-head fused qkv, untied embed_out."""
from zoo.models.gpt_neox import convert
from zoo.models.gpt_neox.config import GPTNeoXConfig
from zoo.models.gpt_neox.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

CONFIG_CLASS = GPTNeoXConfig
HF_PREFIX = "GPTNeoX"
__all__ = ["GPTNeoXConfig", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs",
           "convert"]
