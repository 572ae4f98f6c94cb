"""RoBERTa runs the BERT encoder; its config numbers positions from padding_idx + 1 and picks its heads."""
from zoo.models.bert.model import forward_hidden, head_specs, init, param_axes, param_specs, pooled_output, task_logits

__all__ = ["forward_hidden", "head_specs", "init", "param_axes", "param_specs", "pooled_output", "task_logits"]
