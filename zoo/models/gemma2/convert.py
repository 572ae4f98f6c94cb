"""Gemma 2 checkpoints use the Gemma tensor names (with the pre/post feed-forward norms)."""
from zoo.models.gemma.convert import IGNORE, RULES, rules

__all__ = ["IGNORE", "RULES", "rules"]
