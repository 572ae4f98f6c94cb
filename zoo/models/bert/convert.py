"""BERT tensor names <-> our encoder tree; RoBERTa and XLM-RoBERTa reuse the body names.

Body rules are written as a bare ``BertModel`` saves them; task checkpoints put the body
under ``bert.`` (``BASE_PREFIX``), which :func:`rules` adds for every task but ``base``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from zoo.conversion import Rule, rules_for_tree

L = "encoder.layer.{i}."


def linear(hf: str, path: tuple, split: int = 1, bias_flat: bool = False) -> list[Rule]:
    """A PyTorch Linear ``hf`` (.weight/.bias) <-> our ``path`` (kernel/bias)."""
    return [Rule(hf + ".weight", (*path, "kernel"), split=split), Rule(hf + ".bias", (*path, "bias"), flat=bias_flat)]


def layer_norm(hf: str, path: tuple) -> list[Rule]:
    return [Rule(hf + ".weight", (*path, "scale")), Rule(hf + ".bias", (*path, "bias"))]


BODY = (
    Rule("embeddings.word_embeddings.weight", ("embeddings", "word", "embedding")),
    Rule("embeddings.position_embeddings.weight", ("embeddings", "position", "embedding")),
    Rule("embeddings.token_type_embeddings.weight", ("embeddings", "token_type", "embedding")),
    *layer_norm("embeddings.LayerNorm", ("embeddings", "norm")),
    *linear(L + "attention.self.query", ("layers", "attn", "q_proj"), bias_flat=True),
    *linear(L + "attention.self.key", ("layers", "attn", "k_proj"), bias_flat=True),
    *linear(L + "attention.self.value", ("layers", "attn", "v_proj"), bias_flat=True),
    *linear(L + "attention.output.dense", ("layers", "attn", "o_proj"), split=2),
    *layer_norm(L + "attention.output.LayerNorm", ("layers", "attn_norm")),
    *linear(L + "intermediate.dense", ("layers", "mlp", "up_proj")),
    *linear(L + "output.dense", ("layers", "mlp", "down_proj")),
    *layer_norm(L + "output.LayerNorm", ("layers", "mlp_norm")),
    *linear("pooler.dense", ("pooler", "dense")),
)


def mlm_rules(prefix: str, transform: str, norm_name: str, tied: bool) -> list[Rule]:
    """BertLMPredictionHead / RobertaLMHead: transform, LayerNorm, decoder bias (+ weight when untied).

    Untied, Transformers keeps ``<prefix>bias`` and ``<prefix>decoder.bias`` apart but only the
    latter is used: both are written from our one bias, and the latter wins on load.
    """
    rules = [*linear(prefix + transform, ("lm_head", "dense")), *layer_norm(prefix + norm_name, ("lm_head", "norm")),
             Rule(prefix + "bias", ("lm_head", "decoder", "bias"))]
    if not tied:
        rules += linear(prefix + "decoder", ("lm_head", "decoder"))
    return rules


def bert_heads(cfg: Any) -> tuple[Rule, ...]:
    return (
        *mlm_rules("cls.predictions.", "transform.dense", "transform.LayerNorm", cfg.tie_word_embeddings),
        *linear("classifier", ("classifier",)),
        *linear("qa_outputs", ("qa_outputs",)),
    )


def prefixed(rules: Sequence[Rule], prefix: str) -> list[Rule]:
    return [dataclasses.replace(r, hf=prefix + r.hf) for r in rules]


def task_rules(specs: Any, body: Sequence[Rule], heads: Sequence[Rule], prefix: str, task: str) -> list[Rule]:
    """The rules for one task's tree: body (prefixed unless bare), then its head's."""
    body = list(body) if task == "base" else prefixed(body, prefix)
    return rules_for_tree(specs, [*body, *heads])


BASE_PREFIX = "bert."
# Heads of every task (and the old pre-training head): present in a checkpoint, unused by another task.
HEAD_TENSORS = ("cls.", "classifier.", "qa_outputs.", "pooler.")
# Buffers some checkpoints carry.
IGNORE = ("embeddings.position_ids",)


def rules(cfg: Any, specs: Any, task: str = "base") -> list[Rule]:
    return task_rules(specs, BODY, bert_heads(cfg), BASE_PREFIX, task)
