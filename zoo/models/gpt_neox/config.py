"""GPT-NeoX (Pythia) config: partial rotary dims and the parallel residual."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.config_utils import FrozenDict, ModelConfig
from zoo.nn.rope import Rope, make_rope


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig(ModelConfig):
    model_type = "gpt_neox"

    vocab_size: int = 50432
    hidden_size: int = 6144
    num_hidden_layers: int = 44
    num_attention_heads: int = 64
    intermediate_size: int = 24576
    hidden_act: str = "gelu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rotary_pct: float = 0.25
    rope_scaling: FrozenDict | None = None
    use_parallel_residual: bool = True
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: Any = 0
    eos_token_id: Any = 2
    pad_token_id: Any = None

    @classmethod
    def normalize_hf_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """v5 ``rope_parameters`` or the old ``rotary_pct`` / ``rotary_emb_base`` / ``rope_scaling``."""
        if "rotary_emb_base" in data:
            data["rope_theta"] = data.pop("rotary_emb_base")
        rp = data.pop("rope_parameters", None)
        if rp is not None:
            rp = dict(rp)
            data["rope_theta"] = rp.pop("rope_theta", data.get("rope_theta", 10000.0))
            data["rotary_pct"] = rp.pop("partial_rotary_factor", data.get("rotary_pct", 0.25))
            kind = rp.get("rope_type", rp.get("type", "default"))
            data["rope_scaling"] = rp if kind != "default" else None
        return data

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        scaling = dict(data.pop("rope_scaling") or {})
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        scaling.setdefault("rope_type", "default")
        data["rope_parameters"] = {**scaling, "rope_theta": data.pop("rope_theta"),
                                   "partial_rotary_factor": data.pop("rotary_pct")}
        return data

    def validated(self) -> "GPTNeoXConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads

    @property
    def rope(self) -> Rope:
        return make_rope(self.rope_theta, self.head_dim, self.max_position_embeddings, self.rope_scaling,
                         partial_rotary_factor=self.rotary_pct)

    def layer_windows(self) -> tuple[None, ...]:
        return (None,) * self.num_hidden_layers
