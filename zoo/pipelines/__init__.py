"""``pipeline(task, model=..., tokenizer=..., batch_size=...)``: raw inputs to Transformers-shaped results.

Each task lives in its own module; this file maps task names (and Transformers' aliases) to
them and loads the model with the head the task needs.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from zoo.pipelines.base import Pipeline, load

# task -> (module, class)
SUPPORTED_TASKS: dict[str, tuple[str, str]] = {
    "feature-extraction": ("feature_extraction", "FeatureExtractionPipeline"),
    "sentence-embedding": ("sentence_embedding", "SentenceEmbeddingPipeline"),
    "fill-mask": ("fill_mask", "FillMaskPipeline"),
    "text-classification": ("text_classification", "TextClassificationPipeline"),
    "token-classification": ("token_classification", "TokenClassificationPipeline"),
    "question-answering": ("question_answering", "QuestionAnsweringPipeline"),
    "zero-shot-classification": ("zero_shot_classification", "ZeroShotClassificationPipeline"),
    "text-generation": ("text_generation", "TextGenerationPipeline"),
}
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}


def pipeline_class(task: str) -> type[Pipeline]:
    if not isinstance(task, str):
        raise ValueError(f"task must be a string; known tasks: {', '.join(sorted(SUPPORTED_TASKS))}")
    name = TASK_ALIASES.get(task, task)
    if name not in SUPPORTED_TASKS:
        known = sorted(SUPPORTED_TASKS) + sorted(TASK_ALIASES)
        raise ValueError(f"unknown task '{task}'; known tasks: {', '.join(known)}")
    module, cls = SUPPORTED_TASKS[name]
    return getattr(importlib.import_module(f"zoo.pipelines.{module}"), cls)


def pipeline(task: str, model: Any = None, tokenizer: Any = None, *, batch_size: int | None = None,
             model_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Pipeline:
    """Build the pipeline for ``task``.

    ``model``: a checkpoint folder / repo id (loaded with the head the task needs; a checkpoint
    saved with another head is refused) or a zoo model object (then ``tokenizer`` is required).
    ``tokenizer``: a folder / repo id or a zoo tokenizer (default: the model's folder).
    ``model_kwargs`` go to ``from_pretrained`` (``dtype``...); other keyword arguments become the
    pipeline's default call parameters (``top_k=3``, ``aggregation_strategy="simple"``...).
    """
    cls = pipeline_class(task)
    source = None
    if isinstance(model, (str, os.PathLike)):
        from zoo.hub import resolve_folder

        source = resolve_folder(model)
    model, tokenizer = load(cls.task, cls.head, model, tokenizer, model_kwargs)
    extra = {"source": source} if cls.task == "sentence-embedding" else {}
    batch_size = cls.default_batch_size if batch_size is None else batch_size
    return cls(model, tokenizer, batch_size=batch_size, **extra, **kwargs)


__all__ = ["pipeline", "pipeline_class", "Pipeline", "SUPPORTED_TASKS", "TASK_ALIASES"]
