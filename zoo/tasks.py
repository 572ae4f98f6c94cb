"""Task classes beyond causal LM: encoder models with their heads, and decoder sequence classification.

An encoder family module provides, besides the usual ``CONFIG_CLASS``/``HF_PREFIX``/``convert``:

- ``param_specs(cfg)``: the encoder body; ``head_specs(cfg, task)``: the params a task adds
  (``"base"`` gets the pooler where the family has one);
- ``forward_hidden(params, cfg, input_ids, *, attention_mask, token_type_ids, position_ids,
  inputs_embeds) -> [b, t, d]``; ``pooled_output(params, cfg, hidden) -> [b, d] | None``;
- ``task_logits(params, cfg, task, hidden, attention_mask)``;
- ``convert.rules(cfg, specs, task)``, ``convert.BASE_PREFIX`` (``"bert."``: where a task
  checkpoint keeps the body) and ``convert.HEAD_TENSORS`` (names of every task's head, so a
  checkpoint saved for one task loads for another, as in Transformers).

One class per task serves every encoder family (``TASK_CLASSES`` in each family module).
A head the checkpoint lacks (a classifier on a pretrained backbone) starts random, with a
warning, as Transformers does.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp

from zoo.config_utils import ModelConfig
from zoo.conversion import Rule
from zoo.losses import question_answering_loss, sequence_classification_loss, token_classification_loss
from zoo.modeling import PreTrainedModel
from zoo.models import get_family
from zoo.nn.params import ParamSpec, init_params, logical_axes, normal
from zoo.outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

ENCODER_TASKS = ("base", "masked_lm", "sequence_classification", "token_classification", "question_answering")


# ---------------------------------------------------------------- labels (config.json semantics)
def _config_value(cfg: ModelConfig, name: str, default: Any = None) -> Any:
    value = getattr(cfg, name, None)
    return dict(cfg.extra).get(name, default) if value is None else value


def id2label(cfg: ModelConfig) -> dict[int, str]:
    """``id2label`` with int keys; Transformers' LABEL_i names when the config has none."""
    labels = _config_value(cfg, "id2label")
    if labels:
        return {int(k): v for k, v in dict(labels).items()}
    return {i: f"LABEL_{i}" for i in range(int(_config_value(cfg, "num_labels", 2)))}


def label2id(cfg: ModelConfig) -> dict[str, int]:
    labels = _config_value(cfg, "label2id")
    return {k: int(v) for k, v in dict(labels).items()} if labels else {v: k for k, v in id2label(cfg).items()}


def num_labels(cfg: ModelConfig) -> int:
    """``len(id2label)`` when the config has one, else ``num_labels`` (default 2), as Transformers reads it."""
    return len(id2label(cfg))


def problem_type(cfg: ModelConfig) -> str | None:
    return _config_value(cfg, "problem_type")


def _ids(x: Any) -> jax.Array | None:
    return None if x is None else jnp.asarray(x, jnp.int32)


def _check_inputs(input_ids: jax.Array | None, inputs_embeds: Any, attention_mask: Any) -> None:
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    shape = input_ids.shape if input_ids is not None else jnp.shape(inputs_embeds)[:2]
    if len(shape) != 2 or shape[1] == 0:
        raise ValueError(f"inputs must be [batch, seq] with seq >= 1, got shape {tuple(shape)}")
    if attention_mask is not None and tuple(jnp.shape(attention_mask)) != tuple(shape):
        raise ValueError(f"attention_mask shape {tuple(jnp.shape(attention_mask))} does not match inputs {tuple(shape)}")


# ---------------------------------------------------------------- encoders
@functools.partial(jax.jit, static_argnames=("cfg", "task"))
def _encoder_apply(params, cfg, task, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                   labels, start_positions, end_positions):
    family = get_family(cfg.model_type)
    hidden = family.forward_hidden(
        params, cfg, input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
        position_ids=position_ids, inputs_embeds=inputs_embeds,
    )
    if task == "base":
        return BaseModelOutput(last_hidden_state=hidden, pooler_output=family.pooled_output(params, cfg, hidden))
    logits = family.task_logits(params, cfg, task, hidden, attention_mask).astype(jnp.float32)
    if task == "masked_lm":
        loss = None if labels is None else token_classification_loss(logits, labels)
        return MaskedLMOutput(loss=loss, logits=logits)
    if task == "token_classification":
        loss = None if labels is None else token_classification_loss(logits, labels)
        return TokenClassifierOutput(loss=loss, logits=logits)
    if task == "sequence_classification":
        loss = None if labels is None else sequence_classification_loss(logits, labels, problem_type(cfg))
        return SequenceClassifierOutput(loss=loss, logits=logits)
    if task == "question_answering":
        start, end = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start, end, start_positions, end_positions)
        return QuestionAnsweringOutput(loss=loss, start_logits=start, end_logits=end)
    raise ValueError(f"unknown encoder task '{task}'")


