"""Model outputs: attribute access like Transformers' ModelOutput, and pytrees, so a
jitted or differentiated call can return them."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax


def _register(cls):
    fields = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=fields, meta_fields=[])


class _Output:
    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return [v for v in self.to_tuple()][key]
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@_register
@dataclasses.dataclass
class CausalLMOutput(_Output):
    loss: Any = None
    logits: Any = None
    past_key_values: Any = None
    hidden_states: Any = None
    aux_loss: Any = None
    router_logits: Any = None


@_register
@dataclasses.dataclass
class BaseModelOutput(_Output):
    last_hidden_state: Any = None
    pooler_output: Any = None
    past_key_values: Any = None
    hidden_states: Any = None


@_register
@dataclasses.dataclass
class SequenceClassifierOutput(_Output):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None


@_register
@dataclasses.dataclass
class TokenClassifierOutput(_Output):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None


@_register
@dataclasses.dataclass
class MaskedLMOutput(_Output):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None


@_register
@dataclasses.dataclass
class QuestionAnsweringOutput(_Output):
    loss: Any = None
    start_logits: Any = None
    end_logits: Any = None
    hidden_states: Any = None
