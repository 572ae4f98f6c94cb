"""Gemma 3 text family (``model_type`` "gemma3_text", runs the Gemma decoder): q/k norms,
five local layers per global one, separate rotary bases for local and global layers."""
from zoo.models.gemma3 import convert
from zoo.models.gemma3.config import Gemma3TextConfig
from zoo.models.gemma3.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = Gemma3TextConfig
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Gemma3Text"  # Gemma3TextModel, Gemma3TextForSequenceClassification
HF_ARCHITECTURES = {"ForCausalLM": "Gemma3ForCausalLM"}
__all__ = ["Gemma3TextConfig", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs",
           "convert"]
