"""OLMo-2 config: Llama's fields (rope parameters, GQA, attention biases) with OLMo-2's defaults."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.models.llama.config import LlamaConfig


@dataclasses.dataclass(frozen=True)
class Olmo2Config(LlamaConfig):
    model_type = "olmo2"

    vocab_size: int = 50304
    hidden_size: int = 4096
    intermediate_size: int = 11008
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    bos_token_id: Any = None
    eos_token_id: Any = 50279
    pad_token_id: Any = 1

    def layer_windows(self) -> tuple[None, ...]:
        return (None,) * self.num_hidden_layers  # every layer attends globally (Transformers ignores windows)

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        # Llama fields OLMo-2's config.json does not have, written only when they say something.
        for key, unset in (("sliding_window", None), ("mlp_bias", False)):
            if data.get(key, unset) == unset:
                data.pop(key, None)
        return super().denormalize_hf_dict(data)

    @property
    def qk_norm(self) -> bool:
        return False  # OLMo-2 normalises the whole q/k projection, not each head (see olmo2.model)
