"""XLM-RoBERTa config: RoBERTa's with its own model_type."""
from zoo.models.bert.config import XLMRobertaConfig

__all__ = ["XLMRobertaConfig"]