class EncoderTaskModel(PreTrainedModel):
    """An encoder family with the head of ``task``; subclasses fix the task."""

    task: ClassVar[str] = "base"

    @classmethod
    def param_specs_for(cls, family: ModuleType, cfg: ModelConfig) -> dict:
        return {**family.param_specs(cfg), **family.head_specs(cfg, cls.task)}

    @classmethod
    def rules_for(cls, family: ModuleType, cfg: ModelConfig, specs: Any) -> list[Rule]:
        return family.convert.rules(cfg, specs, cls.task)

    @classmethod
    def checkpoint_prefixes(cls, family: ModuleType, config: ModelConfig) -> tuple[str, ...]:
        return (family.convert.BASE_PREFIX,)

    @classmethod
    def initializable_params(cls, config: ModelConfig) -> tuple[str, ...]:
        return tuple(get_family(config.model_type).head_specs(config, cls.task))

    @classmethod
    def ignore_tensors(cls, config: ModelConfig) -> tuple[str, ...]:
        return tuple(get_family(config.model_type).convert.HEAD_TENSORS)

    @classmethod
    def from_config(cls, config: ModelConfig, key: jax.Array | int = 0, *, mesh: Any = None,
                    rules: Any = None) -> "EncoderTaskModel":
        return _random_model(cls, config, key, mesh, rules)

    def __call__(self, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None,
                 position_ids: Any = None, *, inputs_embeds: Any = None, labels: Any = None,
                 start_positions: Any = None, end_positions: Any = None) -> Any:
        input_ids = _ids(input_ids)
        _check_inputs(input_ids, inputs_embeds, attention_mask)
        if labels is not None:
            labels = jnp.asarray(labels)
            if jnp.issubdtype(labels.dtype, jnp.integer):
                labels = labels.astype(jnp.int32)
        return _encoder_apply(
            self.params, self.config, self.task, input_ids,
            None if attention_mask is None else jnp.asarray(attention_mask),
            _ids(token_type_ids), _ids(position_ids),
            None if inputs_embeds is None else jnp.asarray(inputs_embeds), labels,
            _ids(start_positions), _ids(end_positions),
        )

    @property
    def id2label(self) -> dict[int, str]:
        return id2label(self.config)

    @property
    def label2id(self) -> dict[str, int]:
        return label2id(self.config)

    @property
    def num_labels(self) -> int:
        return num_labels(self.config)


class EncoderModel(EncoderTaskModel):
    """``model(ids).last_hidden_state`` and ``.pooler_output`` (None where the family has no pooler)."""

    task = "base"
    architecture_suffix = "Model"


class EncoderForMaskedLM(EncoderTaskModel):
    task = "masked_lm"
    architecture_suffix = "ForMaskedLM"


class EncoderForSequenceClassification(EncoderTaskModel):
    task = "sequence_classification"
    architecture_suffix = "ForSequenceClassification"


class EncoderForTokenClassification(EncoderTaskModel):
    task = "token_classification"
    architecture_suffix = "ForTokenClassification"


class EncoderForQuestionAnswering(EncoderTaskModel):
    task = "question_answering"
    architecture_suffix = "ForQuestionAnswering"


ENCODER_TASK_CLASSES: dict[str, type[EncoderTaskModel]] = {
    "base": EncoderModel,
    "masked_lm": EncoderForMaskedLM,
    "sequence_classification": EncoderForSequenceClassification,
    "token_classification": EncoderForTokenClassification,
    "question_answering": EncoderForQuestionAnswering,
}


def _random_model(cls: type[PreTrainedModel], config: ModelConfig, key: Any, mesh: Any, rules: Any) -> Any:
    family = get_family(config.model_type)
    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    specs = cls.param_specs_for(family, config)
    params = init_params(specs, key, config.weight_dtype)
    if mesh is not None:
        from zoo.sharding import shard_params

        params = shard_params(params, logical_axes(specs), mesh, rules)
    return cls(config, params)


