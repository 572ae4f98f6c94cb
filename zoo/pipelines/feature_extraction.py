"""``feature-extraction``: the last hidden states of every token, ``[1, tokens, hidden]`` per text."""
from __future__ import annotations

from typing import Any

import numpy as np

from zoo.pipelines.base import Pipeline


class FeatureExtractionPipeline(Pipeline):
    task = "feature-extraction"
    head = "base"
    defaults = {"truncation": False, "tokenize_kwargs": None, "return_tensors": False}
    output_keys = ("last_hidden_state",)
    token_outputs = ("last_hidden_state",)

    def preprocess(self, item: str, *, truncation: Any = False, tokenize_kwargs: Any = None,
                   **_: Any) -> list[dict[str, Any]]:
        enc = self.tokenize(item, truncation=truncation, **dict(tokenize_kwargs or {}))
        return [dict(enc)]

    def postprocess(self, item: str, outputs: list[dict[str, np.ndarray]], *, return_tensors: bool = False,
                    **_: Any) -> Any:
        hidden = outputs[0]["last_hidden_state"][None]  # [1, t, d], as Transformers returns per text
        return hidden if return_tensors else hidden.tolist()
