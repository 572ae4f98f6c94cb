"""Phi-3: the Llama decoder, with qkv and gate/up fused in the checkpoint and longrope scaling."""
from zoo.models.phi3 import convert
from zoo.models.phi3.config import Phi3Config
from zoo.models.phi3.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = Phi3Config
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Phi3"
__all__ = ["Phi3Config", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
