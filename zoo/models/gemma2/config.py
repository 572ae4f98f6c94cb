"""Gemma 2: soft-capped attention and final logits, alternating sliding-window and global
layers, norms before and after attention and MLP, attention scaled by ``query_pre_attn_scalar``."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from zoo.models.gemma.config import FULL, SLIDING, GemmaConfig


@dataclasses.dataclass(frozen=True)
class Gemma2Config(GemmaConfig):
    model_type = "gemma2"
    not_in_hf: ClassVar[tuple[str, ...]] = ("mlp_bias",)

    vocab_size: int = 256000
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 4
    head_dim: int | None = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    final_logit_softcapping: float | None = 30.0
    attn_logit_softcapping: float | None = 50.0

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        data = super().denormalize_hf_dict(data)
        if data.get("hidden_act") == data.get("hidden_activation"):
            data.pop("hidden_act", None)  # Transformers' Gemma 2/3 configs read only hidden_activation
        return data

    def default_layer_types(self) -> tuple[str, ...]:
        return tuple(SLIDING if (i + 1) % 2 else FULL for i in range(self.num_hidden_layers))

    def validated(self) -> "Gemma2Config":
        cfg = self
        if cfg.layer_types is None:
            cfg = dataclasses.replace(cfg, layer_types=cfg.default_layer_types())
        bad = set(cfg.layer_types) - {SLIDING, FULL}
        if bad:
            raise ValueError(f"{cfg.model_type}: unknown layer_types {sorted(bad)}; expected '{SLIDING}' or '{FULL}'")
        if SLIDING in cfg.layer_types and not cfg.sliding_window:
            raise ValueError(f"{cfg.model_type}: layer_types has sliding layers but sliding_window is {cfg.sliding_window}")
        return GemmaConfig.validated(cfg)

    @property
    def mlp_activation(self) -> str:
        return self.hidden_activation

    @property
    def query_scale(self) -> float:
        return float(self.query_pre_attn_scalar) ** -0.5

    @property
    def attn_softcap(self) -> float | None:
        return self.attn_logit_softcapping

    @property
    def final_softcap(self) -> float | None:
        return self.final_logit_softcapping

    @property
    def sandwich_norms(self) -> bool:
        return True
