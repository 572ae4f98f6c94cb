"""Mistral family (runs the Llama decoder)."""
from zoo.models.mistral import convert
from zoo.models.mistral.config import MistralConfig
from zoo.models.mistral.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = MistralConfig
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Mistral"
__all__ = ["MistralConfig", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
