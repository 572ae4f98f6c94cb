"""Auto classes: ``model_type`` -> family -> the class for the task.

A family may provide its own task classes in ``TASK_CLASSES`` (encoders have a
pooler, decoders a causal-LM head); tasks it does not list fall back to the
generic classes in :mod:`zoo.modeling`, when those fit the family.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zoo.config_utils import ModelConfig, read_config_dict
from zoo.hub import resolve_folder
from zoo.models import get_family, supported_model_types

PRESET_DIRS = [Path(__file__).resolve().parent.parent / "configs" / "models"]


def _preset_dirs() -> list[Path]:
    extra = os.environ.get("ZOO_CONFIGS")
    return ([Path(extra)] if extra else []) + PRESET_DIRS


def list_presets() -> list[str]:
    names = set()
    for d in _preset_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


def load_preset(name: str) -> dict[str, Any] | None:
    for d in _preset_dirs():
        path = d / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
    return None


def _config_dict(name_or_path: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    preset = load_preset(str(name_or_path)) if not Path(name_or_path).exists() else None
    if preset is not None:
        return preset
    return read_config_dict(resolve_folder(name_or_path, revision=revision, allow_patterns=["*.json"]))


class AutoConfig:
    """``AutoConfig.from_pretrained("qwen3-0.6b" | folder | repo id)``."""

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, *, revision: str | None = None, **kwargs: Any) -> ModelConfig:
        from zoo.modeling import config_from_dict

        data = _config_dict(name_or_path, revision)
        runtime = {k: kwargs.pop(k) for k in list(kwargs) if k in ("dtype", "scan_layers", "attn_implementation",
                                                                    "param_dtype", "remat_policy")}
        data.update(kwargs)
        return config_from_dict(data, **runtime)

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> ModelConfig:
        return get_family(model_type).CONFIG_CLASS.from_dict({"model_type": model_type, **kwargs})


def task_class(task: str, model_type: str) -> type:
    from zoo import modeling

    family = get_family(model_type)
    own = getattr(family, "TASK_CLASSES", {})
    if task in own:
        return own[task]
    defaults = {"causal_lm": modeling.CausalLM, "base": modeling.BaseModel}
    generic_ok = getattr(family, "GENERIC_TASKS", ("causal_lm", "base"))
    if task in defaults and task in generic_ok:
        return defaults[task]
    supported = sorted(set(own) | {t for t in generic_ok if t in defaults})
    raise ValueError(f"model_type '{model_type}' does not support task '{task}'; it supports: {supported}")


class _AutoModelBase:
    task: str = "base"

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        from zoo.modeling import _check_remote_code

        if kwargs.get("config") is not None:
            model_type = kwargs["config"].model_type
        else:
            data = _config_dict(name_or_path, kwargs.get("revision"))
            _check_remote_code(data, kwargs.get("trust_remote_code", False))
            model_type = data.get("model_type")
            if model_type is None:
                raise ValueError(f"{name_or_path}: config.json has no 'model_type'")
            if model_type not in supported_model_types():
                get_family(model_type)  # raises with the list of supported types
        return task_class(cls.task, model_type).from_pretrained(name_or_path, **kwargs)

    @classmethod
    def from_config(cls, config: ModelConfig, key: Any = 0, **kwargs: Any):
        return task_class(cls.task, config.model_type).from_config(config, key, **kwargs)


class AutoModel(_AutoModelBase):
    task = "base"


class AutoModelForCausalLM(_AutoModelBase):
    task = "causal_lm"


class AutoModelForMaskedLM(_AutoModelBase):
    task = "masked_lm"


class AutoModelForSequenceClassification(_AutoModelBase):
    task = "sequence_classification"


class AutoModelForTokenClassification(_AutoModelBase):
    task = "token_classification"


class AutoModelForQuestionAnswering(_AutoModelBase):
    task = "question_answering"
