"""Stopping criteria: jittable EOS / max-length checks, and a host-side stop-string matcher.

Why it is shaped this way:

* EOS and max-length checks run inside the compiled loop every step, so they are tiny
  pure functions on arrays (several EOS ids are a static tuple compared at once).
  Transformers' loop order is kept: choose the next token, replace it with
  ``pad_token_id`` for rows already finished (:func:`pad_finished_rows`), write it, then
  mark rows whose new token is an EOS as finished (:func:`update_finished`); the loop
  ends when every row is finished or ``cur_len >= max_length``.
* Stop strings are a property of *decoded text*, which depends on the tokenizer
  (byte-level merges, leading-space markers, multi-token characters). Matching them
  inside XLA would need Transformers' precomputed per-token overlap tables; instead
  :class:`StopStringMatcher` runs on the host, between compiled chunks of steps. It
  decodes the generated ids, finds the earliest stop string, and reports how many tokens
  were needed for it to appear (generation would have ended right after that token,
  as with Transformers' ``StopStringCriteria``) and where to cut the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# ----------------------------------------------------------------------------- jittable criteria
def is_eos(tokens: Array, eos_token_id: int | Sequence[int] | None) -> Array:
    """bool array, same shape as ``tokens``: which entries are one of the EOS ids."""
    ids = () if eos_token_id is None else ((eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id))
    if not ids:
        return jnp.zeros(jnp.shape(tokens), dtype=bool)
    return jnp.any(jnp.asarray(tokens)[..., None] == jnp.asarray(ids, dtype=jnp.asarray(tokens).dtype), axis=-1)


def update_finished(finished: Array, next_tokens: Array, eos_token_id: int | Sequence[int] | None) -> Array:
    """``finished | is_eos(next_tokens)`` (Transformers' EosTokenCriteria)."""
    return finished | is_eos(next_tokens, eos_token_id)


def pad_finished_rows(next_tokens: Array, finished: Array, pad_token_id: int | None) -> Array:
    """Rows that already finished emit ``pad_token_id`` (as in Transformers' loops)."""
    if pad_token_id is None:
        return next_tokens
    return jnp.where(finished, jnp.asarray(pad_token_id, next_tokens.dtype), next_tokens)


def max_length_reached(cur_len: Array | int, max_length: Array | int) -> Array:
    """``cur_len >= max_length`` (MaxLengthCriteria)."""
    return jnp.asarray(cur_len) >= max_length


def should_continue(finished: Array, cur_len: Array | int, max_length: Array | int) -> Array:
    """While-loop condition: some row unfinished and below ``max_length``."""
    return jnp.logical_and(~jnp.all(finished), ~max_length_reached(cur_len, max_length))


# ----------------------------------------------------------------------------- stop strings (host)
class TokenizerLike(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


@dataclass(frozen=True)
class StopStringMatch:
    stop_string: str  # which stop string matched (the one completed first)
    text_end: int  # character index just past the stop string in the decoded text
    num_tokens: int  # tokens needed for it to appear: generation ends after token num_tokens - 1
    text: str  # the full decoded text that was searched


class StopStringMatcher:
    """Find stop strings in generated token ids, on the host.

    ``tokenizer`` only needs ``decode(list[int]) -> str`` (a zoo or Transformers tokenizer,
    or anything alike); ``decode_kwargs`` are passed to every ``decode`` call (e.g.
    ``skip_special_tokens=True``).

    * ``matcher(batch_ids, lengths)`` -> bool [B]: whether each row contains a stop string
      (use it to mark rows finished between compiled chunks of decoding steps);
    * ``matcher.find(ids)`` -> :class:`StopStringMatch` or ``None``;
    * ``matcher.truncate(ids)`` -> ``(ids_kept, text_kept)``: ids cut after the token that
      completed the stop string (what Transformers returns), text cut right after the stop
      string (``include_stop_string=False`` cuts before it).

    Stop strings are searched in the generated text only (not the prompt).
    """

    def __init__(self, tokenizer: TokenizerLike, stop_strings: str | Sequence[str], **decode_kwargs: Any):
        if isinstance(stop_strings, str):
            stop_strings = (stop_strings,)
        stop_strings = tuple(stop_strings)
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError(f"`stop_strings` must be non-empty strings, got {stop_strings!r}")
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.decode_kwargs = decode_kwargs

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], **self.decode_kwargs)

    def _earliest(self, text: str) -> tuple[str, int] | None:
        best: tuple[str, int] | None = None
        for s in self.stop_strings:
            i = text.find(s)
            if i >= 0 and (best is None or i + len(s) < best[1]):
                best = (s, i + len(s))
        return best

    def find(self, token_ids: Sequence[int]) -> StopStringMatch | None:
        ids = [int(i) for i in token_ids]
        text = self._decode(ids)
        best = self._earliest(text)
        if best is None:
            return None
        # Smallest k whose decoded prefix already contains a stop string (decoding is
        # monotone in k up to incomplete multi-byte characters), by binary search.
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._earliest(self._decode(ids[:mid])) is not None:
                hi = mid
            else:
                lo = mid + 1
        return StopStringMatch(stop_string=best[0], text_end=best[1], num_tokens=lo, text=text)

    def __call__(self, batch_ids: Any, lengths: Sequence[int] | None = None) -> np.ndarray:
        rows = np.asarray(batch_ids)
        if rows.ndim == 1:
            rows = rows[None]
        out = np.zeros((rows.shape[0],), dtype=bool)
        for b, row in enumerate(rows):
            n = rows.shape[1] if lengths is None else int(lengths[b])
            out[b] = self._earliest(self._decode(row[:n].tolist())) is not None
        return out

    def truncate(self, token_ids: Sequence[int], include_stop_string: bool = True) -> tuple[list[int], str]:
        ids = [int(i) for i in token_ids]
        m = self.find(ids)
        if m is None:
            return ids, self._decode(ids)
        cut = m.text_end if include_stop_string else m.text_end - len(m.stop_string)
        return ids[: m.num_tokens], m.text[:cut]
