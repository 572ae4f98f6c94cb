"""Tokenizers: the Rust ``tokenizers`` library plus the Hub's tokenizer config files.

A Hub tokenizer is three things: ``tokenizer.json`` (the whole pipeline, run by the
Rust library), ``tokenizer_config.json`` (special tokens, ``model_max_length``,
padding side, chat template...) and, in older repos, ``special_tokens_map.json``.
:class:`PreTrainedTokenizer` reads all three and reproduces what Transformers v5's
fast tokenizers return for the same files (Transformers is the oracle in the
tests), without importing Transformers or torch. Everything here runs on the host;
``return_tensors="jax"`` hands arrays to the jitted side.

Chat templates are rendered by :mod:`zoo.chat_template`.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tokenizers import AddedToken, Encoding, Tokenizer, processors

from zoo import chat_template as _ct
from zoo.hub import resolve_folder

__all__ = ["AutoTokenizer", "BatchEncoding", "PreTrainedTokenizer"]

logger = logging.getLogger(__name__)

# Transformers' sentinels: a model_max_length above LARGE_INTEGER means "no limit".
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
EXTRA_CHAT_TEMPLATES_DIR = "additional_chat_templates"
_ALLOW_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "additional_chat_templates/*", "vocab.txt")

# Transformers classes whose model_input_names include token_type_ids (BERT-like); for
# every other class the default output is input_ids + attention_mask.
_TOKEN_TYPE_CLASSES = frozenset({
    "BertTokenizer", "ConvBertTokenizer", "DPRContextEncoderTokenizer", "DPRQuestionEncoderTokenizer",
    "MarkupLMTokenizer", "DebertaTokenizer", "DebertaV2Tokenizer", "FNetTokenizer", "LayoutLMv2Tokenizer",
    "CanineTokenizer", "TapasTokenizer", "LayoutLMTokenizer", "ElectraTokenizer", "SqueezeBertTokenizer",
    "MobileBertTokenizer", "LxmertTokenizer", "FunnelTokenizer", "RetriBertTokenizer",
})
# from_pretrained arguments Transformers accepts that mean nothing here (and must not be saved).
_LOADER_ONLY_KWARGS = ("use_fast", "trust_remote_code", "cache_dir", "local_files_only", "force_download",
                       "subfolder", "_from_auto")
_PADDING = {"longest", "max_length", "do_not_pad"}
_TRUNCATION = {"longest_first", "only_first", "only_second", "do_not_truncate"}
_TENSORS = {"np", "jax"}


# ----------------------------------------------------------------------------- BatchEncoding


class BatchEncoding(dict):
    """Tokenizer output: a dict (``input_ids``, ``attention_mask``, ...) with attribute access.

    Values are Python lists (one sequence, or a list of sequences for a batch) unless
    ``return_tensors`` asked for NumPy or JAX arrays, as in Transformers. The Rust
    encodings are kept for ``tokens()``, ``word_ids()`` and ``sequence_ids()``.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, encodings: list[Encoding] | None = None,
                 tensor_type: str | None = None) -> None:
        super().__init__(data or {})
        self._encodings = encodings
        if tensor_type is not None:
            self.convert_to_tensors(tensor_type)

    def __getattr__(self, item: str) -> Any:
        try:
            return self[item]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no key or attribute {item!r}") from None

    def __getstate__(self) -> dict:
        return {"data": dict(self), "encodings": self._encodings}

    def __setstate__(self, state: dict) -> None:
        self.update(state["data"])
        self._encodings = state["encodings"]

    @property
    def encodings(self) -> list[Encoding] | None:
        """The Rust ``tokenizers.Encoding`` of each sequence (offsets, words, overflow...)."""
        return self._encodings

    def _encoding(self, batch_index: int) -> Encoding:
        if not self._encodings:
            raise ValueError("this BatchEncoding has no Rust encodings to read tokens from")
        return self._encodings[batch_index]

    def tokens(self, batch_index: int = 0) -> list[str]:
        """Token strings of sequence ``batch_index``."""
        return self._encoding(batch_index).tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Index of the word each token came from (None for special tokens)."""
        return self._encoding(batch_index).word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0/1 for tokens of the first/second text of a pair, None for special tokens."""
        return self._encoding(batch_index).sequence_ids

    def convert_to_tensors(self, tensor_type: str | None) -> "BatchEncoding":
        """Turn list values into ``np`` or ``jax`` arrays in place (ragged lists are an error)."""
        if tensor_type is None:
            return self
        if tensor_type not in _TENSORS:
            raise ValueError(f"return_tensors must be None, 'np' or 'jax', got {tensor_type!r}")
        for key, value in list(self.items()):
            if isinstance(value, np.ndarray) or hasattr(value, "device"):
                continue
            try:
                array = np.asarray(value)
                if array.dtype == object:
                    raise ValueError("ragged")
            except ValueError:
                raise ValueError(
                    f"cannot make a tensor of '{key}': the sequences have different lengths. "
                    "Use padding=True (or 'max_length') and/or truncation=True to make them equal."
                ) from None
            if tensor_type == "jax":
                import jax.numpy as jnp

                array = jnp.asarray(array)
            self[key] = array
        return self


