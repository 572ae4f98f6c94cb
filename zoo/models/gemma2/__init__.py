"""Gemma 2 family (runs the Gemma decoder): soft-capping, local/global layers, sandwich norms."""
from zoo.models.gemma2 import convert
from zoo.models.gemma2.config import Gemma2Config
from zoo.models.gemma2.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = Gemma2Config
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Gemma2"
__all__ = ["Gemma2Config", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
