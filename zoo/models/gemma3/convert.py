"""Gemma 3 text checkpoints use the Gemma tensor names (with q/k norms and the feed-forward norms)."""
from zoo.models.gemma.convert import IGNORE, RULES, rules

__all__ = ["IGNORE", "RULES", "rules"]
