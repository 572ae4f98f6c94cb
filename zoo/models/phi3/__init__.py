"""Phi-3: the Llama decoder, with qkv and gate/up fused in the checkpoint and longrope scaling."""
from zoo.models.phi3 import convert
from zoo.models.phi3.config import Phi3Config
from zoo.models.phi3.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = Phi3Config
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Phi3"


def cache_reset_length(cfg: Phi3Config) -> int | None:
    """Sequence length at which ``generate`` drops the KV cache once and recomputes it.

    Longrope picks short or long factors for a whole forward by its largest position, so
    keys cached with the short factors go stale once the sequence passes
    ``original_max_position_embeddings``. Transformers' Phi-3 ``prepare_inputs_for_generation``
    then discards the cache (when the input reaches that length + 1 and the cache holds no
    more than that length) and runs everything again with the long factors; we do the same
    so generation stays token-identical across the switch.
    """
    if cfg.rope.rope_type != "longrope":
        return None  # the default rope does not depend on length: a recompute would change nothing
    return cfg.original_max_position_embeddings + 1


__all__ = ["Phi3Config", "cache_reset_length", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
