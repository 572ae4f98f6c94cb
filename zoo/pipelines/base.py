"""The shape every pipeline shares: preprocess on the host, a jitted forward on bucketed
shapes, postprocess on the host.

A task module subclasses :class:`Pipeline` and writes three small functions:
``preprocess(item, **params) -> [features]`` (one item may yield several chunks, e.g. long
contexts), ``forward`` is inherited (features are padded to a length bucket and a batch
bucket, so a new text length rarely means a new compile), and
``postprocess(item, outputs, **params)`` turns the per-chunk arrays (merged with that chunk's
features) into Transformers' output dicts.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

MIN_BUCKET = 8

# Which head (model task) each pipeline needs, and the Transformers class-name suffix of it.
HEAD_SUFFIX = {
    "base": None,
    "masked_lm": "ForMaskedLM",
    "sequence_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
    "question_answering": "ForQuestionAnswering",
    "causal_lm": "ForCausalLM",
}
AUTO_CLASS = {
    "base": "AutoModel",
    "masked_lm": "AutoModelForMaskedLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "question_answering": "AutoModelForQuestionAnswering",
    "causal_lm": "AutoModelForCausalLM",
}


def length_bucket(n: int, limit: int | None) -> int:
    """Powers of two from ``MIN_BUCKET``, never past the model's limit (positions beyond a
    learned table would read garbage)."""
    b = MIN_BUCKET
    while b < n:
        b *= 2
    return min(b, limit) if limit else b


def batch_bucket(n: int, batch_size: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return min(b, max(batch_size, n))


def model_task(model: Any) -> str:
    """The head a zoo model object carries (``"base"``, ``"masked_lm"``, ``"causal_lm"``...)."""
    from zoo.modeling import BaseModel, CausalLM
    from zoo.tasks import DecoderForSequenceClassification, EncoderTaskModel

    if isinstance(model, EncoderTaskModel):
        return model.task
    if isinstance(model, CausalLM):
        return "causal_lm"
    if isinstance(model, DecoderForSequenceClassification):
        return "sequence_classification"
    if isinstance(model, BaseModel):
        return "base"
    raise TypeError(f"model must be a zoo model or a checkpoint folder / repo id, got {type(model).__name__}")


def is_encoder(model: Any) -> bool:
    from zoo.tasks import EncoderTaskModel

    return isinstance(model, EncoderTaskModel)


def position_limit(model: Any) -> int | None:
    """How many tokens the model can take: its position table (RoBERTa's starts after the pad id)."""
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None)
    if limit and getattr(cfg, "positions_from_padding", False):
        limit -= int(cfg.pad_token_id) + 1
    return limit


