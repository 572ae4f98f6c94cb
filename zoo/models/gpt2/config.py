"""GPT-2 config: HF's ``n_embd`` / ``n_layer`` spelling, with the common names as properties."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.config_utils import ModelConfig


@dataclasses.dataclass(frozen=True)
class GPT2Config(ModelConfig):
    model_type = "gpt2"
    aliases = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
               "max_position_embeddings": "n_positions"}

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False  # fp32 scores: what our attention always does
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: Any = 50256
    eos_token_id: Any = 50256
    pad_token_id: Any = None

    def validated(self) -> "GPT2Config":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.add_cross_attention:
            raise ValueError("GPT-2 with add_cross_attention=True (an encoder-decoder part) is not supported")
        if self.scale_attn_by_inverse_layer_idx:
            raise ValueError("GPT-2 with scale_attn_by_inverse_layer_idx=True is not supported")
        return self

    # The names the shared decoder machinery (cache, generation, loading) reads.
    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def num_key_value_heads(self) -> int:
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def intermediate_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    def layer_windows(self) -> tuple[None, ...]:
        return (None,) * self.n_layer
