"""RoBERTa tensor names: BERT's body under ``roberta.``, its own LM and classification heads."""
from __future__ import annotations

from typing import Any

from zoo.conversion import Rule
from zoo.models.bert.convert import BODY, IGNORE, linear, mlm_rules, task_rules

BASE_PREFIX = "roberta."
HEAD_TENSORS = ("lm_head.", "classifier.", "qa_outputs.", "pooler.")


def heads(cfg: Any) -> tuple[Rule, ...]:
    return (
        *mlm_rules("lm_head.", "dense", "layer_norm", cfg.tie_word_embeddings),
        *linear("classifier.dense", ("classifier", "dense")),
        *linear("classifier.out_proj", ("classifier", "out_proj")),
        *linear("classifier", ("classifier",)),  # token classification
        *linear("qa_outputs", ("qa_outputs",)),
    )


def rules(cfg: Any, specs: Any, task: str = "base") -> list[Rule]:
    return task_rules(specs, BODY, heads(cfg), BASE_PREFIX, task)


__all__ = ["BASE_PREFIX", "HEAD_TENSORS", "IGNORE", "rules"]
