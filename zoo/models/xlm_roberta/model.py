"""XLM-RoBERTa is RoBERTa with another vocabulary: the BERT encoder with RoBERTa's flags."""
from zoo.models.bert.model import forward_hidden, head_specs, init, param_axes, param_specs, pooled_output, task_logits

__all__ = ["forward_hidden", "head_specs", "init", "param_axes", "param_specs", "pooled_output", "task_logits"]
