"""Qwen3: Qwen2's layout without q/k/v biases, plus RMSNorm on each head of q and k."""
from __future__ import annotations

import dataclasses

from zoo.models.qwen2.config import Qwen2Config


@dataclasses.dataclass(frozen=True)
class Qwen3Config(Qwen2Config):
    model_type = "qwen3"

    hidden_size: int = 4096
    intermediate_size: int = 22016
    head_dim: int | None = 128
    attention_bias: bool = False

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def qk_norm(self) -> bool:
        return True
