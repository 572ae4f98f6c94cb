"""DistilBERT tensor names <-> the BERT encoder tree (body under ``distilbert.`` in task checkpoints)."""
from __future__ import annotations

from typing import Any

from zoo.conversion import Rule
from zoo.models.bert.convert import layer_norm, linear, task_rules

L = "transformer.layer.{i}."
BODY = (
    Rule("embeddings.word_embeddings.weight", ("embeddings", "word", "embedding")),
    Rule("embeddings.position_embeddings.weight", ("embeddings", "position", "embedding")),
    *layer_norm("embeddings.LayerNorm", ("embeddings", "norm")),
    *linear(L + "attention.q_lin", ("layers", "attn", "q_proj"), bias_flat=True),
    *linear(L + "attention.k_lin", ("layers", "attn", "k_proj"), bias_flat=True),
    *linear(L + "attention.v_lin", ("layers", "attn", "v_proj"), bias_flat=True),
    *linear(L + "attention.out_lin", ("layers", "attn", "o_proj"), split=2),
    *layer_norm(L + "sa_layer_norm", ("layers", "attn_norm")),
    *linear(L + "ffn.lin1", ("layers", "mlp", "up_proj")),
    *linear(L + "ffn.lin2", ("layers", "mlp", "down_proj")),
    *layer_norm(L + "output_layer_norm", ("layers", "mlp_norm")),
)

BASE_PREFIX = "distilbert."
HEAD_TENSORS = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "pre_classifier.", "classifier.",
                "qa_outputs.")
IGNORE = ("embeddings.position_ids",)


def heads(cfg: Any) -> tuple[Rule, ...]:
    mlm = [*linear("vocab_transform", ("lm_head", "dense")), *layer_norm("vocab_layer_norm", ("lm_head", "norm")),
           Rule("vocab_projector.bias", ("lm_head", "decoder", "bias"))]
    if not cfg.tie_word_embeddings:
        mlm.append(Rule("vocab_projector.weight", ("lm_head", "decoder", "kernel"), split=1))
    return (
        *mlm,
        *linear("pre_classifier", ("classifier", "dense")),
        *linear("classifier", ("classifier", "out_proj")),  # sequence classification
        *linear("classifier", ("classifier",)),  # token classification
        *linear("qa_outputs", ("qa_outputs",)),
    )


def rules(cfg: Any, specs: Any, task: str = "base") -> list[Rule]:
    return task_rules(specs, BODY, heads(cfg), BASE_PREFIX, task)
