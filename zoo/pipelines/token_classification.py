"""``token-classification`` (alias ``ner``): a label per token, or per entity once grouped.

Output as Transformers': with ``aggregation_strategy="none"`` one ``{"entity", "score", "index",
"word", "start", "end"}`` per non-special token; with ``"simple"``, ``"first"``, ``"average"``,
``"max"`` one ``{"entity_group", "score", "word", "start", "end"}`` per entity. Labels in
``ignore_labels`` (default ``["O"]``) are dropped. ``stride=N`` runs a long text in overlapping
windows of the tokenizer's length and merges the entities.

``is_split_into_words=True`` takes pre-split words: a list of words, or a list of such lists. The
words are tokenized as words (no further splitting on spaces), and ``start``/``end`` index the
sentence ``delimiter.join(words)`` (``delimiter`` defaults to a space), as Transformers does; like
Transformers, one list of words gives a list holding one result.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from zoo.pipelines.base import Pipeline, softmax
from zoo.tasks import id2label

STRATEGIES = ("none", "simple", "first", "average", "max")
WORD_STRATEGIES = ("first", "average", "max")


def split_tag(entity: str) -> tuple[str, str]:
    """BIO prefix and tag: ``B-PER`` -> (B, PER); a label without prefix counts as inside."""
    if entity.startswith("B-"):
        return "B", entity[2:]
    if entity.startswith("I-"):
        return "I", entity[2:]
    return "I", entity


def merge_overlapping(entities: list[dict]) -> list[dict]:
    """Entities from overlapping windows: of those that overlap keep the longest (then the best scored)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    merged, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged


def word_starts(words: list[str], delimiter: str) -> list[int]:
    """Where each word starts in ``delimiter.join(words)``."""
    starts, at = [], 0
    for word in words:
        starts.append(at)
        at += len(word) + len(delimiter)
    return starts


