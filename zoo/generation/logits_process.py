"""Logits processors as pure JAX functions, composed into one static chain.

Why it is shaped this way:

* The decoding loop is a ``lax.while_loop`` over a **static buffer**: ``input_ids`` is
  always ``[batch, buffer_len]`` (prompt left-padded in ``[0, prompt_len)``, generated
  tokens written at ``cur_len``, anything at ``>= cur_len`` is garbage), and ``cur_len``
  is a traced int32 scalar. So every processor that looks at the sequence masks by
  position (``arange(buffer_len) < cur_len``) instead of slicing, and every "only at step
  t" rule (forced BOS/EOS, begin-suppress, min length) is a ``jnp.where`` on ``cur_len``
  rather than a Python ``if``. Nothing changes shape between steps, so the chain traces
  once.
* What the config decides (which processors exist, their order, ``top_k``, n-gram size,
  banned sequences, vocabulary masks) is static Python built at trace time; what changes
  per call (``cur_len``, prompt length, per-row padding) is traced. Build the chain
  *inside* your jitted function so ``prompt_len``/``prompt_pad_len`` may be tracers and a
  new prompt length does not recompile.
* The order and on/off conditions copy Transformers' ``_get_logits_processor``
  (transformers/generation/utils.py): sequence-dependent processors first, then - only
  when ``do_sample`` - the former "warpers" temperature -> top_k -> top_p -> min_p ->
  typical_p -> epsilon -> eta, and ``renormalize_logits`` last. Greedy and beam search
  therefore ignore sampling parameters, as in Transformers.
* Each processor is also a plain function usable on its own. Logits-only transforms take
  ``(logits, ...)``; sequence-dependent ones take ``(input_ids, cur_len, logits, ...)``.

The signature the decoding loop calls::

    processor = build_logits_processor(gen_config, prompt_len=P, max_length=M,
                                       prompt_pad_len=pad_counts)      # once per generate
    logits = processor(input_ids, cur_len, logits)                     # every step

    input_ids : int  [batch, buffer_len]  tokens; positions < cur_len are valid
    cur_len   : int32 scalar (traced)     number of valid tokens = index the next token goes to
    logits    : float [batch, vocab]      next-token logits (upcast to float32, like HF)
    returns   : float32 [batch, vocab]

For beam search pass rows as ``batch * num_beams`` (and repeat ``prompt_pad_len``), and
feed log-softmaxed scores, as Transformers does.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo.generation.config import GenerationConfig

Array = jax.Array
IntLike = int | Array
LogitsProcessorFn = Callable[[Array, Array, Array], Array]
"""``fn(input_ids [B, L] int, cur_len int32 scalar, logits [B, V]) -> logits [B, V]``."""

_NEG_INF = -jnp.inf


# ----------------------------------------------------------------------------- helpers
def _as_tuple(ids: int | Sequence[int] | None) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, (int, np.integer)):
        return (int(ids),)
    return tuple(int(i) for i in ids)


def _vocab_mask(token_ids: Sequence[int], vocab_size: int) -> np.ndarray:
    """Static bool [V] mask of ``token_ids`` (ids outside the vocab are ignored, like torch.isin)."""
    mask = np.zeros((vocab_size,), dtype=bool)
    ids = np.asarray([t for t in token_ids if 0 <= t < vocab_size], dtype=np.int64)
    mask[ids] = True
    return mask


def _scatter_back(sorted_values: Array, sorted_idx: Array) -> Array:
    """Inverse of ``take_along_axis(x, sorted_idx, -1)`` for [..., V] arrays."""
    shape = sorted_values.shape
    v = sorted_values.reshape(-1, shape[-1])
    idx = sorted_idx.reshape(-1, shape[-1])
    rows = jnp.arange(v.shape[0])[:, None]
    return jnp.zeros_like(v).at[rows, idx].set(v).reshape(shape)


def _token_presence(ids: Array, valid: Array, vocab_size: int) -> Array:
    """bool [B, V]: which token ids occur at ``valid`` positions of ``ids`` [B, L]."""
    ids = jnp.where(valid & (ids >= 0) & (ids < vocab_size), ids, vocab_size)  # spare column
    rows = jnp.arange(ids.shape[0])[:, None]
    present = jnp.zeros((ids.shape[0], vocab_size + 1), dtype=bool).at[rows, ids].set(True)
    return present[:, :vocab_size]


def _kth_largest(x: Array, k: int) -> Array:
    k = min(int(k), x.shape[-1])
    return jax.lax.top_k(x, k)[0][..., -1:]


# ----------------------------------------------------------------------------- warpers (logits only)
def apply_temperature(logits: Array, temperature: float) -> Array:
    """``logits / temperature`` (TemperatureLogitsWarper)."""
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}; use greedy decoding for 0.")
    return logits / temperature


def top_k_filter(logits: Array, top_k: int, min_tokens_to_keep: int = 1, filter_value: float = -float("inf")) -> Array:
    """Keep the ``top_k`` largest logits (ties with the k-th kept), others -> ``filter_value``."""
    if top_k <= 0:
        raise ValueError(f"`top_k` must be a positive integer, got {top_k}")
    k = min(max(int(top_k), min_tokens_to_keep), logits.shape[-1])
    return jnp.where(logits < _kth_largest(logits, k), filter_value, logits)


def top_p_filter(logits: Array, top_p: float, min_tokens_to_keep: int = 1, filter_value: float = -float("inf")) -> Array:
    """Nucleus filtering: keep the smallest set of most likely tokens with mass >= ``top_p``."""
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"`top_p` must be in [0, 1], got {top_p}")
    sorted_idx = jnp.argsort(logits, axis=-1)  # ascending
    sorted_logits = jnp.take_along_axis(logits, sorted_idx, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove = cum <= (1.0 - top_p)
    remove = remove.at[..., -min_tokens_to_keep:].set(False)
    return jnp.where(_scatter_back(remove, sorted_idx), filter_value, logits)


def min_p_filter(logits: Array, min_p: float, min_tokens_to_keep: int = 1, filter_value: float = -float("inf")) -> Array:
    """Drop tokens with probability < ``min_p * max_probability``."""
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"`min_p` must be in [0, 1], got {min_p}")
    probs = jax.nn.softmax(logits, axis=-1)
    remove = probs < min_p * jnp.max(probs, axis=-1, keepdims=True)
    if min_tokens_to_keep > 1:
        remove = remove & (probs < _kth_largest(probs, min_tokens_to_keep))
    return jnp.where(remove, filter_value, logits)


def typical_p_filter(logits: Array, typical_p: float, min_tokens_to_keep: int = 1,
                     filter_value: float = -float("inf")) -> Array:
    """Locally typical sampling (TypicalLogitsWarper, mass ``typical_p``)."""
    if not 0.0 < typical_p < 1.0:
        raise ValueError(f"`typical_p` must be in (0, 1), got {typical_p}")
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    ent = -jnp.nansum(logp * p, axis=-1, keepdims=True)
    shifted = jnp.abs(-logp - ent)
    sorted_idx = jnp.argsort(shifted, axis=-1)
    sorted_scores = jnp.take_along_axis(shifted, sorted_idx, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, sorted_idx, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    last = jnp.minimum(jnp.sum(cum < typical_p, axis=-1, keepdims=True), logits.shape[-1] - 1)
    remove = sorted_scores > jnp.take_along_axis(sorted_scores, last, axis=-1)
    remove = remove.at[..., :min_tokens_to_keep].set(False)
    return jnp.where(_scatter_back(remove, sorted_idx), filter_value, logits)


def epsilon_filter(logits: Array, epsilon: float, min_tokens_to_keep: int = 1,
                   filter_value: float = -float("inf")) -> Array:
    """Epsilon sampling: drop tokens with probability < ``epsilon`` (keep ``min_tokens_to_keep``)."""
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"`epsilon_cutoff` must be in (0, 1), got {epsilon}")
    probs = jax.nn.softmax(logits, axis=-1)
    remove = (probs < epsilon) & (logits < _kth_largest(logits, min_tokens_to_keep))
    return jnp.where(remove, filter_value, logits)


def eta_filter(logits: Array, epsilon: float, min_tokens_to_keep: int = 1,
               filter_value: float = -float("inf")) -> Array:
    """Eta sampling: cutoff ``min(epsilon, sqrt(epsilon) * exp(-entropy))``."""
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"`eta_cutoff` must be in (0, 1), got {epsilon}")
    logp = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(logp)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * logp, 0.0), axis=-1, keepdims=True)
    eps = jnp.asarray(epsilon, dtype=jnp.float32)
    eta = jnp.minimum(eps, jnp.sqrt(eps) * jnp.exp(-entropy))
    remove = (probs < eta) & (logits < _kth_largest(logits, min_tokens_to_keep))
    return jnp.where(remove, filter_value, logits)


def renormalize(logits: Array) -> Array:
    """``log_softmax`` (LogitNormalization); always last in the chain."""
    return jax.nn.log_softmax(logits, axis=-1)


def suppress_tokens(logits: Array, tokens: Sequence[int]) -> Array:
    """Set ``tokens`` to -inf at every step (SuppressTokensLogitsProcessor)."""
    return jnp.where(_vocab_mask(tokens, logits.shape[-1]), _NEG_INF, logits)


# ----------------------------------------------------------------------------- step-dependent rules
def begin_suppress_tokens(cur_len: IntLike, logits: Array, tokens: Sequence[int], begin_index: IntLike) -> Array:
    """Set ``tokens`` to -inf only when ``cur_len == begin_index`` (the first generated step)."""
    hit = _vocab_mask(tokens, logits.shape[-1]) & (jnp.asarray(cur_len) == begin_index)
    return jnp.where(hit, _NEG_INF, logits)


def _force(logits: Array, token_ids: Sequence[int]) -> Array:
    forced = _vocab_mask(token_ids, logits.shape[-1])
    return jnp.where(forced, jnp.zeros((), logits.dtype), jnp.full((), _NEG_INF, logits.dtype))


def force_bos(cur_len: IntLike, logits: Array, bos_token_id: int) -> Array:
    """At ``cur_len == 1`` only ``bos_token_id`` is allowed (score 0, others -inf)."""
    return jnp.where(jnp.asarray(cur_len) == 1, _force(logits, (bos_token_id,)), logits)


def force_eos(cur_len: IntLike, logits: Array, eos_token_id: int | Sequence[int], max_length: IntLike) -> Array:
    """At ``cur_len == max_length - 1`` only the EOS token(s) are allowed."""
    return jnp.where(jnp.asarray(cur_len) == max_length - 1, _force(logits, _as_tuple(eos_token_id)), logits)


def mask_eos_before_min_length(cur_len: IntLike, logits: Array, eos_token_id: int | Sequence[int],
                               min_length: IntLike) -> Array:
    """EOS -> -inf while ``cur_len < min_length`` (MinLengthLogitsProcessor; total length)."""
    hit = _vocab_mask(_as_tuple(eos_token_id), logits.shape[-1]) & (jnp.asarray(cur_len) < min_length)
    return jnp.where(hit, _NEG_INF, logits)


def mask_eos_before_min_new_tokens(cur_len: IntLike, logits: Array, eos_token_id: int | Sequence[int],
                                   prompt_len: IntLike, min_new_tokens: int) -> Array:
    """EOS -> -inf while fewer than ``min_new_tokens`` tokens follow the prompt."""
    hit = _vocab_mask(_as_tuple(eos_token_id), logits.shape[-1]) & (
        jnp.asarray(cur_len) - prompt_len < min_new_tokens)
    return jnp.where(hit, _NEG_INF, logits)


# ----------------------------------------------------------------------------- sequence-dependent processors
def repetition_penalty(input_ids: Array, cur_len: IntLike, logits: Array, penalty: float,
                       prompt_pad_len: Array | None = None) -> Array:
    """Penalise every token present in ``input_ids[:, :cur_len]`` (prompt included, as in HF):
    negative logits are multiplied by ``penalty``, positive ones divided.

    ``prompt_pad_len`` [B] (optional): number of left-padding positions per row, which are
    ignored (Transformers derives it from the attention mask).
    """
    if not penalty > 0:
        raise ValueError(f"`repetition_penalty` must be > 0, got {penalty}")
    pos = jnp.arange(input_ids.shape[1])[None, :]
    valid = pos < cur_len
    if prompt_pad_len is not None:
        valid = valid & (pos >= jnp.asarray(prompt_pad_len)[:, None])
    present = _token_presence(input_ids, valid, logits.shape[-1])
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(present, penalised, logits)


def no_repeat_ngram(input_ids: Array, cur_len: IntLike, logits: Array, ngram_size: int) -> Array:
    """Ban tokens that would repeat an n-gram already in ``input_ids[:, :cur_len]``.

    Vectorised over the static buffer: every window start is compared with the current
    (n-1)-token suffix at once; the only Python loop is over the static ``ngram_size``.
    """
    n = int(ngram_size)
    if n <= 0:
        raise ValueError(f"`no_repeat_ngram_size` must be a positive integer, got {ngram_size}")
    batch, buf_len = input_ids.shape
    vocab = logits.shape[-1]
    if buf_len < n:
        return logits
    cur_len = jnp.asarray(cur_len)
    n_windows = buf_len - n + 1
    windows = jnp.stack([input_ids[:, j:j + n_windows] for j in range(n)], axis=-1)  # [B, W, n]
    prefix = jax.lax.dynamic_slice_in_dim(input_ids, jnp.maximum(cur_len + 1 - n, 0), n - 1, axis=1)
    match = jnp.all(windows[..., :-1] == prefix[:, None, :], axis=-1)  # [B, W]
    window_done = (jnp.arange(n_windows) + n) <= cur_len  # window fully inside the valid prefix
    banned = _token_presence(windows[..., -1], match & window_done[None, :], vocab)
    return jnp.where(banned & (cur_len >= n), _NEG_INF, logits)


def _prepare_sequence_bias(items: Sequence[tuple[Sequence[int], float]], vocab_size: int):
    bias_map: dict[tuple[int, ...], float] = {}
    for ids, bias in items:  # later duplicates win, like HF's list -> dict conversion
        bias_map[tuple(int(t) for t in ids)] = float(bias)
    bad = [t for ids in bias_map for t in ids if t >= vocab_size]
    if bad:
        raise ValueError(f"The vocabulary size is {vocab_size}, but these biased token ids are out of range: {bad}")
    single = np.zeros((vocab_size,), dtype=np.float32)
    groups: dict[int, list[tuple[tuple[int, ...], float]]] = {}
    for ids, bias in bias_map.items():
        if len(ids) == 1:
            single[ids[0]] = bias
        else:
            groups.setdefault(len(ids) - 1, []).append((ids, bias))
    multi = [
        (np.asarray([s[:-1] for s, _ in g], np.int32), np.asarray([s[-1] for s, _ in g], np.int32),
         np.asarray([b for _, b in g], np.float32))
        for g in groups.values()
    ]
    return single, multi


def sequence_bias(input_ids: Array, cur_len: IntLike, logits: Array,
                  bias: Sequence[tuple[Sequence[int], float]]) -> Array:
    """Add ``bias`` to the last token of each sequence whose prefix ends ``input_ids[:, :cur_len]``.

    Single-token sequences are biased at every step. ``bias`` is static (tuples of
    ``(token_ids, float)``); the match is a fixed-size ``dynamic_slice`` of the buffer.
    """
    batch, buf_len = input_ids.shape
    single, multi = _prepare_sequence_bias(bias, logits.shape[-1])
    cur_len = jnp.asarray(cur_len)
    total = jnp.broadcast_to(jnp.asarray(single), logits.shape)
    for prefixes, last, biases in multi:
        m = prefixes.shape[1]
        if m > buf_len:
            continue
        tail = jax.lax.dynamic_slice_in_dim(input_ids, jnp.maximum(cur_len - m, 0), m, axis=1)  # [B, m]
        match = jnp.all(tail[:, None, :] == jnp.asarray(prefixes)[None], axis=-1) & (cur_len >= m)  # [B, G]
        total = total.at[:, jnp.asarray(last)].add(jnp.where(match, jnp.asarray(biases), 0.0))
    return logits + total.astype(logits.dtype)


def bad_words(input_ids: Array, cur_len: IntLike, logits: Array, bad_words_ids: Sequence[Sequence[int]],
              eos_token_id: int | Sequence[int] | None = None) -> Array:
    """Forbid sequences: single tokens always, multi-token ones when their prefix was just generated.

    A bad word that is exactly one EOS token is dropped (HF's NoBadWordsLogitsProcessor).
    """
    eos = set(_as_tuple(eos_token_id))
    words = [tuple(w) for w in bad_words_ids if not (len(w) == 1 and w[0] in eos)]
    if not words:
        return logits
    return sequence_bias(input_ids, cur_len, logits, [(w, float("-inf")) for w in words])


# ----------------------------------------------------------------------------- composition
_UNSUPPORTED_EXTRAS = {  # Transformers fields that change logits but are not implemented here
    "encoder_repetition_penalty": (None, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "exponential_decay_length_penalty": (None,),
    "remove_invalid_values": (None, False),
    "guidance_scale": (None, 1.0),
    "top_h": (None,),
    "watermarking_config": (None,),
}


def logits_processor_steps(
    config: GenerationConfig,
    *,
    prompt_len: IntLike,
    max_length: IntLike | None = None,
    prompt_pad_len: Array | None = None,
    logits_processor: Sequence[LogitsProcessorFn] = (),
) -> tuple[tuple[str, LogitsProcessorFn], ...]:
    """The ordered ``(name, fn)`` steps :func:`build_logits_processor` composes.

    ``prompt_len``: buffer length taken by the (left-padded) prompt; ``max_length``:
    resolved total length (default: from the config via ``resolve_lengths``);
    ``prompt_pad_len``: [B] left-padding per row (repetition penalty ignores it);
    ``logits_processor``: user functions, inserted where Transformers merges custom ones
    (after the built-in processors, before the sampling warpers).
    """
    for key, value in config.extras.items():
        if key in _UNSUPPORTED_EXTRAS and value not in _UNSUPPORTED_EXTRAS[key]:
            raise NotImplementedError(f"Generation option `{key}={value!r}` is not supported by zoo yet.")

    res_max, res_min = config.resolve_lengths(prompt_len)
    max_length = res_max if max_length is None else max_length
    eos = config.eos_token_ids
    steps: list[tuple[str, LogitsProcessorFn]] = []
    add = lambda name, fn: steps.append((name, fn))  # noqa: E731

    if config.sequence_bias is not None:
        add("sequence_bias", lambda ids, t, x, b=config.sequence_bias: sequence_bias(ids, t, x, b))
    if config.repetition_penalty != 1.0:
        add("repetition_penalty", lambda ids, t, x, p=config.repetition_penalty:
            repetition_penalty(ids, t, x, p, prompt_pad_len))
    if config.no_repeat_ngram_size > 0:
        add("no_repeat_ngram", lambda ids, t, x, n=config.no_repeat_ngram_size: no_repeat_ngram(ids, t, x, n))
    if config.bad_words_ids is not None:
        add("bad_words", lambda ids, t, x, w=config.bad_words_ids: bad_words(ids, t, x, w, eos))
    if eos and (config.min_length > 0 or (config.min_new_tokens or 0) > 0):
        add("min_length", lambda ids, t, x: mask_eos_before_min_length(t, x, eos, res_min))
    if eos and (config.min_new_tokens or 0) > 0:
        add("min_new_tokens", lambda ids, t, x, m=config.min_new_tokens:
            mask_eos_before_min_new_tokens(t, x, eos, prompt_len, m))
    if config.forced_bos_token_id is not None:
        add("force_bos", lambda ids, t, x, b=config.forced_bos_token_id: force_bos(t, x, b))
    if config.forced_eos_token_id is not None:
        add("force_eos", lambda ids, t, x, e=config.forced_eos_token_id: force_eos(t, x, e, max_length))
    if config.suppress_tokens is not None:
        add("suppress_tokens", lambda ids, t, x, s=config.suppress_tokens: suppress_tokens(x, s))
    if config.begin_suppress_tokens is not None:
        # HF: the first generated step, shifted by one when a forced BOS takes a length-1 prompt's place.
        if config.forced_bos_token_id is None:
            begin_index = prompt_len
        else:
            begin_index = jnp.where(jnp.asarray(prompt_len) > 1, prompt_len, jnp.asarray(prompt_len) + 1)
        add("begin_suppress_tokens", lambda ids, t, x, s=config.begin_suppress_tokens:
            begin_suppress_tokens(t, x, s, begin_index))
    for i, fn in enumerate(logits_processor):
        add(f"custom_{i}", fn)

    if config.do_sample:
        if config.num_beams > 1:
            keep = len(eos) + 1 if eos else 2
        else:
            keep = 1
        if config.temperature != 1.0:
            add("temperature", lambda ids, t, x, v=config.temperature: apply_temperature(x, v))
        if config.top_k != 0:
            add("top_k", lambda ids, t, x, v=config.top_k: top_k_filter(x, v, keep))
        if config.top_p < 1.0:
            add("top_p", lambda ids, t, x, v=config.top_p: top_p_filter(x, v, keep))
        if config.min_p is not None:
            add("min_p", lambda ids, t, x, v=config.min_p: min_p_filter(x, v, keep))
        if config.typical_p < 1.0:
            add("typical_p", lambda ids, t, x, v=config.typical_p: typical_p_filter(x, v, keep))
        if 0.0 < config.epsilon_cutoff < 1.0:
            add("epsilon_cutoff", lambda ids, t, x, v=config.epsilon_cutoff: epsilon_filter(x, v, keep))
        if 0.0 < config.eta_cutoff < 1.0:
            add("eta_cutoff", lambda ids, t, x, v=config.eta_cutoff: eta_filter(x, v, keep))

    if config.renormalize_logits:
        add("renormalize", lambda ids, t, x: renormalize(x))
    return tuple(steps)


def build_logits_processor(
    config: GenerationConfig,
    *,
    prompt_len: IntLike,
    max_length: IntLike | None = None,
    prompt_pad_len: Array | None = None,
    logits_processor: Sequence[LogitsProcessorFn] = (),
    upcast: bool = True,
) -> LogitsProcessorFn:
    """Compose the config's processors into ``fn(input_ids, cur_len, logits) -> logits``.

    See the module docstring for the buffer contract. With no active processor the
    function is the identity (plus the float32 upcast when ``upcast``).
    """
    steps = logits_processor_steps(config, prompt_len=prompt_len, max_length=max_length,
                                   prompt_pad_len=prompt_pad_len, logits_processor=logits_processor)
    fns = tuple(fn for _, fn in steps)

    def process(input_ids: Array, cur_len: IntLike, logits: Array) -> Array:
        if upcast:
            logits = logits.astype(jnp.float32)
        cur_len = jnp.asarray(cur_len, dtype=jnp.int32)
        for fn in fns:
            logits = fn(input_ids, cur_len, logits)
        return logits

    process.steps = tuple(name for name, _ in steps)  # type: ignore[attr-defined]  # for debugging
    return process


# ----------------------------------------------------------------------------- next-token choice
def greedy_next_token(logits: Array) -> Array:
    """``argmax`` over the vocabulary (first index on ties, like torch). Returns int32 [B]."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def sample_next_token(key: Array, logits: Array) -> Array:
    """Draw one token per row from ``softmax(logits)``; -inf entries are never drawn. int32 [B]."""
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