# ---------------------------------------------------------------- decoders
def last_non_pad_index(input_ids: jax.Array | None, pad_token_id: int | None, batch: int, seq: int) -> jax.Array:
    """Transformers' rule: the rightmost token that is not ``pad_token_id`` (left or right padding);
    the last position when there is no pad id or only embeddings are given."""
    if pad_token_id is None or input_ids is None:
        return jnp.full((batch,), seq - 1, jnp.int32)
    positions = jnp.arange(seq, dtype=jnp.int32)
    return jnp.argmax(positions * (input_ids != pad_token_id).astype(jnp.int32), axis=-1)


def _pad_id(cfg: ModelConfig) -> int | None:
    pad = _config_value(cfg, "pad_token_id")
    return pad[0] if isinstance(pad, (tuple, list)) else pad


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decoder_seq_cls_apply(params, cfg, input_ids, attention_mask, position_ids, segment_ids, inputs_embeds, labels):
    family = get_family(cfg.model_type)
    hidden, _ = family.forward_hidden(
        params, cfg, input_ids, attention_mask=attention_mask, position_ids=position_ids,
        segment_ids=segment_ids, inputs_embeds=inputs_embeds,
    )
    b, t = hidden.shape[:2]
    last = last_non_pad_index(input_ids, _pad_id(cfg), b, t)
    pooled = hidden[jnp.arange(b), last]  # score only the pooled token: same numbers, t times less work
    logits = jnp.dot(pooled, params["score"]["kernel"].astype(pooled.dtype)).astype(jnp.float32)
    loss = None if labels is None else sequence_classification_loss(logits, labels, problem_type(cfg))
    return SequenceClassifierOutput(loss=loss, logits=logits)


class DecoderForSequenceClassification(PreTrainedModel):
    """Transformers' ``<Family>ForSequenceClassification`` for decoders: the base model plus
    ``score`` (no bias) read at the last non-padding token."""

    drop_params = ("lm_head",)
    architecture_suffix = "ForSequenceClassification"

    @classmethod
    def param_specs_for(cls, family: ModuleType, cfg: ModelConfig) -> dict:
        specs = super().param_specs_for(family, cfg)
        specs["score"] = {"kernel": ParamSpec((cfg.hidden_size, num_labels(cfg)), ("embed", "labels"),
                                              normal(cfg.initializer_range))}
        return specs

    @classmethod
    def rules_for(cls, family: ModuleType, cfg: ModelConfig, specs: Any) -> list[Rule]:
        return family.convert.rules(cfg, specs) + [Rule("score.weight", ("score", "kernel"), split=1)]

    @classmethod
    def ignore_tensors(cls, config: ModelConfig) -> tuple[str, ...]:
        return ("lm_head.",)

    @classmethod
    def initializable_params(cls, config: ModelConfig) -> tuple[str, ...]:
        return ("score",)

    @classmethod
    def from_config(cls, config: ModelConfig, key: jax.Array | int = 0, *, mesh: Any = None,
                    rules: Any = None) -> "DecoderForSequenceClassification":
        return _random_model(cls, config, key, mesh, rules)

    def __call__(self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                 labels: Any = None, *, segment_ids: Any = None, inputs_embeds: Any = None) -> SequenceClassifierOutput:
        input_ids = _ids(input_ids)
        _check_inputs(input_ids, inputs_embeds, attention_mask)
        batch = input_ids.shape[0] if input_ids is not None else jnp.shape(inputs_embeds)[0]
        if _pad_id(self.config) is None and batch != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined (set pad_token_id)")
        if labels is not None:
            labels = jnp.asarray(labels)
            if jnp.issubdtype(labels.dtype, jnp.integer):
                labels = labels.astype(jnp.int32)
        return _decoder_seq_cls_apply(
            self.params, self.config, input_ids, None if attention_mask is None else jnp.asarray(attention_mask),
            _ids(position_ids), segment_ids, inputs_embeds, labels,
        )

    @property
    def id2label(self) -> dict[int, str]:
        return id2label(self.config)

    @property
    def num_labels(self) -> int:
        return num_labels(self.config)


DECODER_TASK_CLASSES: Mapping[str, type[PreTrainedModel]] = {"sequence_classification": DecoderForSequenceClassification}

__all__ = [
    "ENCODER_TASKS", "ENCODER_TASK_CLASSES", "DECODER_TASK_CLASSES", "EncoderTaskModel", "EncoderModel",
    "EncoderForMaskedLM", "EncoderForSequenceClassification", "EncoderForTokenClassification",
    "EncoderForQuestionAnswering", "DecoderForSequenceClassification", "id2label", "label2id", "num_labels",
    "problem_type", "last_non_pad_index",
]
