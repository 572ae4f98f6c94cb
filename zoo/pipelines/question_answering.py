"""``question-answering`` (extractive): the best span of the context that answers the question.

Transformers 5 dropped this pipeline; we keep Transformers 4's rule and output. A long context
is cut into windows of ``max_seq_len`` tokens overlapping by ``doc_stride``; in each window the
start and end logits of context tokens (and [CLS]) are softmaxed, a span ``(s, e)`` with
``s <= e < s + max_answer_len`` scores ``p_start[s] * p_end[e]``, and the best spans over all
windows win. Output: ``{"score", "start", "end", "answer"}`` (character offsets into the context,
widened to whole words unless ``align_to_words=False``); a list of them when ``top_k > 1``.
``handle_impossible_answer=True`` adds the empty answer, scored by [CLS].

A tokenizer that pads on the left (``padding_side="left"``, as XLNet's) gets the context first and
the question second, windows cut from the context (``truncation="only_first"``), as Transformers 4
did. Transformers 4 then left every token eligible (its ``p_mask`` was all zeros on that path), so
an answer could be a span of the question mapped onto the context's characters; here, as on the
question-first path, only context tokens (and [CLS] for the empty answer) are eligible.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from zoo.pipelines.base import Pipeline


def select_starts_ends(start: np.ndarray, end: np.ndarray, p_mask: np.ndarray, attention_mask: np.ndarray,
                       min_null_score: float, top_k: int, handle_impossible_answer: bool,
                       max_answer_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Best ``top_k`` spans of one window (Transformers 4's ``select_starts_ends``)."""
    desired = np.abs(np.array(p_mask) - 1) & attention_mask
    undesired = desired == 0
    # tokens outside the context take no part in the softmax
    start = np.where(undesired, -10000.0, start)
    end = np.where(undesired, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0  # [CLS] is the "no answer", never a span
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, desired)
    return starts, ends, scores, min_null_score


