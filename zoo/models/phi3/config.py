"""Phi-3 config: Llama's fields plus ``original_max_position_embeddings`` (longrope picks its
short or long factors by it), a sliding window on every layer when set, and no biases."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.models.llama.config import LlamaConfig
from zoo.nn.rope import Rope, make_rope


@dataclasses.dataclass(frozen=True)
class Phi3Config(LlamaConfig):
    model_type = "phi3"

    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    max_position_embeddings: int = 4096
    original_max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    resid_pdrop: float = 0.0  # training-time dropouts, kept for the round trip
    embd_pdrop: float = 0.0
    sliding_window: int | None = None
    bos_token_id: Any = 1
    eos_token_id: Any = 32000
    pad_token_id: Any = 32000

    @classmethod
    def normalize_hf_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Also read the older spelling: ``rope_scaling`` with type "su"/"yarn" (both longrope to
        Transformers' Phi-3) and a top-level ``partial_rotary_factor``."""
        data = super().normalize_hf_dict(data)
        scaling = dict(data.get("rope_scaling") or {})
        kind = scaling.pop("type", None) or scaling.get("rope_type")
        if kind in ("su", "yarn"):
            kind = "longrope"
        if kind is not None:
            scaling["rope_type"] = kind
        if "partial_rotary_factor" in data:
            scaling.setdefault("partial_rotary_factor", data.pop("partial_rotary_factor"))
        if scaling:
            data["rope_scaling"] = scaling
        return data

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        # Llama fields Phi-3's config.json does not have, written only when they say something.
        for key, unset in (("attention_bias", False), ("mlp_bias", False)):
            if data.get(key, unset) == unset:
                data.pop(key, None)
        return super().denormalize_hf_dict(data)

    def validated(self) -> "Phi3Config":
        cfg = super().validated()
        if cfg.attention_bias or cfg.mlp_bias:
            raise ValueError("Phi-3 has no attention or MLP biases (attention_bias / mlp_bias must be false)")
        rope = cfg.rope
        if rope.rope_type not in ("default", "longrope"):
            raise ValueError(f"Phi-3 supports rope_type 'default' or 'longrope', got '{rope.rope_type}'")
        if rope.rope_type == "longrope":
            for key in ("short_factor", "long_factor"):
                factors = rope.get(key)
                if factors is None or len(factors) != rope.dim // 2:
                    raise ValueError(
                        f"longrope {key} must list {rope.dim // 2} numbers (rotary dims / 2), got "
                        f"{None if factors is None else len(factors)}"
                    )
        return cfg

    def layer_windows(self) -> tuple[int | None, ...]:
        return (self.sliding_window,) * self.num_hidden_layers

    @property
    def rope(self) -> Rope:
        return make_rope(self.rope_theta, self.head_dim, self.max_position_embeddings, self.rope_scaling,
                         original_max_position_embeddings=self.original_max_position_embeddings)
