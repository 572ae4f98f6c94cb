"""``fill-mask``: the most likely tokens for each mask token, scored by the masked-LM softmax.

Output as Transformers': per text a list of ``{"score", "token", "token_str", "sequence"}``
(best first); a text with several masks gets one such list per mask.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from zoo.pipelines.base import Pipeline, softmax


class FillMaskPipeline(Pipeline):
    task = "fill-mask"
    head = "masked_lm"
    defaults = {"top_k": 5, "targets": None, "tokenizer_kwargs": None}
    output_keys = ("logits",)
    token_outputs = ("logits",)

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.tokenizer.mask_token_id is None:
            raise ValueError("fill-mask: the tokenizer defines no mask_token")
        top_k = params["top_k"]
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"fill-mask: top_k must be a positive int, got {top_k!r}")
        targets = params["targets"]
        target_ids = None if targets is None else self.target_ids(targets)
        return {**params, "target_ids": target_ids}

    def target_ids(self, targets: str | list[str]) -> np.ndarray:
        """Vocabulary ids of ``targets``; a word outside the vocabulary stands for its first token,
        as in Transformers (whose de-duplication order, ``list(set(...))``, we keep)."""
        targets = [targets] if isinstance(targets, str) else list(targets)
        vocab = self.tokenizer.get_vocab()
        ids = []
        for target in targets:
            index = vocab.get(target)
            if index is None:
                pieces = self.tokenizer(target, add_special_tokens=False, return_attention_mask=False,
                                        return_token_type_ids=False)["input_ids"]
                if not pieces:
                    continue  # Transformers ignores a target that tokenizes to nothing
                index = pieces[0]
            ids.append(index)
        ids = list(set(ids))
        if not ids:
            raise ValueError("fill-mask: none of the targets is a token or tokenizes to one; pass at least one")
        return np.array(ids)

    def preprocess(self, item: str, *, tokenizer_kwargs: Any = None, **_: Any) -> list[dict[str, Any]]:
        enc = dict(self.tokenize(item, **dict(tokenizer_kwargs or {})))
        if self.tokenizer.mask_token_id not in enc["input_ids"]:
            raise ValueError(f"fill-mask: no mask_token ({self.tokenizer.mask_token}) found in the input {item!r}")
        return [enc]

    def postprocess(self, item: str, outputs: list[Mapping[str, np.ndarray]], *, top_k: int = 5,
                    target_ids: np.ndarray | None = None, **_: Any) -> Any:
        input_ids = np.asarray(outputs[0]["input_ids"])
        if target_ids is not None and target_ids.shape[0] < top_k:
            top_k = target_ids.shape[0]
        masked = np.nonzero(input_ids == self.tokenizer.mask_token_id)[0]
        probs = softmax(outputs[0]["logits"][masked])
        if target_ids is not None:
            probs = probs[..., target_ids]
        single_mask = len(masked) == 1
        pad = self.tokenizer.pad_token_id
        result = []
        for row, position in zip(probs, masked):
            best = np.argsort(-row, kind="stable")[:top_k]
            entries = []
            for p in best.tolist():
                token = int(target_ids[p]) if target_ids is not None else p
                tokens = input_ids.copy()
                tokens[position] = token
                tokens = tokens[tokens != pad]
                # one mask: skip special tokens for a readable sentence; several: keep the other masks
                sequence = self.tokenizer.decode(tokens.tolist(), skip_special_tokens=single_mask)
                entries.append({"score": float(row[p]), "token": token,
                                "token_str": self.tokenizer.decode([token]), "sequence": sequence})
            result.append(entries)
        return result[0] if single_mask else result

    def finish(self, results: list[Any], single: bool, params: Mapping[str, Any]) -> Any:
        # Transformers unwraps a one-element list too
        return results[0] if single or len(results) == 1 else results
