"""Gemma 3 (text): Gemma 2's layer with q/k norms, a local/global pattern (five local layers
per global one by default) and separate rotary bases: ``rope_local_base_freq`` for local
layers, ``rope_theta`` (+ ``rope_scaling``) for global ones."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from zoo.config_utils import FrozenDict
from zoo.models.gemma.config import FULL, SLIDING
from zoo.models.gemma2.config import Gemma2Config
from zoo.nn.rope import Rope, make_rope


def _split_rope(params: Mapping[str, Any] | None) -> tuple[float | None, dict[str, Any] | None]:
    """(theta, scaling or None) from one Transformers rope_parameters entry."""
    params = dict(params or {})
    theta = params.pop("rope_theta", None)
    kind = params.get("rope_type", params.get("type", "default"))
    scaling = params if (set(params) - {"rope_type", "type"} or kind != "default") else None
    return theta, scaling


@dataclasses.dataclass(frozen=True)
class Gemma3TextConfig(Gemma2Config):
    model_type = "gemma3_text"

    vocab_size: int = 262208
    max_position_embeddings: int = 131072
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rope_local_scaling: FrozenDict | None = None
    sliding_window_pattern: int = 6
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None

    @classmethod
    def normalize_hf_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Transformers v5 keys rope_parameters by layer type; older configs use rope_theta,
        rope_scaling (global layers) and rope_local_base_freq."""
        rp = data.get("rope_parameters")
        if isinstance(rp, Mapping) and (FULL in rp or SLIDING in rp):
            data.pop("rope_parameters")
            theta, scaling = _split_rope(rp.get(FULL))
            if theta is not None:
                data["rope_theta"] = theta
            data["rope_scaling"] = scaling
            theta, scaling = _split_rope(rp.get(SLIDING))
            if theta is not None:
                data["rope_local_base_freq"] = theta
            data["rope_local_scaling"] = scaling
        return super().normalize_hf_dict(data)

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        data = super().denormalize_hf_dict(data)
        local = dict(data.pop("rope_local_scaling") or {})
        local.setdefault("rope_type", local.pop("type", "default"))
        local["rope_theta"] = data.pop("rope_local_base_freq")
        data["rope_parameters"] = {FULL: data["rope_parameters"], SLIDING: local}
        return data

    def default_layer_types(self) -> tuple[str, ...]:
        n = self.sliding_window_pattern
        return tuple(SLIDING if (i + 1) % n else FULL for i in range(self.num_hidden_layers))

    def rope_for(self, kind: str) -> Rope:
        if kind == SLIDING:
            return make_rope(self.rope_local_base_freq, self.head_dim, self.max_position_embeddings,
                             self.rope_local_scaling)
        return self.rope

    @property
    def attn_softcap(self) -> float | None:
        # Transformers' Gemma 3 attention never passes attn_logit_softcapping on (the official
        # configs set it to null), so neither do we: the oracle decides.
        return None

    @property
    def qk_norm(self) -> bool:
        return True
