"""Mistral: Llama with a sliding window on every layer (when set)."""
from __future__ import annotations

import dataclasses

from zoo.models.llama.config import LlamaConfig


@dataclasses.dataclass(frozen=True)
class MistralConfig(LlamaConfig):
    model_type = "mistral"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096 * 32
    rms_norm_eps: float = 1e-6
    sliding_window: int | None = 4096

    def layer_windows(self) -> tuple[int | None, ...]:
        return (self.sliding_window,) * self.num_hidden_layers
