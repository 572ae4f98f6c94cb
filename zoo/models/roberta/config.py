"""RoBERTa config (defined beside BERT's, whose encoder it runs)."""
from zoo.models.bert.config import RobertaConfig

__all__ = ["RobertaConfig"]
