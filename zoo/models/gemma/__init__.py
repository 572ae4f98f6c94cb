"""Gemma: scaled embeddings, (1 + w) RMSNorm, GeGLU, tied head; the decoder Gemma 2 and 3 share."""
from zoo.models.gemma import convert
from zoo.models.gemma.config import GemmaConfig
from zoo.models.gemma.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = GemmaConfig
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Gemma"
__all__ = ["GemmaConfig", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
