"""Llama config: the decoder fields Mistral, Qwen2 and Qwen3 share, with Llama's defaults."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.config_utils import FrozenDict, ModelConfig
from zoo.nn.rope import Rope, make_rope


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    model_type = "llama"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: FrozenDict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    bos_token_id: Any = 1
    eos_token_id: Any = 2
    pad_token_id: Any = None

    # ---- HF spelling <-> ours ----
    @classmethod
    def normalize_hf_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fold v5 ``rope_parameters`` (or old ``rope_scaling`` with ``type``) into
        ``rope_theta`` + ``rope_scaling``."""
        rp = data.pop("rope_parameters", None)
        if rp is not None:
            rp = dict(rp)
            if "rope_theta" in rp:
                data["rope_theta"] = rp.pop("rope_theta")
            if set(rp) - {"rope_type", "type"} or rp.get("rope_type", rp.get("type", "default")) != "default":
                data["rope_scaling"] = rp
            else:
                data["rope_scaling"] = None
        return data

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        theta = data.pop("rope_theta")
        scaling = dict(data.pop("rope_scaling") or {})
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        scaling.setdefault("rope_type", "default")
        data["rope_parameters"] = {**scaling, "rope_theta": theta}
        if data.get("layer_types") is None:
            data.pop("layer_types", None)
        return data

    def validated(self) -> "LlamaConfig":
        changes: dict[str, Any] = {}
        if self.num_key_value_heads is None:
            changes["num_key_value_heads"] = self.num_attention_heads
        if self.head_dim is None:
            changes["head_dim"] = self.hidden_size // self.num_attention_heads
        cfg = dataclasses.replace(self, **changes) if changes else self
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({cfg.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({cfg.num_key_value_heads})"
            )
        if cfg.layer_types is not None and len(cfg.layer_types) != cfg.num_hidden_layers:
            raise ValueError(f"layer_types has {len(cfg.layer_types)} entries for {cfg.num_hidden_layers} layers")
        return cfg

    # ---- derived, used by the model ----
    def layer_windows(self) -> tuple[int | None, ...]:
        """Sliding window of each layer (None: full attention)."""
        if self.layer_types is not None:
            return tuple(self.sliding_window if t == "sliding_attention" else None for t in self.layer_types)
        return (None,) * self.num_hidden_layers

    @property
    def rope(self) -> Rope:
        return make_rope(
            self.rope_theta,
            self.head_dim,
            self.max_position_embeddings,
            self.rope_scaling,
            original_max_position_embeddings=dict(self.extra).get("original_max_position_embeddings"),
        )

    @property
    def qk_norm(self) -> bool:
        return False

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

