"""ModernBERT config: HF's fields, per-layer attention kinds and the two rope thetas."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.config_utils import ModelConfig

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(ModelConfig):
    model_type = "modernbert"

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: Any = 50283
    eos_token_id: Any = 50282
    bos_token_id: Any = 50281
    cls_token_id: Any = 50281
    sep_token_id: Any = 50282
    attention_bias: bool = False
    attention_dropout: float = 0.0
    layer_types: tuple[str, ...] | None = None
    global_attn_every_n_layers: int = 3
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    local_attention: int = 128
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    decoder_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    tie_word_embeddings: bool = True

    # ---- HF spelling <-> ours ----
    @classmethod
    def normalize_hf_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """v5 writes ``rope_parameters`` per layer type; older configs ``global/local_rope_theta``."""
        rp = data.pop("rope_parameters", None)
        if rp:
            for kind, field in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
                params = dict(rp.get(kind) or {})
                rope_type = params.pop("rope_type", params.pop("type", "default"))
                if rope_type != "default" or set(params) - {"rope_theta"}:
                    raise ValueError(f"ModernBERT {kind} rope_parameters {dict(rp[kind])} are not supported "
                                     "(only the default rope, as every released checkpoint uses)")
                if "rope_theta" in params:
                    data[field] = params["rope_theta"]
        for unused in ("reference_compile", "repad_logits_with_grad"):
            data.pop(unused, None)
        return data

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        data["rope_parameters"] = {
            "full_attention": {"rope_type": "default", "rope_theta": data.pop("global_rope_theta")},
            "sliding_attention": {"rope_type": "default", "rope_theta": data.pop("local_rope_theta")},
        }
        return data

    def validated(self) -> "ModernBertConfig":
        cfg = self
        if cfg.layer_types is None:
            n = cfg.global_attn_every_n_layers
            types = tuple("sliding_attention" if i % n else "full_attention" for i in range(cfg.num_hidden_layers))
            cfg = dataclasses.replace(cfg, layer_types=types)
        if len(cfg.layer_types) != cfg.num_hidden_layers or set(cfg.layer_types) - set(LAYER_TYPES):
            raise ValueError(f"layer_types must list {cfg.num_hidden_layers} entries from {LAYER_TYPES}, "
                             f"got {cfg.layer_types}")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden_size ({cfg.hidden_size}) is not a multiple of "
                             f"num_attention_heads ({cfg.num_attention_heads})")
        if cfg.classifier_pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling must be 'cls' or 'mean', got {cfg.classifier_pooling!r}")
        return cfg

    # ---- derived, used by the model ----
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def sliding_window(self) -> int:
        """Transformers' half window: a local layer's token sees keys with ``|q - k| <= local_attention // 2``."""
        return self.local_attention // 2

    def layer_windows(self) -> tuple[int | None, ...]:
        """Our windows (``|q - k| < window``): the half window + 1 on local layers, None on global ones."""
        return tuple(self.sliding_window + 1 if t == "sliding_attention" else None for t in self.layer_types)