# ----------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data


def _as_added_token(value: Any, special: bool = True) -> AddedToken | str | None:
    """A special-token value from a config: a string or an AddedToken dict."""
    if value is None or isinstance(value, (str, AddedToken)):
        return value
    if isinstance(value, Mapping) and "content" in value:
        fields = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in value}
        fields.setdefault("special", special)
        return AddedToken(value["content"], **fields)
    raise ValueError(f"a special token should be a string or an AddedToken dict, got {value!r}")


def _token_to_json(token: AddedToken | str) -> dict | str:
    if isinstance(token, str):
        return token
    return {"__type": "AddedToken", "content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
            "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}


def _to_py(ids: Any) -> Any:
    """Lists of ints from arrays (numpy, jax) and scalars."""
    if hasattr(ids, "tolist"):
        return ids.tolist()
    if isinstance(ids, (list, tuple)):
        return [_to_py(i) for i in ids]
    return ids


def _is_text_input(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, str) or (isinstance(v, (list, tuple)) and all(isinstance(w, str) for w in v))
                   for v in value)
    return False


def _token_property(name: str, doc: str, as_id: bool = False) -> property:
    """A named special token (or its id) that can also be set, as in Transformers:
    ``tok.pad_token = tok.eos_token`` or ``tok.pad_token_id = 0``."""

    def get(self: "PreTrainedTokenizer") -> Any:
        return self._special_id(name) if as_id else self._special_token(name)

    def set_(self: "PreTrainedTokenizer", value: Any) -> None:
        if as_id and value is not None:
            value = self.convert_ids_to_tokens(int(value))
            if value is None:
                raise ValueError(f"{name}_id: no token has this id")
        self.set_special_token(name, value)

    return property(get, set_, doc=doc)


# ----------------------------------------------------------------------------- tokenizer