class TokenClassificationPipeline(Pipeline):
    task = "token-classification"
    head = "token_classification"
    defaults = {"aggregation_strategy": "none", "ignore_labels": None, "stride": None, "truncation": False,
                "is_split_into_words": False, "delimiter": None}
    output_keys = ("logits",)
    token_outputs = ("logits",)

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        strategy = params["aggregation_strategy"]
        strategy = "none" if strategy is None else str(getattr(strategy, "value", strategy)).lower()
        if strategy not in STRATEGIES:
            raise ValueError(f"aggregation_strategy must be one of {STRATEGIES}, got {params['aggregation_strategy']!r}")
        stride = params["stride"]
        if stride is not None:
            window = self.window
            if not isinstance(stride, int) or stride < 0 or stride >= window:
                raise ValueError(f"stride must be an int in [0, {window}) (the window is the model's limit, {window} "
                                 f"tokens), got {stride!r}")
            if strategy == "none":
                raise ValueError("stride runs the whole text in windows, which needs an aggregation_strategy other "
                                 "than 'none' to merge them")
        ignore = params["ignore_labels"]
        delimiter = " " if params["delimiter"] is None else params["delimiter"]
        if not isinstance(delimiter, str):
            raise ValueError(f"delimiter must be a string, got {type(delimiter).__name__}")
        return {**params, "aggregation_strategy": strategy, "ignore_labels": ["O"] if ignore is None else list(ignore),
                "is_split_into_words": bool(params["is_split_into_words"]), "delimiter": delimiter}

    def normalize_for(self, inputs: Any, params: Mapping[str, Any]) -> tuple[list[Any], bool]:
        if not params["is_split_into_words"]:
            return self.normalize(inputs)
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(w, str) for w in inputs):
            items = [list(inputs)]  # one sentence of words; still answered as a list of one, as Transformers does
        elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, (list, tuple)) for x in inputs):
            items = [list(x) for x in inputs]
        else:
            got = "an empty list" if isinstance(inputs, (list, tuple)) else f"a {type(inputs).__name__}"
            raise ValueError(f"{self.task}: with is_split_into_words=True pass a list of words or a list of word "
                             f"lists, got {got}")
        for i, words in enumerate(items):
            if not words or not all(isinstance(w, str) for w in words):
                raise ValueError(f"{self.task}: input {i} must be a non-empty list of word strings")
            if not any(w.strip() for w in words):
                raise ValueError(f"{self.task}: input {i} has only empty words")
        return items, False

    @property
    def window(self) -> int:
        return int(self.limit or self.tokenizer.model_max_length)

    def preprocess(self, item: str | list[str], *, stride: int | None = None, truncation: Any = False,
                   is_split_into_words: bool = False, delimiter: str = " ", **_: Any) -> list[dict[str, Any]]:
        kwargs = dict(return_special_tokens_mask=True, return_offsets_mapping=True,
                      is_split_into_words=is_split_into_words)
        if stride is None:
            enc = self.tokenize(item, truncation=truncation, **kwargs)
            chunks = [dict(enc)]
        else:
            enc = self.tokenizer(item, truncation=True, max_length=self.window, stride=stride,
                                 return_overflowing_tokens=True, **kwargs)
            keys = [k for k in enc.keys() if k != "overflow_to_sample_mapping"]
            chunks = [{k: enc[k][i] for k in keys} for i in range(len(enc["input_ids"]))]
        if is_split_into_words:
            # the tokenizer gives offsets inside each word; move them into the joined sentence
            starts = word_starts(item, delimiter)
            for i, chunk in enumerate(chunks):
                chunk["offset_mapping"] = [(s + starts[w], e + starts[w]) if w is not None else (s, e)
                                           for (s, e), w in zip(chunk["offset_mapping"], enc.word_ids(i))]
        return chunks

    def postprocess(self, item: str | list[str], outputs: list[Mapping[str, Any]], *,
                    aggregation_strategy: str = "none", ignore_labels: list[str] = ("O",),
                    is_split_into_words: bool = False, delimiter: str = " ", **_: Any) -> list[dict]:
        sentence = delimiter.join(item) if is_split_into_words else item
        entities = []
        for chunk in outputs:
            scores = softmax(np.asarray(chunk["logits"], np.float32))
            pre = self.gather_pre_entities(sentence, chunk, scores)
            grouped = self.aggregate(pre, aggregation_strategy)
            entities.extend(e for e in grouped if e.get("entity") not in ignore_labels
                            and e.get("entity_group") not in ignore_labels)
        return merge_overlapping(entities) if len(outputs) > 1 else entities

    # ---- Transformers' rules, step by step ----
    def gather_pre_entities(self, sentence: str, chunk: Mapping[str, Any], scores: np.ndarray) -> list[dict]:
        """One record per non-special token: its token string, scores, character span and whether it
        continues the previous word (WordPiece ``##``; for other tokenizers: no space before it)."""
        model = self.tokenizer.backend_tokenizer.model
        has_subword_prefix = bool(getattr(model, "continuing_subword_prefix", None))
        unk = self.tokenizer.unk_token_id
        pre = []
        for idx, token_scores in enumerate(scores):
            if chunk["special_tokens_mask"][idx]:
                continue
            token_id = int(chunk["input_ids"][idx])
            word = self.tokenizer.convert_ids_to_tokens(token_id)
            start, end = (int(x) for x in chunk["offset_mapping"][idx])
            word_ref = sentence[start:end]
            if has_subword_prefix:
                is_subword = len(word) != len(word_ref)
            else:
                is_subword = start > 0 and " " not in sentence[start - 1: start + 1]
            if token_id == unk:
                word, is_subword = word_ref, False
            pre.append({"word": word, "scores": token_scores, "start": start, "end": end, "index": idx,
                        "is_subword": is_subword})
        return pre

    def aggregate(self, pre: list[dict], strategy: str) -> list[dict]:
        labels = id2label(self.model.config)
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = p["scores"].argmax()
                entities.append({"entity": labels[int(best)], "score": p["scores"][best], "index": p["index"],
                                 "word": p["word"], "start": p["start"], "end": p["end"]})
        else:
            entities = self.aggregate_words(pre, strategy)
        return entities if strategy == "none" else self.group_entities(entities)

    def aggregate_word(self, tokens: list[dict], strategy: str) -> dict:
        labels = id2label(self.model.config)
        word = self.tokenizer.convert_tokens_to_string([t["word"] for t in tokens])
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = scores.argmax()
        return {"entity": labels[int(best)], "score": scores[best], "word": word, "start": tokens[0]["start"],
                "end": tokens[-1]["end"]}

    def aggregate_words(self, pre: list[dict], strategy: str) -> list[dict]:
        """Tokens of one word get one label (the word-level strategies)."""
        words, group = [], None
        for p in pre:
            if group is None:
                group = [p]
            elif p["is_subword"]:
                group.append(p)
            else:
                words.append(self.aggregate_word(group, strategy))
                group = [p]
        if group is not None:
            words.append(self.aggregate_word(group, strategy))
        return words

    def group_sub_entities(self, entities: list[dict]) -> dict:
        scores = np.nanmean([e["score"] for e in entities])
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1], "score": np.mean(scores),
                "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}

    def group_entities(self, entities: list[dict]) -> list[dict]:
        """Adjacent tokens/words with the same tag join one entity unless the next starts with B-."""
        groups, current = [], []
        for entity in entities:
            if not current:
                current.append(entity)
                continue
            bi, tag = split_tag(entity["entity"])
            _, last_tag = split_tag(current[-1]["entity"])
            if tag == last_tag and bi != "B":
                current.append(entity)
            else:
                groups.append(self.group_sub_entities(current))
                current = [entity]
        if current:
            groups.append(self.group_sub_entities(current))
        return groups
