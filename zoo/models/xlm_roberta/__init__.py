"""XLM-RoBERTa (model_type "xlm-roberta"): RoBERTa's architecture and tensor names."""
from zoo.models.xlm_roberta import convert
from zoo.models.xlm_roberta.config import XLMRobertaConfig
from zoo.models.xlm_roberta.model import (
    forward_hidden,
    head_specs,
    init,
    param_axes,
    param_specs,
    pooled_output,
    task_logits,
)
from zoo.tasks import ENCODER_TASK_CLASSES

CONFIG_CLASS = XLMRobertaConfig
HF_PREFIX = "XLMRoberta"
TASK_CLASSES = ENCODER_TASK_CLASSES
GENERIC_TASKS = ()
__all__ = ["XLMRobertaConfig", "forward_hidden", "head_specs", "init", "param_axes", "param_specs",
           "pooled_output", "task_logits", "convert", "TASK_CLASSES"]
