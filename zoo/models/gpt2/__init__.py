"""GPT-2: learned positions, Conv1D (transposed) weights, fused qkv, tied head."""
from zoo.models.gpt2 import convert
from zoo.models.gpt2.config import GPT2Config
from zoo.models.gpt2.model import forward, forward_hidden, init, init_cache, param_axes, param_specs

CONFIG_CLASS = GPT2Config
HF_PREFIX = "GPT2"
__all__ = ["GPT2Config", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
HF_ARCHITECTURES = {"ForCausalLM": "GPT2LMHeadModel"}
