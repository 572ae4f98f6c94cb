"""BERT config, and the flags through which RoBERTa, XLM-RoBERTa and DistilBERT reuse the BERT encoder."""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.config_utils import ModelConfig


@dataclasses.dataclass(frozen=True)
class BertConfig(ModelConfig):
    model_type = "bert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True
    pad_token_id: Any = 0
    bos_token_id: Any = None
    eos_token_id: Any = None

    def validated(self) -> "BertConfig":
        extra = dict(self.extra)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")
        if extra.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type='{extra['position_embedding_type']}' is not supported "
                             "(only 'absolute', what Transformers 5 implements)")
        if extra.get("is_decoder") or extra.get("add_cross_attention"):
            raise ValueError("the zoo implements BERT-style models as encoders only (is_decoder=False)")
        return self

    # ---- what the shared encoder reads ----
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def positions_from_padding(self) -> bool:
        """RoBERTa numbers positions from padding_idx + 1, skipping pad tokens; BERT counts from 0."""
        return False

    @property
    def mlm_activation(self) -> str:
        return self.hidden_act

    @property
    def classifier_style(self) -> str:
        """'pooler': tanh pooler -> linear (BERT); 'dense_tanh' / 'dense_relu': dense -> act -> out_proj on
        the first token (RoBERTa / DistilBERT)."""
        return "pooler"

    @property
    def has_pooler(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class RobertaConfig(BertConfig):
    model_type = "roberta"

    vocab_size: int = 50265
    pad_token_id: Any = 1
    bos_token_id: Any = 0
    eos_token_id: Any = 2

    @property
    def positions_from_padding(self) -> bool:
        return True

    @property
    def mlm_activation(self) -> str:
        return "gelu"  # RobertaLMHead hard-codes gelu whatever hidden_act says

    @property
    def classifier_style(self) -> str:
        return "dense_tanh"


@dataclasses.dataclass(frozen=True)
class XLMRobertaConfig(RobertaConfig):
    model_type = "xlm-roberta"

    vocab_size: int = 30522
