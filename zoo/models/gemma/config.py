"""Gemma config: Llama's fields with Gemma's defaults, plus what the Gemma decoder reads.

Gemma 2 and Gemma 3 extend it (``zoo.models.gemma2.config``, ``zoo.models.gemma3.config``);
the properties at the bottom are the switches the one Gemma decoder reads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from zoo.models.llama.config import LlamaConfig
from zoo.nn.rope import Rope

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclasses.dataclass(frozen=True)
class GemmaConfig(LlamaConfig):
    model_type = "gemma"
    # Llama fields Transformers' GemmaConfig does not have: not written to config.json.
    not_in_hf: ClassVar[tuple[str, ...]] = ("mlp_bias", "sliding_window", "layer_types")

    vocab_size: int = 256000
    hidden_size: int = 3072
    intermediate_size: int = 24576
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 16
    head_dim: int | None = 256
    hidden_act: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    pad_token_id: Any = 0
    eos_token_id: Any = 1
    bos_token_id: Any = 2
    use_bidirectional_attention: bool | None = None

    @classmethod
    def normalize_hf_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        # The official Gemma 1 configs say "gelu" but mean the tanh approximation (Transformers #29402).
        if data.get("hidden_act") == "gelu":
            data["hidden_act"] = "gelu_pytorch_tanh"
        return super().normalize_hf_dict(data)

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        data = super().denormalize_hf_dict(data)
        for name in self.not_in_hf:
            data.pop(name, None)
        return data

    def validated(self) -> "GemmaConfig":
        if self.use_bidirectional_attention:
            raise ValueError(f"{self.model_type}: use_bidirectional_attention=True is not supported by the zoo "
                             "(causal decoding only)")
        return super().validated()

    # ---- what the Gemma decoder reads ----
    def layer_kinds(self) -> tuple[str, ...]:
        """"sliding_attention" or "full_attention" per layer."""
        return tuple(self.layer_types) if self.layer_types is not None else (FULL,) * self.num_hidden_layers

    def rope_for(self, kind: str) -> Rope:
        """The rotary embedding of one layer kind (Gemma 3 gives local layers their own base)."""
        return self.rope

    @property
    def mlp_activation(self) -> str:
        return self.hidden_act

    @property
    def query_scale(self) -> float:
        return self.head_dim**-0.5

    @property
    def attn_softcap(self) -> float | None:
        return None

    @property
    def final_softcap(self) -> float | None:
        return None

    @property
    def sandwich_norms(self) -> bool:
        """Norms after attention and MLP outputs too (Gemma 2 and 3), not only before."""
        return False

    @property
    def qk_norm(self) -> bool:
        return False