class Pipeline:
    """Base of every task pipeline; ``pipeline(task, ...)`` builds the right subclass."""

    task: ClassVar[str] = ""
    head: ClassVar[str] = "base"
    # Call-time parameters and their defaults; anything else is refused with the list of these.
    defaults: ClassVar[Mapping[str, Any]] = {}
    output_keys: ClassVar[tuple[str, ...]] = ("logits",)
    token_outputs: ClassVar[tuple[str, ...]] = ()  # outputs with a sequence axis, cut to each text's length
    default_batch_size: ClassVar[int] = 8  # what pipeline(..., batch_size=None) uses

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, **params: Any) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._params = self._check_params(params)

    # ---- parameters ----
    def _check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise TypeError(f"{self.task} pipeline got unknown arguments {unknown}; it accepts: {sorted(self.defaults)}")
        return dict(params)

    def params(self, call_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.defaults, **self._params, **self._check_params(call_kwargs)}

    # ---- the call ----
    def normalize(self, inputs: Any) -> tuple[list[Any], bool]:
        """(items, was a single item). Texts by default."""
        if isinstance(inputs, str):
            items, single = [inputs], True
        elif isinstance(inputs, (list, tuple)):
            items, single = list(inputs), False
        else:
            raise ValueError(f"{self.task} expects a string or a list of strings, got {type(inputs).__name__}")
        if not items:
            raise ValueError(f"{self.task}: empty input (an empty list); pass at least one text")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ValueError(f"{self.task}: input {i} is a {type(item).__name__}, not a string")
            if not item.strip():
                raise ValueError(f"{self.task}: input {i} is an empty string")
        return items, single

    def normalize_for(self, inputs: Any, params: Mapping[str, Any]) -> tuple[list[Any], bool]:
        """:meth:`normalize` for a task whose call parameters change what an input is (hook; e.g.
        token-classification's ``is_split_into_words`` makes a list of strings one input)."""
        return self.normalize(inputs)

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        params = self.params(kwargs)
        items, single = self.normalize_for(inputs, params)
        params = self.prepare(params)
        features = [self.preprocess(item, **params) for item in items]
        flat = [f for chunks in features for f in chunks]
        outputs = self.forward(flat, **params)
        results, k = [], 0
        for item, chunks in zip(items, features):
            # each chunk's outputs come with its features (ids, offsets...), which postprocess often needs
            merged = [{**feature, **output} for feature, output in zip(chunks, outputs[k: k + len(chunks)])]
            results.append(self.postprocess(item, merged, **params))
            k += len(chunks)
        return self.finish(results, single, params)

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check and resolve call parameters once per call (hook)."""
        return params

    def finish(self, results: list[Any], single: bool, params: Mapping[str, Any]) -> Any:
        return results[0] if single else results

    # ---- host side ----
    @property
    def limit(self) -> int | None:
        limits = [position_limit(self.model)]
        mml = getattr(self.tokenizer, "model_max_length", None)
        if mml and mml < 10**9:
            limits.append(int(mml))
        limits = [x for x in limits if x]
        return min(limits) if limits else None

    def tokenize(self, text: Any, text_pair: Any = None, *, truncation: bool | str = False, index: int | None = None,
                 **kwargs: Any) -> Any:
        """Tokenize one text (or pair), refusing text longer than the model's limit unless truncating."""
        limit = self.limit
        if truncation:
            kwargs.setdefault("max_length", limit)
            enc = self.tokenizer(text, text_pair, truncation=truncation, **kwargs)
        else:
            enc = self.tokenizer(text, text_pair, **kwargs)
        ids = enc["input_ids"]
        rows = ids if ids and isinstance(ids[0], list) else [ids]
        for row in rows:
            if limit and len(row) > limit:
                where = "" if index is None else f"input {index}: "
                raise ValueError(f"{self.task}: {where}text is {len(row)} tokens, longer than the model's limit of "
                                 f"{limit}; pass truncation=True to cut it")
            if not row:
                raise ValueError(f"{self.task}: text tokenizes to nothing")
        return enc

    def preprocess(self, item: Any, **params: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def postprocess(self, item: Any, outputs: list[dict[str, np.ndarray]], **params: Any) -> Any:
        raise NotImplementedError

    # ---- device side ----
    def forward(self, features: list[dict[str, Any]], **params: Any) -> list[dict[str, np.ndarray]]:
        """Run the model on padded, bucketed batches; per-token outputs come back cut to each
        feature's own length."""
        out: list[dict[str, np.ndarray]] = []
        for start in range(0, len(features), self.batch_size):
            out.extend(self._run_batch(features[start: start + self.batch_size]))
        return out

    def _run_batch(self, feats: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        lengths = [len(f["input_ids"]) for f in feats]
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        if is_decoder_classifier(self.model):
            # a decoder classifier reads the last token that is not its config's pad id, so padding
            # must use that id; without one, only unpadded rows give the right token
            from zoo.tasks import _pad_id

            pad = _pad_id(self.model.config)
            if pad is None:
                return [row for f in feats for row in self._run_exact(f)]
        t = length_bucket(max(lengths), self.limit)
        b = batch_bucket(len(feats), self.batch_size)
        ids = np.full((b, t), pad, np.int32)
        mask = np.zeros((b, t), np.int32)
        mask[len(feats):, 0] = 1  # filler rows see one token, so nothing divides by zero
        types = np.zeros((b, t), np.int32)
        for i, f in enumerate(feats):
            n = len(f["input_ids"])
            ids[i, :n] = f["input_ids"]
            mask[i, :n] = 1
            if "token_type_ids" in f:
                types[i, :n] = f["token_type_ids"]
        kwargs = {"attention_mask": mask}
        if is_encoder(self.model) and any("token_type_ids" in f for f in feats):
            kwargs["token_type_ids"] = types
        result = self.model(ids, **kwargs)
        arrays = {k: np.asarray(getattr(result, k), np.float32) for k in self.output_keys}
        rows = []
        for i, n in enumerate(lengths):
            rows.append({k: v[i, :n] if k in self.token_outputs else v[i] for k, v in arrays.items()})
        return rows


    def _run_exact(self, feature: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        """One row at its own length (no padding)."""
        ids = np.asarray([feature["input_ids"]], np.int32)
        result = self.model(ids, attention_mask=np.ones_like(ids))
        arrays = {k: np.asarray(getattr(result, k), np.float32) for k in self.output_keys}
        return [{k: v[0] for k, v in arrays.items()}]


def is_decoder_classifier(model: Any) -> bool:
    from zoo.tasks import DecoderForSequenceClassification

    return isinstance(model, DecoderForSequenceClassification)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def load(task: str, head: str, model: Any, tokenizer: Any, model_kwargs: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """A checkpoint path / repo id, or a ready model object, checked against the head the task needs."""
    import zoo

    if model is None:
        raise ValueError(f"pipeline('{task}') needs model=... (a checkpoint folder or repo id); the zoo has no "
                         "default downloads")
    if isinstance(model, (str, os.PathLike)):
        _check_architecture(task, head, model)
        path = model
        try:
            model = getattr(zoo, AUTO_CLASS[head]).from_pretrained(path, **dict(model_kwargs or {}))
        except ValueError as err:
            if "does not support task" in str(err):
                raise ValueError(f"{task} needs a model with a {HEAD_SUFFIX[head] or 'base'} head: {err}") from None
            raise
        if tokenizer is None:
            tokenizer = path
    else:
        have = model_task(model)
        if head != "base" and have != head:
            raise ValueError(f"{task} needs a model with a {HEAD_SUFFIX[head]} head "
                             f"(zoo.{AUTO_CLASS[head]}); got a {type(model).__name__} ({have})")
        if tokenizer is None:
            raise ValueError(f"pipeline('{task}') with a model object needs tokenizer=... as well")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = zoo.AutoTokenizer.from_pretrained(tokenizer)
    return model, tokenizer


def _check_architecture(task: str, head: str, path: Any) -> None:
    """Refuse a checkpoint saved with another head (e.g. a BertForMaskedLM for text-classification),
    which would otherwise run with a random classifier."""
    suffix = HEAD_SUFFIX[head]
    if suffix is None:
        return
    from zoo.auto import _config_dict

    try:
        archs = _config_dict(path).get("architectures") or []
    except (FileNotFoundError, ValueError):
        return  # the loader reports a missing or broken config itself
    if archs and not any(a.endswith(suffix) for a in archs):
        raise ValueError(f"{task} needs a model with a {suffix} head, but {path} holds {', '.join(archs)}; "
                         f"use a checkpoint fine-tuned for {task} or the matching pipeline")


__all__ = ["Pipeline", "load", "length_bucket", "batch_bucket", "softmax", "sigmoid", "model_task", "is_encoder"]
