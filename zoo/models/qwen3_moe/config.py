"""Qwen3-MoE config: Qwen3 attention (q/k norms), 128 small experts, optional dense layers."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.models.mixtral.config import MixtralConfig


@dataclasses.dataclass(frozen=True)
class Qwen3MoeConfig(MixtralConfig):
    model_type = "qwen3_moe"
    # The Hub's config.json says num_experts; Transformers v5 writes num_local_experts.
    aliases = {"num_experts": "num_local_experts"}

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144  # the dense layers' MLP
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 4
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    decoder_sparse_step: int = 1
    moe_intermediate_size: int = 768
    num_experts_per_tok: int = 8
    num_local_experts: int = 128
    norm_topk_prob: bool = False
    mlp_only_layers: tuple[int, ...] = ()
    bos_token_id: Any = None
    eos_token_id: Any = None

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        data = super().denormalize_hf_dict(data)
        data["num_experts"] = data.pop("num_local_experts")
        return data

    def validated(self) -> "Qwen3MoeConfig":
        cfg = super().validated()
        if cfg.mlp_only_layers is None:
            cfg = dataclasses.replace(cfg, mlp_only_layers=())
        bad = [i for i in cfg.mlp_only_layers if not 0 <= i < cfg.num_hidden_layers]
        if bad:
            raise ValueError(f"mlp_only_layers {bad} are outside the {cfg.num_hidden_layers} layers")
        if cfg.decoder_sparse_step < 1:
            raise ValueError(f"decoder_sparse_step must be >= 1, got {cfg.decoder_sparse_step}")
        return cfg

    @property
    def qk_norm(self) -> bool:
        return True

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size

    @property
    def normalize_topk(self) -> bool:
        return self.norm_topk_prob

    @property
    def router_weights_in_model_dtype(self) -> bool:
        return True

    def layer_kinds(self) -> tuple[str, ...]:
        """Transformers' rule: MoE unless listed in mlp_only_layers or off the sparse step."""
        return tuple(
            "moe" if i not in self.mlp_only_layers and self.num_experts > 0 and (i + 1) % self.decoder_sparse_step == 0
            else "dense"
            for i in range(self.num_hidden_layers)
        )

    def layer_windows(self) -> tuple[int | None, ...]:
        return ((self.sliding_window if self.use_sliding_window else None),) * self.num_hidden_layers
