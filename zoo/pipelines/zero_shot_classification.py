"""``zero-shot-classification``: rank candidate labels with an NLI model.

Each (text, ``hypothesis_template.format(label)``) pair is an NLI premise/hypothesis; the
entailment logit scores the label. Single-label: softmax of the entailment logits over the
labels; ``multi_label=True`` (or one label): per label, softmax of entailment vs contradiction.
Output as Transformers': ``{"sequence", "labels", "scores"}``, best first.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from zoo.pipelines.base import Pipeline
from zoo.tasks import label2id


def parse_labels(labels: Any) -> list[str]:
    """A list of labels, or one comma-separated string of them."""
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError("zero-shot-classification needs candidate_labels: a non-empty list of strings (or one "
                         f"comma-separated string), got {labels!r}")
    return list(labels)


class ZeroShotClassificationPipeline(Pipeline):
    task = "zero-shot-classification"
    head = "sequence_classification"
    defaults = {"candidate_labels": None, "hypothesis_template": "This example is {}.", "multi_label": False}
    output_keys = ("logits",)

    def __call__(self, sequences: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and "candidate_labels" not in kwargs:
            kwargs["candidate_labels"] = args[0]
        elif args:
            raise ValueError(f"zero-shot-classification: unable to understand extra arguments {args}")
        return super().__call__(sequences, **kwargs)

    @property
    def entailment_id(self) -> int:
        for label, index in label2id(self.model.config).items():
            if label.lower().startswith("entail"):
                return index
        return -1

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        labels = parse_labels(params["candidate_labels"])
        template = params["hypothesis_template"]
        if not isinstance(template, str) or template.format(labels[0]) == template:
            raise ValueError(f"hypothesis_template {template!r} has no {{}} where the label should go")
        if self.entailment_id == -1:
            raise ValueError("zero-shot-classification needs an NLI model: no label in the model's label2id starts "
                             f"with 'entail' (labels: {sorted(label2id(self.model.config))})")
        return {**params, "candidate_labels": labels}

    def preprocess(self, item: str, *, candidate_labels: list[str] = (), hypothesis_template: str = "",
                   **_: Any) -> list[dict[str, Any]]:
        # the hypothesis stays whole; only the text is cut when the pair is too long
        return [dict(self.tokenize(item, hypothesis_template.format(label), truncation="only_first"))
                for label in candidate_labels]

    def postprocess(self, item: str, outputs: list[Mapping[str, np.ndarray]], *, candidate_labels: list[str] = (),
                    multi_label: bool = False, **_: Any) -> dict[str, Any]:
        logits = np.stack([np.asarray(o["logits"], np.float32) for o in outputs])  # [labels, nli classes]
        entail = self.entailment_id
        if multi_label or len(candidate_labels) == 1:
            contradiction = -1 if entail == 0 else 0
            pair = logits[..., [contradiction, entail]]
            scores = (np.exp(pair) / np.exp(pair).sum(-1, keepdims=True))[..., 1]
        else:
            scores = np.exp(logits[..., entail]) / np.exp(logits[..., entail]).sum(-1, keepdims=True)
        order = list(reversed(scores.argsort()))  # Transformers' order, ties included
        return {"sequence": item, "labels": [candidate_labels[i] for i in order], "scores": scores[order].tolist()}
