"""Qwen3 family (runs the Llama decoder)."""
from zoo.models.qwen3 import convert
from zoo.models.qwen3.config import Qwen3Config
from zoo.models.qwen3.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = Qwen3Config
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Qwen3"
__all__ = ["Qwen3Config", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
