"""``text-classification`` (alias ``sentiment-analysis``): label scores for a text or a text pair.

Output as Transformers': without ``top_k`` the best ``{"label", "score"}`` (a one-text call
wraps it in a list); with ``top_k`` (``None``: every label) a list of them, best first.
``function_to_apply``: ``"sigmoid"``, ``"softmax"``, ``"none"``; by default the checkpoint's
``problem_type`` / ``num_labels`` decide, as in Transformers.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from zoo.pipelines.base import Pipeline, sigmoid, softmax
from zoo.tasks import id2label, num_labels, problem_type

FUNCTIONS = ("sigmoid", "softmax", "none")
_UNSET = ""  # Transformers' sentinel for "top_k not given" (the legacy single-label output)


def default_function(config: Any) -> str:
    kind = problem_type(config)
    if kind == "regression":
        return "none"
    if kind == "multi_label_classification" or num_labels(config) == 1:
        return "sigmoid"
    return "softmax"


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    if function == "sigmoid":
        return sigmoid(logits)
    if function == "softmax":
        return softmax(logits)
    return logits


class TextClassificationPipeline(Pipeline):
    task = "text-classification"
    head = "sequence_classification"
    defaults = {"top_k": _UNSET, "function_to_apply": None, "truncation": False, "max_length": None}
    output_keys = ("logits",)

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        result = super().__call__(inputs, **kwargs)
        # Transformers wraps a one-text result in a list unless this call passed top_k
        return [result] if isinstance(inputs, str) and "top_k" not in kwargs else result

    def normalize(self, inputs: Any) -> tuple[list[Any], bool]:
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{self.task} expects a text, a {{'text', 'text_pair'}} dict or a list of them, got "
                             f"{type(inputs).__name__}")
        if not items:
            raise ValueError(f"{self.task}: empty input (an empty list); pass at least one text")
        for i, item in enumerate(items):
            texts = [item] if isinstance(item, str) else None
            if isinstance(item, dict):
                if "text" not in item or set(item) - {"text", "text_pair"}:
                    raise ValueError(f"{self.task}: input {i} must be a dict with 'text' and optionally 'text_pair' "
                                     f"keys, got keys {sorted(item)}")
                texts = [item["text"], item.get("text_pair", "x")]
            if texts is None:
                raise ValueError(f"{self.task}: input {i} is a {type(item).__name__}; to classify a text pair pass "
                                 "{'text': ..., 'text_pair': ...}")
            for text in texts:
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{self.task}: input {i} has an empty or non-string text")
        return list(items), single

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        function = params["function_to_apply"]
        if function is None:
            function = default_function(self.model.config)
        function = str(getattr(function, "value", function)).lower()  # Transformers' enum or its name
        if function not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {FUNCTIONS}, got {params['function_to_apply']!r}")
        top_k = params["top_k"]
        if top_k is not None and top_k != _UNSET and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None (every label), got {top_k!r}")
        return {**params, "function_to_apply": function}

    def preprocess(self, item: Any, *, truncation: Any = False, max_length: int | None = None,
                   **_: Any) -> list[dict[str, Any]]:
        text, pair = (item["text"], item.get("text_pair")) if isinstance(item, dict) else (item, None)
        kwargs = {} if max_length is None else {"max_length": max_length}
        return [dict(self.tokenize(text, pair, truncation=truncation, **kwargs))]

    def postprocess(self, item: Any, outputs: list[Mapping[str, np.ndarray]], *, top_k: Any = _UNSET,
                    function_to_apply: str = "softmax", **_: Any) -> Any:
        scores = apply_function(np.asarray(outputs[0]["logits"], np.float32), function_to_apply)
        labels = id2label(self.model.config)
        if top_k == _UNSET:
            return {"label": labels[int(scores.argmax())], "score": float(scores.max())}
        ranked = [{"label": labels[i], "score": float(s)} for i, s in enumerate(scores)]
        ranked.sort(key=lambda x: x["score"], reverse=True)
        return ranked if top_k is None else ranked[:top_k]
