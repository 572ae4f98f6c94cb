"""Model families. ``FAMILIES`` maps an HF ``model_type`` to the module that implements it.

Modules are imported on first use, so ``import zoo`` stays fast and one broken
family never blocks the others.
"""
from __future__ import annotations

import importlib
from types import ModuleType

FAMILIES: dict[str, str] = {
    "llama": "zoo.models.llama",
    "mistral": "zoo.models.mistral",
    "qwen2": "zoo.models.qwen2",
    "qwen3": "zoo.models.qwen3",
    "bert": "zoo.models.bert",
    "roberta": "zoo.models.roberta",
    "xlm-roberta": "zoo.models.xlm_roberta",
    "distilbert": "zoo.models.distilbert",
    "modernbert": "zoo.models.modernbert",
    "gpt2": "zoo.models.gpt2",
    "gpt_neox": "zoo.models.gpt_neox",
    "mixtral": "zoo.models.mixtral",
    "qwen3_moe": "zoo.models.qwen3_moe",
    "gemma": "zoo.models.gemma",
    "gemma2": "zoo.models.gemma2",
    "gemma3_text": "zoo.models.gemma3",
    "olmo2": "zoo.models.olmo2",
    "phi3": "zoo.models.phi3",
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def get_family(model_type: str) -> ModuleType:
    try:
        path = FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported model_type '{model_type}'; the zoo supports: {', '.join(supported_model_types())}"
        ) from None
    return importlib.import_module(path)


def __getattr__(name: str) -> ModuleType:
    if name in FAMILIES:
        return get_family(name)
    raise AttributeError(name)
