"""BERT: the shared post-LayerNorm encoder (RoBERTa, XLM-RoBERTa and DistilBERT run it too)."""
from zoo.models.bert import convert
from zoo.models.bert.config import BertConfig
from zoo.models.bert.model import forward_hidden, head_specs, init, param_axes, param_specs, pooled_output, task_logits
from zoo.tasks import ENCODER_TASK_CLASSES

CONFIG_CLASS = BertConfig
HF_PREFIX = "Bert"
TASK_CLASSES = ENCODER_TASK_CLASSES
GENERIC_TASKS = ()
__all__ = ["BertConfig", "forward_hidden", "head_specs", "init", "param_axes", "param_specs", "pooled_output",
           "task_logits", "convert", "TASK_CLASSES"]
