"""Mixtral config: Mistral's attention with a sparse mixture-of-experts MLP in every layer."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.models.llama.config import LlamaConfig
from zoo.nn.moe import MOE_IMPLEMENTATIONS


@dataclasses.dataclass(frozen=True)
class MixtralConfig(LlamaConfig):
    model_type = "mixtral"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096 * 32
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    sliding_window: int | None = None
    num_experts_per_tok: int = 2
    num_local_experts: int = 8
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.001
    router_jitter_noise: float = 0.0  # training-time noise; inference ignores it, as Transformers does
    # How the experts run ("auto" | "dense" | "ragged", see zoo.nn.moe); not written to config.json.
    moe_implementation: str = "auto"

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        data = super().denormalize_hf_dict(data)
        data.pop("moe_implementation", None)
        return data

    def validated(self) -> "MixtralConfig":
        cfg = super().validated()
        if not 1 <= cfg.num_experts_per_tok <= cfg.num_experts:
            raise ValueError(f"num_experts_per_tok ({cfg.num_experts_per_tok}) must be between 1 and the number of "
                             f"experts ({cfg.num_experts})")
        if cfg.moe_implementation not in MOE_IMPLEMENTATIONS:
            raise ValueError(f"unknown moe_implementation '{cfg.moe_implementation}'; known: {MOE_IMPLEMENTATIONS}")
        return cfg

    # ---- what the MoE decoder reads ----
    @property
    def num_experts(self) -> int:
        return self.num_local_experts

    @property
    def expert_intermediate_size(self) -> int:
        return self.intermediate_size

    @property
    def normalize_topk(self) -> bool:
        return True  # Mixtral always renormalises the chosen experts' weights

    @property
    def router_weights_in_model_dtype(self) -> bool:
        return False  # fp32 weights multiply the expert outputs

    def layer_kinds(self) -> tuple[str, ...]:
        """"moe" or "dense" per layer."""
        return ("moe",) * self.num_hidden_layers

    def layer_windows(self) -> tuple[int | None, ...]:
        return (self.sliding_window,) * self.num_hidden_layers
