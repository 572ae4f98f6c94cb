"""``text-generation``: continue prompts, or chats through the tokenizer's chat template.

Output as Transformers' (v5): per prompt a list of ``{"generated_text": ...}``, one per returned
sequence; for a chat ``generated_text`` is the conversation with the assistant's reply appended
(or the final assistant message continued). ``return_full_text=False`` gives only the new text,
``return_tensors=True`` the token ids. Every other keyword (``max_new_tokens``, ``do_sample``,
``num_beams``, ``num_return_sequences``, ``seed``...) goes to ``model.generate``; as in
Transformers, what neither the call nor the checkpoint's ``generation_config.json`` sets defaults
to ``max_new_tokens=256, do_sample=True, temperature=0.7``. By default prompts are generated one
at a time, as in Transformers; ``batch_size=N`` left-pads N prompts into one ``generate``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from zoo.pipelines.base import Pipeline

PIPELINE_GENERATION_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
SAMPLING_PARAMS = {"temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"}
GENERATE_ONLY = ("seed", "key", "generation_config", "logits_processor", "assistant_model")


class Chat:
    """A conversation given as input (so that a list of messages is one input, not a batch)."""

    def __init__(self, messages: list[Mapping[str, Any]], index: int = 0) -> None:
        for j, message in enumerate(messages):
            if not is_message(message):
                raise ValueError(f"text-generation: chat {index}, message {j} must be a dict with 'role' and "
                                 f"'content' keys, got {message!r}")
        self.messages = list(messages)


def is_message(value: Any) -> bool:
    return isinstance(value, Mapping) and "role" in value and "content" in value


def generation_fields() -> set[str]:
    from zoo.generation import GenerationConfig

    return set(GenerationConfig.field_names()) - {"extra"}


class TextGenerationPipeline(Pipeline):
    task = "text-generation"
    head = "causal_lm"
    default_batch_size = 1
    defaults = {"return_full_text": None, "return_tensors": None, "return_text": None,
                "clean_up_tokenization_spaces": None, "prefix": None, "stop_sequence": None, "truncation": None,
                "max_length": None, "continue_final_message": None, "skip_special_tokens": None,
                "tokenizer_encode_kwargs": None, "tools": None, "documents": None, "add_special_tokens": None}

    def _check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        allowed = set(self.defaults) | generation_fields() | set(GENERATE_ONLY)
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise TypeError(f"text-generation got unknown arguments {unknown}; it accepts {sorted(self.defaults)} "
                            "and generation parameters (see zoo.generation.GenerationConfig)")
        return dict(params)

    def normalize(self, inputs: Any) -> tuple[list[Any], bool]:
        if isinstance(inputs, (list, tuple)) and inputs and is_message(inputs[0]):
            return [Chat(inputs)], True
        if (isinstance(inputs, (list, tuple)) and inputs and all(isinstance(c, (list, tuple)) for c in inputs)
                and all(c and is_message(c[0]) for c in inputs)):
            return [Chat(c, i) for i, c in enumerate(inputs)], False
        if isinstance(inputs, (list, tuple)) and inputs and any(isinstance(x, Mapping) for x in inputs):
            raise ValueError("text-generation: a chat is a list of {'role': ..., 'content': ...} messages; got a list "
                             "mixing other values with dicts")
        return super().normalize(inputs)

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        if params["return_full_text"] is not None and params["return_text"] is not None:
            raise ValueError("return_text is mutually exclusive with return_full_text")
        if params["return_full_text"] is not None and params["return_tensors"] is not None:
            raise ValueError("return_full_text is mutually exclusive with return_tensors")
        if params["return_tensors"]:
            output = "tensors"
        elif params["return_full_text"] is False:
            output = "new_text"
        else:
            output = "full_text"
        return {**params, "_output": output, "_generate": self.generate_kwargs(params)}

    def generate_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The user's generation parameters, plus the pipeline defaults for what neither they nor the
        checkpoint's generation config set (sampling ones only when sampling), as Transformers does."""
        user = {k: v for k, v in params.items() if k not in self.defaults}
        if params["max_length"] is not None:
            user["max_length"] = params["max_length"]
        if params["stop_sequence"] is not None:
            stop = params["stop_sequence"]
            user["stop_strings"] = [stop] if isinstance(stop, str) else list(stop)
        gen = self.model.generation_config
        set_params = {**(gen.to_dict() if hasattr(gen, "to_dict") else dict(gen or {})), **user}
        added = {k: v for k, v in PIPELINE_GENERATION_DEFAULTS.items()
                 if k not in set_params and not (k == "max_new_tokens" and "max_length" in set_params)}
        if self.tokenizer.pad_token_id is not None and "pad_token_id" not in set_params:
            added["pad_token_id"] = self.tokenizer.pad_token_id
        if not {**set_params, **added}.get("do_sample"):
            added = {k: v for k, v in added.items() if k not in SAMPLING_PARAMS}
        return {**user, **added}

    # ---- host: prompt -> ids ----
    def preprocess(self, item: Any, **params: Any) -> list[dict[str, Any]]:
        tokenizer_kwargs = {k: params[k] for k in ("add_special_tokens", "truncation", "max_length")
                            if params[k] is not None}
        tokenizer_kwargs.update(params["tokenizer_encode_kwargs"] or {})
        if isinstance(item, Chat):
            tokenizer_kwargs.pop("add_special_tokens", None)  # the template writes the special tokens
            final = params["continue_final_message"]
            if final is None:
                final = item.messages[-1]["role"] == "assistant"
            enc = self.tokenizer.apply_chat_template(item.messages, add_generation_prompt=not final,
                                                     continue_final_message=final, return_dict=True,
                                                     tools=params["tools"], documents=params["documents"],
                                                     **tokenizer_kwargs)
            ids = list(enc["input_ids"])
            limit = self.limit
            if limit and len(ids) > limit and not tokenizer_kwargs.get("truncation"):
                raise ValueError(f"text-generation: the chat renders to {len(ids)} tokens, longer than the model's "
                                 f"limit of {limit}; shorten it or pass truncation=True")
        else:
            truncation = tokenizer_kwargs.pop("truncation", False)
            ids = list(self.tokenize((params["prefix"] or "") + item, truncation=truncation,
                                     **tokenizer_kwargs)["input_ids"])
        return [{"input_ids": ids}]

    # ---- device: generate ----
    def forward(self, features: list[dict[str, Any]], **params: Any) -> list[dict[str, Any]]:
        kwargs = dict(params["_generate"])
        if "stop_strings" in kwargs:
            kwargs["tokenizer"] = self.tokenizer
        out = []
        for start in range(0, len(features), self.batch_size):
            out.extend(self._generate_batch(features[start: start + self.batch_size], kwargs))
        return out

    def _generate_batch(self, feats: list[dict[str, Any]], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """Prompts left-padded to the longest (as Transformers batches them); each row gets its
        sequences and the padded prompt length, where its new tokens start."""
        width = max(len(f["input_ids"]) for f in feats)
        pad = self.tokenizer.pad_token_id
        if pad is None and len(feats) > 1:
            raise ValueError("text-generation with batch_size > 1 pads prompts, but the tokenizer has no pad_token; "
                             "set one or use batch_size=1")
        ids = np.full((len(feats), width), 0 if pad is None else pad, np.int32)
        mask = np.zeros_like(ids)
        for i, f in enumerate(feats):
            n = len(f["input_ids"])
            ids[i, width - n:] = f["input_ids"]
            mask[i, width - n:] = 1
        sequences = self.model.generate(ids, attention_mask=mask, **kwargs)
        sequences = np.asarray(getattr(sequences, "sequences", sequences))
        per_prompt = sequences.shape[0] // len(feats)
        return [{"sequences": sequences[i * per_prompt: (i + 1) * per_prompt], "prompt_length": width}
                for i in range(len(feats))]

    # ---- host: ids -> Transformers' records ----
    def postprocess(self, item: Any, outputs: list[Mapping[str, Any]], *, _output: str = "full_text",
                    skip_special_tokens: bool | None = None, clean_up_tokenization_spaces: bool | None = None,
                    continue_final_message: bool | None = None, **_: Any) -> list[dict[str, Any]]:
        prompt_len = outputs[0]["prompt_length"]
        skip = True if skip_special_tokens is None else skip_special_tokens
        records = []
        for sequence in outputs[0]["sequences"].tolist():
            if _output == "tensors":
                records.append({"generated_token_ids": sequence})
                continue
            text = self.tokenizer.decode(sequence[prompt_len:], skip_special_tokens=skip,
                                         clean_up_tokenization_spaces=clean_up_tokenization_spaces)
            if _output == "full_text":
                text = self.full_text(item, text, continue_final_message)
            records.append({"generated_text": text})
        return records

    @staticmethod
    def full_text(item: Any, new_text: str, continue_final_message: bool | None) -> Any:
        if isinstance(item, str):
            return item + new_text
        if continue_final_message is None:
            continue_final_message = item.messages[-1]["role"] == "assistant"
        if continue_final_message:
            last = item.messages[-1]
            return item.messages[:-1] + [{"role": last["role"], "content": last["content"] + new_text}]
        return item.messages + [{"role": "assistant", "content": new_text}]
