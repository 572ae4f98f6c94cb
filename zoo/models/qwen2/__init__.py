"""Qwen2 family (runs the Llama decoder)."""
from zoo.models.qwen2 import convert
from zoo.models.qwen2.config import Qwen2Config
from zoo.models.qwen2.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = Qwen2Config
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Qwen2"
__all__ = ["Qwen2Config", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
