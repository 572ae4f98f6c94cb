"""GenerationConfig: Transformers' generation_config.json as a frozen, hashable dataclass.

Why it is shaped this way:

* The decoding loop is compiled once per configuration, so the config is passed to
  ``jax.jit`` as a *static* argument. That needs a frozen dataclass whose every field is
  hashable: list-valued fields (``eos_token_id``, ``bad_words_ids``, ``suppress_tokens``,
  ``sequence_bias`` ...) are normalised to tuples in ``__post_init__``, and keys we do not
  model are kept as a tuple of ``(key, json_string)`` pairs (``extra``) so nothing in a
  Hub file is lost when we write it back.
* Names and *effective* defaults follow Transformers (``top_k=50``, ``temperature=1.0``,
  ``num_beams=1`` ...). Transformers 5 stores ``None`` for unset fields and fills in
  global defaults at ``generate()`` time; for every field except ``max_length`` "unset"
  and "default" behave identically, so we store the concrete default. ``max_length`` is
  the exception: unset means "20 *new* tokens" while an explicit value is a *total*
  length, so it stays ``None`` and :meth:`GenerationConfig.resolve_lengths` applies the
  rule (``DEFAULT_MAX_NEW_TOKENS = 20``).
* ``to_dict``/``save_pretrained`` write only non-default values (Transformers'
  ``use_diff=True`` convention, sorted keys, 2-space indent) so a file we save loads in
  Transformers with the same meaning, and theirs loads here.
* ``update`` returns ``(new_config, unused_kwargs)`` rather than mutating, because the
  object is a static jit argument; unused kwargs are what ``generate()`` forwards to the
  model, as in Transformers.
* Invalid combinations raise ``ValueError`` at construction (``validate`` runs in
  ``__post_init__``), so a config that reaches the compiled loop is well-formed.
  Sampling-only parameters are checked (and used) only when ``do_sample=True``; with
  ``do_sample=False`` they are ignored, as in Transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

GENERATION_CONFIG_NAME = "generation_config.json"
DEFAULT_MAX_NEW_TOKENS = 20

_FLOAT_FIELDS = (
    "temperature", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "repetition_penalty", "length_penalty",
)


def _to_int_or_tuple(value: Any) -> int | tuple[int, ...] | None:
    if value is None or isinstance(value, (int,)) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    if hasattr(value, "tolist"):  # numpy / torch scalars or arrays
        return _to_int_or_tuple(value.tolist())
    return value  # left for validate() to reject


def _to_tuple_of_tuples(value: Any) -> tuple[tuple[int, ...], ...] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value)
    return value


def _normalise_sequence_bias(value: Any) -> tuple[tuple[tuple[int, ...], float], ...] | None:
    """Transformers accepts ``[[ids, bias], ...]`` (current) or ``{tuple(ids): bias}`` (legacy)."""
    if value is None:
        return None
    items = value.items() if isinstance(value, Mapping) else value
    out = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(
                f"`sequence_bias` must be a list of [token_ids, bias] pairs, got element {item!r}."
            )
        ids, bias = item
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"`sequence_bias` token ids must be a list of ints, got {ids!r}.")
        out.append((tuple(ids), float(bias) if isinstance(bias, (int, float)) else bias))
    return tuple(out)


@dataclass(frozen=True)
class GenerationConfig:
    """Generation parameters with Transformers' names and (effective) defaults.

    Hashable, so it can be a static argument of ``jax.jit``. Build it from a folder with
    :meth:`from_pretrained`, from a dict with :meth:`from_dict`, or directly with keywords
    (lists are accepted and stored as tuples).
    """

    # --- length -------------------------------------------------------------------------
    max_new_tokens: int | None = None
    max_length: int | None = None  # None: DEFAULT_MAX_NEW_TOKENS new tokens (Transformers' rule)
    min_new_tokens: int | None = None
    min_length: int = 0
    early_stopping: bool | str = False  # True, False or "never" (beam search)
    stop_strings: str | tuple[str, ...] | None = None
    # --- strategy -----------------------------------------------------------------------
    do_sample: bool = False
    num_beams: int = 1
    use_cache: bool = True
    cache_implementation: str | None = None  # "static" (default) or "sliding_window" / "rolling"
    # --- logits manipulation ------------------------------------------------------------
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    renormalize_logits: bool = False
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] | None = None
    # --- outputs ------------------------------------------------------------------------
    num_return_sequences: int = 1
    output_scores: bool = False
    output_logits: bool = False
    return_dict_in_generate: bool = False
    # --- special tokens -----------------------------------------------------------------
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    decoder_start_token_id: int | tuple[int, ...] | None = None
    # --- assisted generation ------------------------------------------------------------
    prompt_lookup_num_tokens: int | None = None
    num_assistant_tokens: int = 20
    # --- everything else from the JSON file, kept verbatim: ((key, json_string), ...) ---
    extra: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        for name in ("eos_token_id", "forced_eos_token_id", "decoder_start_token_id"):
            set_(name, _to_int_or_tuple(getattr(self, name)))
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                set_(name, _to_int_or_tuple(list(v)) if not isinstance(v, int) else (v,))
        set_("bad_words_ids", _to_tuple_of_tuples(self.bad_words_ids))
        set_("sequence_bias", _normalise_sequence_bias(self.sequence_bias))
        if isinstance(self.stop_strings, list):
            set_("stop_strings", tuple(self.stop_strings))
        for name in _FLOAT_FIELDS:  # JSON may hold ints (e.g. "temperature": 1)
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                set_(name, float(v))
        if isinstance(self.extra, Mapping):
            set_("extra", tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in self.extra.items())))
        else:
            set_("extra", tuple(sorted((str(k), str(v)) for k, v in self.extra)))
        self.validate()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_dict(cls, config_dict: Mapping[str, Any], **kwargs: Any) -> "GenerationConfig":
        """Build from a generation_config.json-style dict; unknown keys go to ``extra``."""
        merged = {**config_dict, **kwargs}
        known = set(cls.field_names())
        fields = {k: v for k, v in merged.items() if k in known}
        extra = {k: v for k, v in merged.items() if k not in known and k != "extra"}
        return cls(**fields, extra=extra)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> "GenerationConfig":
        """Read ``folder/generation_config.json``; a missing file gives the defaults.

        ``folder`` may also be a Hub repo id (resolved through ``zoo.hub`` when available).
        ``kwargs`` override values from the file.
        """
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            try:  # a repo id: resolve to local files (honours HF_HUB_OFFLINE and the cache)
                from zoo import hub  # lazy: hub is a sibling layer, keep import cost off the hot path

                folder = os.fspath(hub.resolve_folder(folder, allow_patterns=(GENERATION_CONFIG_NAME,)))
            except Exception as e:  # noqa: BLE001
                raise OSError(f"{folder!r} is neither a folder nor a resolvable repo id: {e}") from e
        path = os.path.join(folder, GENERATION_CONFIG_NAME)
        if not os.path.isfile(path):
            return cls.from_dict({}, **kwargs)
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise OSError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data, **kwargs)

    def __repr__(self) -> str:
        return f"GenerationConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    # ------------------------------------------------------------------ serialisation
    @property
    def extras(self) -> dict[str, Any]:
        """The keys we do not model (e.g. ``transformers_version``), decoded from JSON."""
        return {k: json.loads(v) for k, v in self.extra}

    def to_dict(self, use_diff: bool = True) -> dict[str, Any]:
        """JSON-ready dict. ``use_diff=True`` (default) keeps only non-default values,
        like Transformers' ``to_diff_dict``; tuples become lists; extras are written back."""
        default = _DEFAULT if use_diff else None
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if default is not None and value == getattr(default, name):
                continue
            out[name] = _jsonable(name, value)
        for k, v in self.extra:
            out[k] = json.loads(v)
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(use_diff=use_diff), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        """Write ``folder/generation_config.json`` (created if needed); returns the path."""
        self.validate()
        folder = os.fspath(folder)
        if os.path.isfile(folder):
            raise ValueError(f"{folder!r} is a file; save_pretrained expects a folder")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, GENERATION_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    # ------------------------------------------------------------------ functional update
    def update(self, **kwargs: Any) -> tuple["GenerationConfig", dict[str, Any]]:
        """Return ``(new_config, unused_kwargs)``.

        Keys naming a field (or an existing extra key) are applied to a copy; the rest are
        returned untouched, as Transformers' ``generate()`` forwards them to the model.
        The new config is validated.
        """
        known = set(self.field_names())
        extras = dict(self.extra)
        changes, unused = {}, {}
        for k, v in kwargs.items():
            if k in known:
                changes[k] = v
            elif k in extras:
                extras[k] = json.dumps(v, sort_keys=True)
            else:
                unused[k] = v
        new = dataclasses.replace(self, **changes, extra=tuple(sorted(extras.items())))
        return new, unused

    # ------------------------------------------------------------------ derived values
    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """``eos_token_id`` as a (possibly empty) tuple."""
        e = self.eos_token_id
        return () if e is None else ((e,) if isinstance(e, int) else tuple(e))

    @property
    def is_sampling(self) -> bool:
        return bool(self.do_sample)

    @property
    def is_beam_search(self) -> bool:
        return self.num_beams > 1

    def resolve_lengths(self, prompt_len: int) -> tuple[int, int]:
        """``(max_length, min_length)`` as total lengths for a prompt of ``prompt_len`` tokens.

        Transformers' rule (``_prepare_generated_length``): ``max_new_tokens`` wins over
        ``max_length``; with neither set, ``DEFAULT_MAX_NEW_TOKENS`` new tokens.
        ``min_new_tokens`` wins over ``min_length``.
        """
        if self.max_new_tokens is not None:
            max_length = prompt_len + self.max_new_tokens
        elif self.max_length is not None:
            max_length = self.max_length
        else:
            max_length = prompt_len + DEFAULT_MAX_NEW_TOKENS
        if self.min_new_tokens is not None:
            min_length = prompt_len + self.min_new_tokens
        else:
            min_length = self.min_length
        return max_length, min_length

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for an invalid configuration."""
        errors: list[str] = []

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        # lengths
        if self.max_new_tokens is not None and (not is_int(self.max_new_tokens) or self.max_new_tokens <= 0):
            errors.append(f"`max_new_tokens` must be a positive integer, but is {self.max_new_tokens!r}.")
        if self.max_length is not None and (not is_int(self.max_length) or self.max_length <= 0):
            errors.append(f"`max_length` must be a positive integer, but is {self.max_length!r}.")
        if not is_int(self.min_length) or self.min_length < 0:
            errors.append(f"`min_length` must be a non-negative integer, but is {self.min_length!r}.")
        if self.min_new_tokens is not None and (not is_int(self.min_new_tokens) or self.min_new_tokens < 0):
            errors.append(f"`min_new_tokens` must be a non-negative integer, but is {self.min_new_tokens!r}.")
        if self.cache_implementation is not None and not isinstance(self.cache_implementation, str):
            errors.append(f"`cache_implementation` must be a string, but is {self.cache_implementation!r}.")
        if self.early_stopping not in (True, False, "never"):
            errors.append(f"`early_stopping` must be True, False or 'never', but is {self.early_stopping!r}.")
        if self.stop_strings is not None:
            ss = (self.stop_strings,) if isinstance(self.stop_strings, str) else self.stop_strings
            if not isinstance(ss, tuple) or not ss or not all(isinstance(s, str) and s for s in ss):
                errors.append(f"`stop_strings` must be a non-empty string or list of them, but is {self.stop_strings!r}.")

        # strategy
        if not is_int(self.num_beams) or self.num_beams < 1:
            errors.append(f"`num_beams` must be a positive integer, but is {self.num_beams!r}.")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            errors.append(f"`num_return_sequences` must be a positive integer, but is {self.num_return_sequences!r}.")
        elif self.num_return_sequences > 1 and is_int(self.num_beams):
            if self.num_beams == 1 and not self.do_sample:
                errors.append(
                    "Greedy decoding (do_sample=False, num_beams=1) cannot return several sequences; "
                    f"got num_return_sequences={self.num_return_sequences}. Set do_sample=True or num_beams>1."
                )
            elif self.num_beams > 1 and self.num_return_sequences > self.num_beams:
                errors.append(
                    f"`num_return_sequences` ({self.num_return_sequences}) must be <= `num_beams` ({self.num_beams})."
                )

        # sampling-only parameters: checked only when they are used
        if self.do_sample:
            if not is_num(self.temperature) or not self.temperature > 0:
                errors.append(
                    f"`temperature` must be a strictly positive float when do_sample=True, but is {self.temperature!r}."
                    " For greedy decoding set do_sample=False."
                )
            if not is_int(self.top_k) or self.top_k < 0:
                errors.append(f"`top_k` must be a non-negative integer (0 disables it), but is {self.top_k!r}.")
            if not is_num(self.top_p) or not 0.0 < self.top_p <= 1.0:
                errors.append(f"`top_p` must be in (0, 1], but is {self.top_p!r}.")
            if self.min_p is not None and (not is_num(self.min_p) or not 0.0 <= self.min_p <= 1.0):
                errors.append(f"`min_p` must be in [0, 1], but is {self.min_p!r}.")
            if not is_num(self.typical_p) or not 0.0 < self.typical_p <= 1.0:
                errors.append(f"`typical_p` must be in (0, 1], but is {self.typical_p!r}.")
            for name in ("epsilon_cutoff", "eta_cutoff"):
                v = getattr(self, name)
                if not is_num(v) or not 0.0 <= v < 1.0:
                    errors.append(f"`{name}` must be in [0, 1) (0 disables it), but is {v!r}.")

        # processors used in every mode
        if not is_num(self.repetition_penalty) or not self.repetition_penalty > 0:
            errors.append(f"`repetition_penalty` must be a strictly positive float, but is {self.repetition_penalty!r}.")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            errors.append(f"`no_repeat_ngram_size` must be a non-negative integer, but is {self.no_repeat_ngram_size!r}.")
        if self.bad_words_ids is not None:
            b = self.bad_words_ids
            if (not isinstance(b, tuple) or not b
                    or not all(isinstance(s, tuple) and s and all(is_int(t) and t >= 0 for t in s) for s in b)):
                errors.append(f"`bad_words_ids` must be a non-empty list of non-empty lists of token ids, but is {b!r}.")
        if self.sequence_bias is not None:
            sb = self.sequence_bias
            if not sb or not all(
                ids and all(is_int(t) and t >= 0 for t in ids) and isinstance(bias, float) for ids, bias in sb
            ):
                errors.append(f"`sequence_bias` must be a non-empty list of [token_ids, float_bias] pairs, but is {sb!r}.")
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, tuple) and all(is_int(t) and t >= 0 for t in v)):
                errors.append(f"`{name}` must be a list of token ids, but is {v!r}.")
        for name in ("eos_token_id", "forced_eos_token_id", "decoder_start_token_id"):
            v = getattr(self, name)
            ids = (v,) if is_int(v) else v
            if v is not None and not (isinstance(ids, tuple) and ids and all(is_int(t) and t >= 0 for t in ids)):
                errors.append(f"`{name}` must be a non-negative int or a non-empty list of them, but is {v!r}.")
        for name in ("pad_token_id", "bos_token_id", "forced_bos_token_id"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 0):
                errors.append(f"`{name}` must be a non-negative integer, but is {v!r}.")
        if self.suppress_tokens:
            suppressed = set(self.suppress_tokens)
            for name in ("forced_bos_token_id", "forced_eos_token_id"):
                v = getattr(self, name)
                if v is None:
                    continue
                forced = {v} if is_int(v) else set(v) if isinstance(v, tuple) else set()
                if forced and forced <= suppressed:
                    errors.append(
                        f"Every token in `{name}` ({sorted(forced)}) is also in `suppress_tokens`; the forcing step "
                        "would have all logits at -inf."
                    )
        if errors:
            raise ValueError("Invalid GenerationConfig:\n  - " + "\n  - ".join(errors))


def _jsonable(name: str, value: Any) -> Any:
    if name == "sequence_bias" and value is not None:
        return [[list(ids), bias] for ids, bias in value]
    if name == "bad_words_ids" and value is not None:
        return [list(s) for s in value]
    if isinstance(value, tuple):
        return list(value)
    return value


_DEFAULT = GenerationConfig()
