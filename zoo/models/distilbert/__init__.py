"""DistilBERT: the BERT encoder under DistilBERT's config and tensor names."""
from zoo.models.distilbert import convert
from zoo.models.distilbert.config import DistilBertConfig
from zoo.models.distilbert.model import (
    forward_hidden,
    head_specs,
    init,
    param_axes,
    param_specs,
    pooled_output,
    task_logits,
)
from zoo.tasks import ENCODER_TASK_CLASSES

CONFIG_CLASS = DistilBertConfig
HF_PREFIX = "DistilBert"
TASK_CLASSES = ENCODER_TASK_CLASSES
GENERIC_TASKS = ()
__all__ = ["DistilBertConfig", "forward_hidden", "head_specs", "init", "param_axes", "param_specs",
           "pooled_output", "task_logits", "convert", "TASK_CLASSES"]
