"""OLMo-2: norms after attention and after the MLP (none before), RMSNorm over the whole q and k."""
from zoo.models.olmo2 import convert
from zoo.models.olmo2.config import Olmo2Config
from zoo.models.olmo2.model import forward, forward_hidden, init, init_cache, param_axes, param_specs
from zoo.tasks import DECODER_TASK_CLASSES

CONFIG_CLASS = Olmo2Config
TASK_CLASSES = DECODER_TASK_CLASSES  # sequence classification (score head)
HF_PREFIX = "Olmo2"
__all__ = ["Olmo2Config", "forward", "forward_hidden", "init", "init_cache", "param_axes", "param_specs", "convert"]
