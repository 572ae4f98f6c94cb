"""Qwen2 checkpoints use the Llama tensor names."""
from zoo.models.llama.convert import IGNORE, RULES, rules

__all__ = ["IGNORE", "RULES", "rules"]
