"""zoo: a JAX functional model zoo for Hugging Face Hub checkpoints.

Public names are imported lazily, so ``import zoo`` is cheap and a CLI call that
needs only the tokenizer never pays for model code.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AutoConfig": "zoo.auto",
    "AutoModel": "zoo.auto",
    "AutoModelForCausalLM": "zoo.auto",
    "AutoModelForMaskedLM": "zoo.auto",
    "AutoModelForSequenceClassification": "zoo.auto",
    "AutoModelForTokenClassification": "zoo.auto",
    "AutoModelForQuestionAnswering": "zoo.auto",
    "AutoTokenizer": "zoo.tokenization",
    "PreTrainedTokenizer": "zoo.tokenization",
    "GenerationConfig": "zoo.generation",
    "TextStreamer": "zoo.generation",
    "TextIteratorStreamer": "zoo.generation",
    "pipeline": "zoo.pipelines",
    "CausalLM": "zoo.modeling",
    "BaseModel": "zoo.modeling",
    "PreTrainedModel": "zoo.modeling",
    "CheckpointError": "zoo.hub",
    "make_mesh": "zoo.sharding",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in ("models", "nn", "generation", "pipelines", "train", "peft", "sharding", "hub", "cli"):
        return importlib.import_module(f"zoo.{name}")
    raise AttributeError(f"module 'zoo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
