"""ModernBERT: pre-norm encoder with rotary positions, GeGLU and alternating global/local attention."""
from zoo.models.modernbert import convert
from zoo.models.modernbert.config import ModernBertConfig
from zoo.models.modernbert.model import (
    forward_hidden,
    head_specs,
    init,
    param_axes,
    param_specs,
    pooled_output,
    task_logits,
)
from zoo.tasks import ENCODER_TASK_CLASSES

CONFIG_CLASS = ModernBertConfig
HF_PREFIX = "ModernBert"
TASK_CLASSES = ENCODER_TASK_CLASSES
GENERIC_TASKS = ()
__all__ = ["ModernBertConfig", "forward_hidden", "head_specs", "init", "param_axes", "param_specs",
           "pooled_output", "task_logits", "convert", "TASK_CLASSES"]