def decode_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int,
                 desired: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top spans by ``p_start * p_end`` with ``s <= e < s + max_answer_len``, inside the context."""
    outer = np.matmul(start[..., None], end[:, None])  # [1, t, t]
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        order = [np.argmax(flat)]
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        idx = np.argpartition(-flat, top_k)[0:top_k]
        order = idx[np.argsort(-flat[idx])]
    starts, ends = np.unravel_index(order, candidates.shape)[1:]
    keep = np.isin(starts, desired.nonzero()) & np.isin(ends, desired.nonzero())
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def parse_inputs(args: tuple, kwargs: dict) -> tuple[list[dict], dict]:
    """(examples, remaining kwargs) from ``(question, context)``, ``question=..., context=...``
    (either may be a list), a ``{"question", "context"}`` dict or a list of them."""
    if args:
        if len(args) == 1:
            inputs = args[0]
        elif len(args) == 2 and all(isinstance(a, str) for a in args):
            inputs = [{"question": args[0], "context": args[1]}]
        else:
            inputs = list(args)
    elif "question" in kwargs and "context" in kwargs:
        question, context = kwargs.pop("question"), kwargs.pop("context")
        if isinstance(question, list) and isinstance(context, str):
            inputs = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise ValueError(f"question-answering: {len(question)} questions but {len(context)} contexts")
            inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
        elif isinstance(question, str) and isinstance(context, str):
            inputs = [{"question": question, "context": context}]
        else:
            raise ValueError("question-answering: question and context must be strings or lists of strings")
    else:
        raise ValueError("question-answering needs question=... and context=... (or {'question', 'context'} dicts)")
    if isinstance(inputs, dict):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError("question-answering: pass at least one {'question': ..., 'context': ...}")
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or "question" not in item or "context" not in item:
            raise ValueError(f"question-answering: input {i} must be a dict with 'question' and 'context' keys")
        for key in ("question", "context"):
            if not isinstance(item[key], str) or not item[key].strip():
                raise ValueError(f"question-answering: input {i} has an empty or non-string {key}")
    return list(inputs), kwargs


class QuestionAnsweringPipeline(Pipeline):
    task = "question-answering"
    head = "question_answering"
    defaults = {"top_k": 1, "doc_stride": None, "max_answer_len": 15, "max_seq_len": None, "max_question_len": 64,
                "handle_impossible_answer": False, "align_to_words": True}
    output_keys = ("start_logits", "end_logits")
    token_outputs = ("start_logits", "end_logits")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        examples, kwargs = parse_inputs(args, kwargs)
        results = super().__call__(examples, **kwargs)
        return results[0] if len(results) == 1 else results

    def normalize(self, inputs: Any) -> tuple[list[Any], bool]:
        return list(inputs), False

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in ("top_k", "max_answer_len"):
            value = params[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"question-answering: {name} must be a positive int, got {value!r}")
        max_seq_len = params["max_seq_len"]
        if max_seq_len is None:
            max_seq_len = min(x for x in (self.tokenizer.model_max_length, 384, self.limit) if x)
        elif self.limit and max_seq_len > self.limit:
            raise ValueError(f"question-answering: max_seq_len {max_seq_len} is beyond the model's limit of "
                             f"{self.limit} tokens")
        doc_stride = params["doc_stride"]
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise ValueError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        return {**params, "max_seq_len": max_seq_len, "doc_stride": doc_stride}

    def preprocess(self, item: Mapping[str, str], *, max_seq_len: int = 384, doc_stride: int = 128,
                   **_: Any) -> list[dict[str, Any]]:
        context_index = self.context_index
        first, second = ((item["question"], item["context"]) if context_index == 1
                         else (item["context"], item["question"]))
        enc = self.tokenizer(first, second, truncation="only_second" if context_index == 1 else "only_first",
                             max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True,
                             return_overflowing_tokens=True, return_offsets_mapping=True,
                             return_special_tokens_mask=True)
        windows = []
        for i, ids in enumerate(enc["input_ids"]):
            # 1 marks tokens that cannot be in the answer: all but the context, and [CLS] stays eligible
            p_mask = np.array([s != context_index for s in enc.sequence_ids(i)], np.int64)
            if self.tokenizer.cls_token_id is not None:
                p_mask[np.array(ids) == self.tokenizer.cls_token_id] = 0
            windows.append({"input_ids": ids, "token_type_ids": enc["token_type_ids"][i], "p_mask": p_mask,
                            "encoding": enc.encodings[i]})
        return windows

    @property
    def context_index(self) -> int:
        """Which of the pair is the context: second after the question (tokenizers padding on the
        right), first before it (padding on the left), as Transformers 4 arranged them."""
        return 0 if self.tokenizer.padding_side == "left" else 1

    def postprocess(self, item: Mapping[str, str], outputs: list[Mapping[str, Any]], *, top_k: int = 1,
                    handle_impossible_answer: bool = False, max_answer_len: int = 15, align_to_words: bool = True,
                    **_: Any) -> Any:
        min_null_score = 1000000.0
        answers = []
        for window in outputs:
            n = len(window["input_ids"])
            starts, ends, scores, min_null_score = select_starts_ends(
                window["start_logits"][None], window["end_logits"][None], window["p_mask"][None],
                np.ones((1, n), np.int64), min_null_score, top_k, handle_impossible_answer, max_answer_len)
            for s, e, score in zip(starts, ends, scores):
                start, end = self.char_span(window["encoding"], int(s), int(e), align_to_words, self.context_index)
                answers.append({"score": score.item(), "start": start, "end": end,
                                "answer": item["context"][start:end]})
        if handle_impossible_answer:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers

    @staticmethod
    def char_span(encoding: Any, s: int, e: int, align_to_words: bool, context_index: int = 1) -> tuple[int, int]:
        """Character offsets of tokens ``s..e`` in the context, widened to their words when asked."""
        if align_to_words:
            try:
                start = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=context_index)[0]
                end = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=context_index)[1]
                return start, end
            except Exception:  # tokenizers without words: keep to the token offsets, as Transformers does
                pass
        return encoding.offsets[s][0], encoding.offsets[e][1]
