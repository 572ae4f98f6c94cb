"""DistilBERT runs the BERT encoder: no token types, no pooler, ReLU classifier (flags in its config)."""
from zoo.models.bert.model import forward_hidden, head_specs, init, param_axes, param_specs, pooled_output, task_logits

__all__ = ["forward_hidden", "head_specs", "init", "param_axes", "param_specs", "pooled_output", "task_logits"]
