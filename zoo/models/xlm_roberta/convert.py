"""XLM-RoBERTa checkpoints use RoBERTa's tensor names (body under ``roberta.``)."""
from zoo.models.roberta.convert import BASE_PREFIX, HEAD_TENSORS, IGNORE, rules

__all__ = ["BASE_PREFIX", "HEAD_TENSORS", "IGNORE", "rules"]
