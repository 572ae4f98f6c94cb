"""``sentence-embedding``: one vector per text, pooled and normalised the way the checkpoint's
sentence-transformers files say (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``). Returns a NumPy array: ``[d]`` for a text, ``[n, d]`` for a list.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from zoo.pipelines.base import Pipeline

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_ST_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
            "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
            "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


def read_sentence_transformers_config(folder: str | Path | None) -> dict[str, Any]:
    """Pooling modes, normalisation and max_seq_length from a sentence-transformers checkpoint;
    mean pooling without normalisation when the folder has no such files."""
    spec: dict[str, Any] = {"pooling": ("mean",), "normalize": False, "max_seq_length": None}
    if folder is None or not (Path(folder) / "modules.json").exists():
        return spec
    folder = Path(folder)
    modules = json.loads((folder / "modules.json").read_text())
    modes: list[str] = []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _KNOWN_MODULES:
            raise ValueError(f"sentence-embedding: {folder}/modules.json has a '{module.get('type')}' module; the zoo "
                             f"runs only {', '.join(_KNOWN_MODULES)}")
        if kind == "Pooling":
            cfg = json.loads((folder / module.get("path", "1_Pooling") / "config.json").read_text())
            modes = [m for m in POOLING_MODES if cfg.get(_ST_KEYS[m])]
        elif kind == "Normalize":
            spec["normalize"] = True
    if modes:
        spec["pooling"] = tuple(modes)
    st = folder / "sentence_bert_config.json"
    if st.exists():
        spec["max_seq_length"] = json.loads(st.read_text()).get("max_seq_length")
    return spec


def pool(hidden: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """Pool one text's token states ``[t, d]`` (padding already cut) as sentence-transformers does;
    several modes concatenate in its order."""
    t = hidden.shape[0]
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[0])
        elif mode == "max":
            parts.append(hidden.max(axis=0))
        elif mode == "mean":
            parts.append(hidden.sum(axis=0) / max(t, 1e-9))
        elif mode == "mean_sqrt_len_tokens":
            parts.append(hidden.sum(axis=0) / np.sqrt(t))
        elif mode == "weightedmean":
            w = np.arange(1, t + 1, dtype=hidden.dtype)[:, None]
            parts.append((hidden * w).sum(axis=0) / max(w.sum(), 1e-9))
        elif mode == "lasttoken":
            parts.append(hidden[-1])
        else:
            raise ValueError(f"unknown pooling mode '{mode}'; known: {POOLING_MODES}")
    return np.concatenate(parts)


class SentenceEmbeddingPipeline(Pipeline):
    task = "sentence-embedding"
    head = "base"
    defaults = {"truncation": False, "normalize": None, "pooling": None}
    output_keys = ("last_hidden_state",)
    token_outputs = ("last_hidden_state",)

    def __init__(self, model: Any, tokenizer: Any, *, source: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        self.spec = read_sentence_transformers_config(source)

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        pooling = params["pooling"] if params["pooling"] is not None else self.spec["pooling"]
        pooling = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        bad = [m for m in pooling if m not in POOLING_MODES]
        if bad:
            raise ValueError(f"unknown pooling mode(s) {bad}; known: {POOLING_MODES}")
        normalize = self.spec["normalize"] if params["normalize"] is None else bool(params["normalize"])
        return {**params, "pooling": pooling, "normalize": normalize}

    def preprocess(self, item: str, *, truncation: Any = False, **_: Any) -> list[dict[str, Any]]:
        kwargs = {}
        if truncation and self.spec["max_seq_length"]:
            kwargs["max_length"] = min(x for x in (self.limit, self.spec["max_seq_length"]) if x)
        return [dict(self.tokenize(item, truncation=truncation, **kwargs))]

    def postprocess(self, item: str, outputs: list[Mapping[str, np.ndarray]], *, pooling: tuple[str, ...] = ("mean",),
                    normalize: bool = False, **_: Any) -> np.ndarray:
        vec = pool(outputs[0]["last_hidden_state"], pooling)
        if normalize:
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return vec

    def finish(self, results: list[Any], single: bool, params: Mapping[str, Any]) -> np.ndarray:
        return results[0] if single else np.stack(results)
