"""RoBERTa: the BERT encoder with RoBERTa's positions, LM head and classification head."""
from zoo.models.roberta import convert
from zoo.models.roberta.config import RobertaConfig
from zoo.models.roberta.model import (
    forward_hidden,
    head_specs,
    init,
    param_axes,
    param_specs,
    pooled_output,
    task_logits,
)
from zoo.tasks import ENCODER_TASK_CLASSES

CONFIG_CLASS = RobertaConfig
HF_PREFIX = "Roberta"
TASK_CLASSES = ENCODER_TASK_CLASSES
GENERIC_TASKS = ()
__all__ = ["RobertaConfig", "forward_hidden", "head_specs", "init", "param_axes", "param_specs", "pooled_output",
           "task_logits", "convert", "TASK_CLASSES"]
