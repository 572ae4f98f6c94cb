"""Qwen2: Llama with q/k/v biases (no o bias) and windows on the upper layers when enabled."""
from __future__ import annotations

import dataclasses

from zoo.models.llama.config import LlamaConfig


@dataclasses.dataclass(frozen=True)
class Qwen2Config(LlamaConfig):
    model_type = "qwen2"

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_key_value_heads: int | None = 32
    max_position_embeddings: int = 32768
    rope_theta: float = 10000.0
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    bos_token_id: object = None
    eos_token_id: object = None

    def layer_windows(self) -> tuple[int | None, ...]:
        if self.layer_types is not None:
            return super().layer_windows()
        if not self.use_sliding_window or self.sliding_window is None:
            return (None,) * self.num_hidden_layers
        return tuple(self.sliding_window if i >= self.max_window_layers else None for i in range(self.num_hidden_layers))

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def o_bias(self) -> bool:
        return False
