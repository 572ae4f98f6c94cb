"""DistilBERT config: HF's own field names (dim, n_layers, ...) and the properties the BERT encoder reads."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.config_utils import ModelConfig


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(ModelConfig):
    model_type = "distilbert"
    aliases = {"hidden_size": "dim", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers"}

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False  # the table is stored in the checkpoint either way
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    initializer_range: float = 0.02
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    tie_word_embeddings: bool = True
    pad_token_id: Any = 0
    bos_token_id: Any = None
    eos_token_id: Any = None

    def validated(self) -> "DistilBertConfig":
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) is not a multiple of n_heads ({self.n_heads})")
        return self

    # ---- the BERT encoder's names ----
    hidden_size = property(lambda self: self.dim)
    num_hidden_layers = property(lambda self: self.n_layers)
    num_attention_heads = property(lambda self: self.n_heads)
    intermediate_size = property(lambda self: self.hidden_dim)
    hidden_act = property(lambda self: self.activation)
    mlm_activation = property(lambda self: self.activation)
    head_dim = property(lambda self: self.dim // self.n_heads)
    layer_norm_eps = 1e-12  # hard-coded in every DistilBERT LayerNorm
    type_vocab_size = 0  # no token-type embeddings
    positions_from_padding = False
    classifier_style = "dense_relu"  # pre_classifier -> ReLU -> classifier
    has_pooler = False
