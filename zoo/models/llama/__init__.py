"""Llama: the reference decoder of the zoo."""
from zoo.models.llama import convert
from zoo.models.llama.config import LlamaConfig
from zoo.models.llama.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = LlamaConfig
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Llama"
__all__ = ["LlamaConfig", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