class PreTrainedTokenizer:
    """A Hub tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) backed by Rust ``tokenizers``.

    Mirrors the Transformers v5 fast tokenizer API, so code written for
    ``transformers.AutoTokenizer`` works unchanged and gives the same ids.
    """

    def __init__(self, tokenizer: Tokenizer, config: Mapping[str, Any] | None = None, *,
                 name_or_path: str = "", **kwargs: Any) -> None:
        """Wrap a ready ``tokenizers.Tokenizer``; ``config`` is the tokenizer_config.json dict
        (special tokens may be given in it or as keyword arguments, which win)."""
        for key in _LOADER_ONLY_KWARGS:
            kwargs.pop(key, None)
        config = {**copy.deepcopy(dict(config or {})), **kwargs}
        self._config = config  # kept whole, so save_pretrained round-trips keys we do not use
        self.name_or_path = str(name_or_path)
        self._tokenizer = tokenizer
        # tokenizer.json may carry a fixed padding/truncation (MiniLM: 128); like Transformers we
        # apply both per call instead.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

        mml = config.get("model_max_length", config.get("max_len"))
        self.model_max_length: int = int(mml) if mml is not None else VERY_LARGE_INTEGER
        self.padding_side: str = config.get("padding_side", "right")
        self.truncation_side: str = config.get("truncation_side", "right")
        for name in ("padding_side", "truncation_side"):
            if getattr(self, name) not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {getattr(self, name)!r}")
        self.clean_up_tokenization_spaces: bool = bool(config.get("clean_up_tokenization_spaces", False))
        self.split_special_tokens: bool = bool(config.get("split_special_tokens", False))
        names = config.get("model_input_names")
        if names is None:
            cls_name = str(config.get("tokenizer_class") or "").removesuffix("Fast")
            names = (["input_ids", "token_type_ids", "attention_mask"] if cls_name in _TOKEN_TYPE_CLASSES
                     else ["input_ids", "attention_mask"])
        self.model_input_names: list[str] = list(names)

        chat_template = config.get("chat_template")
        if isinstance(chat_template, (list, tuple)):
            chat_template = {t["name"]: t["template"] for t in chat_template}
        self.chat_template: str | dict[str, str] | None = chat_template

        # Named special tokens: the standard ones plus model-specific "*_token" keys (image_token...).
        self._special: dict[str, AddedToken | str] = {}
        for key, value in config.items():
            named = key in SPECIAL_TOKENS_ATTRIBUTES or key.endswith("_token")
            if named and (isinstance(value, str) or (isinstance(value, Mapping) and "content" in value)):
                token = _as_added_token(value)
                if token is not None:
                    self._special[key] = token
        extra = config.get("extra_special_tokens", config.get("additional_special_tokens")) or []
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                self._special[key] = _as_added_token(value)
            extra = []
        self._extra_special: list[AddedToken | str] = [_as_added_token(t) for t in extra]

        # Added tokens listed in the config but missing from tokenizer.json, then special tokens
        # that the backend does not know as added tokens yet (as Transformers does).
        added = self._tokenizer.get_added_tokens_decoder()
        known = {t.content for t in added.values()}
        to_add: list[AddedToken] = []
        for _, value in sorted(((int(i), v) for i, v in (config.get("added_tokens_decoder") or {}).items()),
                               key=lambda item: item[0]):
            token = _as_added_token(value, special=False)
            token = token if isinstance(token, AddedToken) else AddedToken(token)
            if token.content not in known:
                to_add.append(token)
                known.add(token.content)
        for token in [*self._special.values(), *self._extra_special]:
            content = str(token) if isinstance(token, str) else token.content
            if content in known:
                continue
            if isinstance(token, str):
                token = AddedToken(token, special=True)
            elif not token.special:
                token = AddedToken(token.content, single_word=token.single_word, lstrip=token.lstrip,
                                   rstrip=token.rstrip, normalized=token.normalized, special=True)
            to_add.append(token)
            known.add(content)
        if to_add:
            self._tokenizer.add_tokens(to_add)

        # add_bos_token/add_eos_token only apply when given explicitly (tokenizer.json's
        # post-processor is authoritative otherwise); no post-processor means plain "$A"/"$A $B".
        self._add_bos = bool(kwargs.get("add_bos_token", False))
        self._add_eos = bool(kwargs.get("add_eos_token", False))
        if "add_bos_token" in kwargs or "add_eos_token" in kwargs or self._tokenizer.post_processor is None:
            self._update_post_processor()

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, repo_or_folder: str | os.PathLike, *, revision: str | None = None,
                        token: str | None = None, **kwargs: Any) -> "PreTrainedTokenizer":
        """Load from a local folder or a Hub repo id.

        Keyword arguments override tokenizer_config.json entries (``padding_side="left"``,
        ``model_max_length=...``, ``pad_token=...``, ``chat_template=...``).
        """
        folder = resolve_folder(repo_or_folder, revision=revision, allow_patterns=_ALLOW_PATTERNS, token=token)
        tokenizer_file = folder / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            if (folder / "tokenizer.model").is_file():
                tokenizer = _convert_sentencepiece(folder)
            else:
                present = sorted(p.name for p in folder.iterdir())
                raise ValueError(
                    f"no {TOKENIZER_FILE} in {folder} (found: {present}). zoo loads tokenizers from the "
                    "`tokenizers` library's tokenizer.json; save one with transformers' "
                    "AutoTokenizer.from_pretrained(...).save_pretrained(folder)."
                )
        else:
            try:
                tokenizer = Tokenizer.from_file(str(tokenizer_file))
            except Exception as err:  # the Rust library raises a bare Exception
                raise ValueError(f"could not read {tokenizer_file}: {err}") from err

        config_file = folder / CONFIG_FILE
        config = _read_json(config_file) if config_file.is_file() else {}
        config.pop("tokenizer_file", None)  # never follow paths from an untrusted config
        if "added_tokens_decoder" not in config and (folder / SPECIAL_TOKENS_MAP_FILE).is_file():
            # Legacy layout: special tokens live in special_tokens_map.json and win over the config.
            for key, value in _read_json(folder / SPECIAL_TOKENS_MAP_FILE).items():
                if key in ("additional_special_tokens", "extra_special_tokens") and isinstance(value, list):
                    existing = list(config.get("extra_special_tokens") or config.get("additional_special_tokens") or [])
                    existing += [v for v in value if v not in existing]
                    config.pop("additional_special_tokens", None)
                    config["extra_special_tokens"] = existing
                else:
                    config[key] = value
        templates: dict[str, str] = {}
        if (folder / CHAT_TEMPLATE_FILE).is_file():
            templates["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        extra_dir = folder / EXTRA_CHAT_TEMPLATES_DIR
        if extra_dir.is_dir():
            for path in sorted(extra_dir.glob("*.jinja")):
                templates[path.stem] = path.read_text(encoding="utf-8")
        if list(templates) == ["default"]:
            config["chat_template"] = templates["default"]
        elif templates:
            config["chat_template"] = templates
        return cls(tokenizer, config, name_or_path=str(repo_or_folder), **kwargs)

    def save_pretrained(self, folder: str | os.PathLike) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json (with the chat template) and
        special_tokens_map.json, in the layout Transformers reads back."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = dict(self._config)
        for key in list(config):
            if key in SPECIAL_TOKENS_ATTRIBUTES or key in ("additional_special_tokens", "extra_special_tokens"):
                config.pop(key)
        config.pop("add_bos_token", None)
        config.pop("add_eos_token", None)
        config.update({k: _token_to_json(v) for k, v in self._special.items()})
        if self._extra_special:
            config["extra_special_tokens"] = [_token_to_json(t) for t in self._extra_special]
        config["added_tokens_decoder"] = {
            str(i): {k: v for k, v in _token_to_json(t).items() if k != "__type"}
            for i, t in sorted(self._tokenizer.get_added_tokens_decoder().items())
        }
        config["model_max_length"] = self.model_max_length
        config["padding_side"] = self.padding_side
        config["truncation_side"] = self.truncation_side
        config["clean_up_tokenization_spaces"] = self.clean_up_tokenization_spaces
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        if isinstance(self.chat_template, Mapping):
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.chat_template.items()]
        elif self.chat_template is not None:
            config["chat_template"] = self.chat_template
        else:
            config.pop("chat_template", None)
        if self._add_bos or self._add_eos:
            config["add_bos_token"], config["add_eos_token"] = self._add_bos, self._add_eos
        special_map = {k: _token_to_json(v) for k, v in self._special.items()}
        if self._extra_special:
            special_map["additional_special_tokens"] = [_token_to_json(t) for t in self._extra_special]

        paths = (folder / TOKENIZER_FILE, folder / CONFIG_FILE, folder / SPECIAL_TOKENS_MAP_FILE)
        self._tokenizer.save(str(paths[0]))
        for path, data in zip(paths[1:], (config, special_map)):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, ensure_ascii=False, sort_keys=True)
                f.write("\n")
        return tuple(str(p) for p in paths)

    # ------------------------------------------------------------------ special tokens

    def _update_post_processor(self) -> None:
        """Rebuild a TemplateProcessing that adds bos/eos as ``add_bos_token``/``add_eos_token`` say."""
        bos, eos = self.bos_token, self.eos_token
        add_bos, add_eos = self._add_bos and bos is not None, self._add_eos and eos is not None
        single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
        pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
        specials = ([(bos, self.bos_token_id)] if add_bos else []) + ([(eos, self.eos_token_id)] if add_eos else [])
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                       special_tokens=specials)

    def _special_token(self, name: str) -> str | None:
        token = self._special.get(name)
        return None if token is None else (token if isinstance(token, str) else token.content)

    def _special_id(self, name: str) -> int | None:
        token = self._special_token(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    bos_token = _token_property("bos_token", "Beginning-of-sequence token.")
    eos_token = _token_property("eos_token", "End-of-sequence token (generation stops on it).")
    unk_token = _token_property("unk_token", "Token for text the vocabulary cannot encode.")
    sep_token = _token_property("sep_token", "Separator between the texts of a pair (BERT).")
    pad_token = _token_property("pad_token", "Padding token; padding needs one.")
    cls_token = _token_property("cls_token", "Classifier token (BERT).")
    mask_token = _token_property("mask_token", "Mask token for masked-language modelling.")
    bos_token_id = _token_property("bos_token", "Id of bos_token.", as_id=True)
    eos_token_id = _token_property("eos_token", "Id of eos_token.", as_id=True)
    unk_token_id = _token_property("unk_token", "Id of unk_token.", as_id=True)
    sep_token_id = _token_property("sep_token", "Id of sep_token.", as_id=True)
    pad_token_id = _token_property("pad_token", "Id of pad_token.", as_id=True)
    cls_token_id = _token_property("cls_token", "Id of cls_token.", as_id=True)
    mask_token_id = _token_property("mask_token", "Id of mask_token.", as_id=True)

    def set_special_token(self, name: str, token: str | AddedToken | None) -> None:
        """Set (or clear) a named special token, adding it to the vocabulary if it is new."""
        if token is None:
            self._special.pop(name, None)
            return
        self._special[name] = token
        content = token if isinstance(token, str) else token.content
        if content not in self.added_tokens_encoder:
            self._tokenizer.add_tokens([AddedToken(content, special=True) if isinstance(token, str) else token])

    @property
    def pad_token_type_id(self) -> int:
        return 0

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens as strings (what chat templates receive as variables)."""
        return {k: (v if isinstance(v, str) else v.content) for k, v in self._special.items()}

    @property
    def extra_special_tokens(self) -> list[str]:
        return [t if isinstance(t, str) else t.content for t in self._extra_special]

    @property
    def all_special_tokens(self) -> list[str]:
        """Named and extra special tokens, unique, in Transformers' order."""
        order = [*SPECIAL_TOKENS_ATTRIBUTES, *(k for k in self._special if k not in SPECIAL_TOKENS_ATTRIBUTES)]
        tokens = [self.special_tokens_map[k] for k in order if k in self._special] + self.extra_special_tokens
        return list(dict.fromkeys(tokens))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self._tokenizer.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    # ------------------------------------------------------------------ vocabulary

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The Rust ``tokenizers.Tokenizer`` (its truncation/padding are set per call)."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens (as Transformers)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the full vocabulary, added tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int] | None:
        """Token string(s) to id(s); unknown tokens map to ``unk_token_id`` (None without one)."""
        if isinstance(tokens, str):
            index = self._tokenizer.token_to_id(tokens)
            return index if index is not None else self.unk_token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False
                              ) -> str | None | list[str | None]:
        ids = _to_py(ids)
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        decoder = self._tokenizer.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    # ------------------------------------------------------------------ encoding

    def _strategies(self, padding: bool | str, truncation: bool | str | None, max_length: int | None,
                    pad_to_multiple_of: int | None) -> tuple[str, str, int | None]:
        """Resolve padding/truncation arguments exactly as Transformers does."""
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool)
                                       or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int or None, got {max_length!r}")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # max_length alone means "truncate to it"
        if padding is True:
            pad = "longest"
        elif padding is False or padding is None:
            pad = "do_not_pad"
        elif isinstance(padding, str) and padding in _PADDING:
            pad = padding
        else:
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if truncation is True:
            trunc = "longest_first"
        elif truncation is False or truncation is None:
            trunc = "do_not_truncate"
        elif isinstance(truncation, str) and truncation in _TRUNCATION:
            trunc = truncation
        else:
            raise ValueError("truncation must be True, False, 'longest_first', 'only_first', 'only_second' or "
                             f"'do_not_truncate', got {truncation!r}")
        if max_length is None:
            if pad == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    pad = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if trunc != "do_not_truncate":
                if self.model_max_length > LARGE_INTEGER:
                    trunc = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        if pad != "do_not_pad" and (self.pad_token is None or self.pad_token_id is None):
            raise ValueError("asked to pad but the tokenizer has no pad_token; set one, e.g. "
                             "tok.set_special_token('pad_token', tok.eos_token)")
        if (trunc != "do_not_truncate" and pad != "do_not_pad" and pad_to_multiple_of is not None
                and max_length is not None and max_length % pad_to_multiple_of != 0):
            raise ValueError(f"truncation length ({max_length}) is not a multiple of "
                             f"pad_to_multiple_of ({pad_to_multiple_of})")
        return pad, trunc, max_length

    def __call__(
        self,
        text: str | Sequence[str] | Sequence[Sequence[str]],
        text_pair: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        split_special_tokens: bool | None = None,
    ) -> BatchEncoding:
        """Tokenize one text, a pair, or a batch (list) of texts/pairs.

        Same arguments and defaults as Transformers: ``max_length`` alone truncates;
        ``padding=True`` pads to the longest in the batch, ``"max_length"`` to
        ``max_length`` (or ``model_max_length``). Returns lists for one text (1-D) or a
        batch (2-D) unless ``return_tensors`` is ``"np"`` or ``"jax"`` (always 2-D).
        """
        if text is None:
            raise ValueError("text must be a string, a list of strings or (with is_split_into_words) a list of words")
        if not _is_text_input(text) or (text_pair is not None and not _is_text_input(text_pair)):
            raise ValueError("text (and text_pair) must be a str, a list of str (a batch) or, with "
                             f"is_split_into_words=True, a list of word lists; got {type(text).__name__}")
        if return_tensors is not None and return_tensors not in _TENSORS:
            raise ValueError(f"return_tensors must be None, 'np' or 'jax', got {return_tensors!r}")
        if padding_side is not None and padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        pad, trunc, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of)

        if is_split_into_words:
            batched = isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], (list, tuple))
        else:
            batched = isinstance(text, (list, tuple))
        if batched:
            if len(text) == 0:
                raise ValueError("cannot tokenize an empty batch (text=[])")
            if isinstance(text_pair, str):
                raise ValueError("for a batch of texts, text_pair must be a list of the same length")
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(f"text has {len(text)} entries but text_pair has {len(text_pair)}")
            inputs = list(zip(text, text_pair)) if text_pair is not None else list(text)
        else:
            inputs = [(text, text_pair)] if text_pair is not None else [text]

        backend = self._tokenizer
        if trunc != "do_not_truncate" and return_overflowing_tokens:
            room = max_length - backend.num_special_tokens_to_add(text_pair is not None)
            if stride >= room:
                raise ValueError(f"stride ({stride}) must be smaller than max_length minus the special tokens "
                                 f"({room}) or overflowing windows would never advance")
        try:
            if trunc != "do_not_truncate":
                backend.enable_truncation(max_length=max_length, stride=stride, strategy=trunc,
                                          direction=self.truncation_side)
            if pad != "do_not_pad":
                backend.enable_padding(length=max_length if pad == "max_length" else None,
                                       direction=padding_side or self.padding_side, pad_id=self.pad_token_id,
                                       pad_token=self.pad_token, pad_type_id=self.pad_token_type_id,
                                       pad_to_multiple_of=pad_to_multiple_of)
            split = self.split_special_tokens if split_special_tokens is None else split_special_tokens
            backend.encode_special_tokens = split
            encodings = backend.encode_batch(inputs, add_special_tokens=add_special_tokens,
                                             is_pretokenized=is_split_into_words)
        except BaseException as err:  # Rust errors arrive as bare Exception, panics as BaseException
            if isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            raise ValueError(f"tokenization failed: {err}") from None
        finally:
            backend.no_truncation()
            backend.no_padding()
            backend.encode_special_tokens = self.split_special_tokens

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        data: dict[str, list] = {"input_ids": []}
        if return_token_type_ids:
            data["token_type_ids"] = []
        if return_attention_mask:
            data["attention_mask"] = []
        if return_special_tokens_mask:
            data["special_tokens_mask"] = []
        if return_offsets_mapping:
            data["offset_mapping"] = []
        if return_length:
            data["length"] = []
        flat: list[Encoding] = []
        sample_map: list[int] = []
        for i, encoding in enumerate(encodings):
            group = [encoding] + (list(encoding.overflowing) if return_overflowing_tokens else [])
            for e in group:
                flat.append(e)
                sample_map.append(i)
                data["input_ids"].append(e.ids)
                if return_token_type_ids:
                    data["token_type_ids"].append(e.type_ids)
                if return_attention_mask:
                    data["attention_mask"].append(e.attention_mask)
                if return_special_tokens_mask:
                    data["special_tokens_mask"].append(e.special_tokens_mask)
                if return_offsets_mapping:
                    data["offset_mapping"].append(e.offsets)
                if return_length:
                    data["length"].append(len(e.ids))
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_map
        if trunc == "do_not_truncate" and any(len(ids) > self.model_max_length for ids in data["input_ids"]):
            logger.warning("a sequence is longer than model_max_length (%d); the model may fail on it",
                           self.model_max_length)
        if not batched and return_tensors is None and not return_overflowing_tokens:
            data = {k: (v[0] if v and isinstance(v[0], list) else v) for k, v in data.items()}
        return BatchEncoding(data, flat, tensor_type=return_tensors)

    def encode(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
               add_special_tokens: bool = True, padding: bool | str = False, truncation: bool | str | None = None,
               max_length: int | None = None, stride: int = 0, return_tensors: str | None = None,
               **kwargs: Any) -> list[int] | Any:
        """Token ids of one text (or pair); same options as ``__call__``."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, stride=stride, return_tensors=return_tensors, **kwargs)["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False,
                 **kwargs: Any) -> list[str]:
        """Token strings of ``text`` (no special tokens unless asked)."""
        return self(text, pair, add_special_tokens=add_special_tokens, **kwargs).tokens()

    # ------------------------------------------------------------------ decoding

    def _decode_one(self, ids: list[int], skip_special_tokens: bool, clean_up: bool | None) -> str:
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"token ids must be ints, got {ids!r}")
        if any(i < 0 for i in ids):
            raise ValueError(f"token ids must be non-negative, got {ids!r}")
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        clean_up = self.clean_up_tokenization_spaces if clean_up is None else clean_up
        # The clean-up was made for WordPiece and corrupts BPE output; Transformers v5 skips it there.
        if clean_up and type(self._tokenizer.model).__name__ != "BPE":
            text = (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
                    .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
                    .replace(" 've", "'ve").replace(" 're", "'re"))
        return text

    def decode(self, token_ids: int | Sequence[int] | Sequence[Sequence[int]] | Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str | list[str]:
        """Ids (list, NumPy/JAX array) to text; a 2-D input decodes each row to a list of strings."""
        ids = _to_py(token_ids)
        if isinstance(ids, Mapping):
            ids = _to_py(ids["input_ids"])
        if isinstance(ids, int):
            ids = [ids]
        if not isinstance(ids, list):
            raise ValueError(f"decode expects token ids (int, list or array), got {type(token_ids).__name__}")
        if ids and isinstance(ids[0], list):
            return [self._decode_one(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in ids]
        return self._decode_one(ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences: Sequence[Sequence[int]] | Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """Decode each sequence of a batch."""
        seqs = _to_py(sequences)
        if isinstance(seqs, Mapping):
            seqs = _to_py(seqs["input_ids"])
        if not isinstance(seqs, list):
            raise ValueError(f"batch_decode expects a list of id sequences, got {type(sequences).__name__}")
        if seqs and not isinstance(seqs[0], list):
            seqs = [seqs]
        return [self._decode_one(s, skip_special_tokens, clean_up_tokenization_spaces) for s in seqs]

    # ------------------------------------------------------------------ chat templates

    def get_chat_template(self, chat_template: str | None = None, tools: Any = None) -> str:
        """The template text ``apply_chat_template`` would use (a name picks one of several)."""
        return _ct.select_chat_template(self.chat_template, chat_template, tools)

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        tools: Sequence[Mapping[str, Any] | Any] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = True,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        **template_kwargs: Any,
    ) -> str | list[str] | list[int] | list[list[int]] | BatchEncoding | Any:
        """Render a conversation (or a batch of them) with the chat template, then tokenize.

        As in Transformers: the template sees ``messages``, ``tools``, ``documents``,
        ``add_generation_prompt``, the special tokens (``bos_token``...) and any extra
        ``template_kwargs``; the rendered text is tokenized with
        ``add_special_tokens=False`` because the template writes them itself.
        Returns the prompt string(s) if ``tokenize=False``; else, as Transformers v5
        does by default, a :class:`BatchEncoding` (``return_dict=False``: the input ids).
        """
        template = self.get_chat_template(chat_template, tools)
        if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
            raise ValueError("cannot apply a chat template to an empty conversation; provide at least one message")
        batched = _ct.is_batched_conversation(conversation) or (
            isinstance(conversation, (list, tuple)) and hasattr(conversation[0], "messages"))
        conversations = list(conversation) if batched else [conversation]
        rendered = _ct.render_chat_template(
            conversations, template, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, **{**self.special_tokens_map, **template_kwargs})
        prompt: str | list[str] = rendered if batched else rendered[0]
        if not tokenize:
            return prompt
        out = self(prompt, padding=padding, truncation=truncation, max_length=max_length, add_special_tokens=False,
                   return_tensors=return_tensors, **dict(tokenizer_kwargs or {}))
        return out if return_dict else out["input_ids"]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
                f"special_tokens={self.special_tokens_map})")


def _convert_sentencepiece(folder: Path) -> Tokenizer:
    """Build a tokenizer.json from a SentencePiece ``tokenizer.model`` with Transformers'
    converter when ``sentencepiece`` and ``transformers`` are installed; otherwise say how."""
    model = folder / "tokenizer.model"
    try:
        import sentencepiece  # noqa: F401
        from transformers import AutoTokenizer as _HFAutoTokenizer
    except ImportError:
        raise ValueError(
            f"{folder} has a SentencePiece {model.name} but no {TOKENIZER_FILE}. zoo reads tokenizer.json only; "
            "convert once with `pip install sentencepiece transformers` and "
            f"`transformers.AutoTokenizer.from_pretrained('{folder}').save_pretrained('{folder}')`, "
            "or install those two packages and zoo will convert it on load."
        ) from None
    try:
        hf = _HFAutoTokenizer.from_pretrained(str(folder))
        return Tokenizer.from_str(hf.backend_tokenizer.to_str())
    except Exception as err:
        raise ValueError(f"could not convert {model} to a tokenizer.json: {err}") from err


class AutoTokenizer:
    """``AutoTokenizer.from_pretrained(repo_or_folder)``: the Transformers entry point."""

    def __init__(self) -> None:
        raise TypeError("use AutoTokenizer.from_pretrained(repo_or_folder)")

    @classmethod
    def from_pretrained(cls, repo_or_folder: str | os.PathLike, **kwargs: Any) -> PreTrainedTokenizer:
        """Load the tokenizer of a Hub repo id or local folder (see PreTrainedTokenizer.from_pretrained)."""
        return PreTrainedTokenizer.from_pretrained(repo_or_folder, **kwargs)

