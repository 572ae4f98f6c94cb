"""``generate``: prompts to tokens in compiled loops (prefill, then ``lax.while_loop``).

Shape discipline, so one compile serves many calls:

* The prompt is left-padded to a length bucket. Extra left padding changes
  nothing a model computes: position ids come from the attention mask, padded
  keys are masked, and sliding windows measure distances between token indices,
  which padding shifts uniformly.
* Everything lives in static buffers: a token buffer ``[batch, bucket + max_new]``
  whose first ``cur_len`` entries are valid (the layout the logits processors
  expect) and a KV cache of the same length. ``cur_len`` is traced.
* The decode loop runs until every row is finished or ``cur_len`` reaches a
  traced ``stop_at``. Streaming calls the same compiled loop repeatedly with a
  larger ``stop_at`` and hands each chunk to the host; plain calls run it once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo.generation.cache import check_implementation, init_cache
from zoo.generation.config import GenerationConfig
from zoo.generation.logits_process import build_logits_processor, greedy_next_token, sample_next_token
from zoo.generation.stopping_criteria import StopStringMatcher, pad_finished_rows, update_finished
from zoo.models import get_family

MIN_BUCKET = 16


def bucket_length(n: int) -> int:
    """Prompt length bucket: powers of two up to 1024, then multiples of 512."""
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    if n <= 1024:
        return 1 << (n - 1).bit_length()
    return -(-n // 512) * 512


class DecodeState(NamedTuple):
    tokens: jax.Array      # [B, L] token buffer; [:, :cur_len] valid
    cur_len: jax.Array     # int32 scalar: where the next token goes
    positions: jax.Array   # [B] position id of the last written token
    finished: jax.Array    # [B] bool
    cache: Any
    key: jax.Array
    scores: Any            # [B, max_new, V] processed scores, or None
    logits: Any            # [B, max_new, V] raw logits, or None


@dataclasses.dataclass
class GenerateOutput:
    """``return_dict_in_generate=True`` result, named like Transformers'."""

    sequences: np.ndarray
    scores: tuple | None = None
    logits: tuple | None = None
    sequences_scores: np.ndarray | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


# ---------------------------------------------------------------- host-side preparation
def _resolve_config(model: Any, generation_config: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
    base = generation_config or model.generation_config
    if base is None or not isinstance(base, GenerationConfig):
        cfg = model.config
        base = GenerationConfig(
            bos_token_id=_int_or_none(getattr(cfg, "bos_token_id", None)),
            eos_token_id=getattr(cfg, "eos_token_id", None),
            pad_token_id=_int_or_none(getattr(cfg, "pad_token_id", None)),
        )
    gen, unused = base.update(**kwargs)
    if unused:
        raise TypeError(f"generate() got unknown arguments: {sorted(unused)}")
    if gen.pad_token_id is None and gen.eos_token_ids:
        gen = dataclasses.replace(gen, pad_token_id=gen.eos_token_ids[0])
    return gen


def _int_or_none(x: Any) -> int | None:
    if isinstance(x, (list, tuple)):
        return int(x[0]) if x else None
    return None if x is None else int(x)


def prepare_inputs(input_ids: Any, attention_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(f"the prompt is empty or badly shaped: input_ids has shape {ids.shape}; need [batch, >=1]")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, got {ids.dtype}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids shape {ids.shape}")
    if not mask.any(axis=1).all():
        raise ValueError("a prompt row has no tokens (its attention_mask is all zeros)")
    return ids.astype(np.int32), mask.astype(np.int32)


def check_token_ids(ids: np.ndarray, mask: np.ndarray, vocab_size: int | None) -> None:
    """Attended prompt tokens must be valid vocabulary ids (an embedding lookup would silently clamp them)."""
    if vocab_size is None:
        return
    bad = (mask != 0) & ((ids < 0) | (ids >= vocab_size))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"input_ids holds token id {int(ids[row, col])} at [{row}, {col}], outside the model's vocabulary "
            f"[0, {vocab_size}); {int(bad.sum())} such id(s) in all"
        )


def context_limit(cfg: Any) -> int | None:
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def plan_lengths(gen: GenerationConfig, prompt_len: int, cfg: Any) -> int:
    """Number of new tokens, checked against the model's context."""
    max_length, _ = gen.resolve_lengths(prompt_len)
    max_new = max_length - prompt_len
    if max_new <= 0:
        raise ValueError(
            f"nothing to generate: the prompt has {prompt_len} tokens and max_length is {max_length}; "
            f"set max_new_tokens"
        )
    limit = context_limit(cfg)
    if limit is not None and prompt_len + max_new > limit:
        raise ValueError(
            f"prompt ({prompt_len} tokens) plus max_new_tokens ({max_new}) = {prompt_len + max_new} exceeds the "
            f"model's context of {limit} tokens (max_position_embeddings)"
        )
    return max_new


def left_pad(ids: np.ndarray, mask: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    extra = length - ids.shape[1]
    if extra == 0:
        return ids, mask
    return (np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id), np.pad(mask, ((0, 0), (extra, 0))))


# ---------------------------------------------------------------- compiled pieces
def position_ids_from_mask(mask: jax.Array) -> jax.Array:
    """Transformers' rule: cumsum(mask) - 1, with padded slots set to 1."""
    pos = jnp.cumsum(mask, axis=-1) - 1
    return jnp.where(mask == 0, 1, pos).astype(jnp.int32)


def choose(gen: GenerationConfig, key: jax.Array, scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    if gen.do_sample:
        key, sub = jax.random.split(key)
        return sample_next_token(sub, scores), key
    return greedy_next_token(scores), key


def model_step(model: Any, ids: jax.Array, cache: Any, positions: jax.Array, mask: jax.Array | None = None):
    """One forward over new tokens with a cache; logits of the last position [B, V]."""
    family = get_family(model.config.model_type)
    logits, cache = family.forward(
        model.params, model.config, ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1
    )
    return logits[:, -1], cache


def output_buffers(gen: GenerationConfig, batch: int, rows: int, vocab: int) -> tuple[Any, Any]:
    """Zeroed ``[B, rows, V]`` buffers for processed scores and raw logits (None when not asked for)."""
    scores = jnp.zeros((batch, rows, vocab), jnp.float32) if gen.output_scores else None
    logits = jnp.zeros((batch, rows, vocab), jnp.float32) if gen.output_logits else None
    return scores, logits


def keep_rows(buf: Any, rows: jax.Array, step: jax.Array) -> Any:
    """Write ``rows`` [B, n, V] into a ``[B, max_new, V]`` output buffer from ``step`` (None stays None)."""
    if buf is None:
        return None
    return jax.lax.dynamic_update_slice_in_dim(buf, rows.astype(jnp.float32), step, axis=1)


def _emit(gen, process, s: DecodeState, logits, cache, positions, prompt_len: int) -> DecodeState:
    """From the next-token logits: process, choose, write at ``cur_len``, record scores, mark finished rows."""
    scores = process(s.tokens, s.cur_len, logits)
    nxt, key = choose(gen, s.key, scores)
    nxt = pad_finished_rows(nxt, s.finished, gen.pad_token_id)
    tokens = jax.lax.dynamic_update_slice_in_dim(s.tokens, nxt[:, None], s.cur_len, axis=1)
    step = s.cur_len - prompt_len
    finished = update_finished(s.finished, nxt, gen.eos_token_ids)
    return DecodeState(tokens, s.cur_len + 1, positions, finished, cache, key,
                       keep_rows(s.scores, scores[:, None], step), keep_rows(s.logits, logits[:, None], step))


def _forward_from_scratch(model, gen, tokens: jax.Array, length: int, mask: jax.Array, chunk: int):
    """Run ``tokens[:, :length]`` into a fresh cache: last-position logits, the cache, last position ids."""
    b, total = tokens.shape
    cache = init_cache(model, b, total, gen, chunk=chunk)
    positions = position_ids_from_mask(mask)
    logits, cache = model_step(model, tokens[:, :length], cache, positions, mask)
    return logits, cache, positions[:, -1]


def _processor(gen, prompt_len: int, total: int, pad_lens, processors: tuple):
    return build_logits_processor(gen, prompt_len=prompt_len, max_length=total, prompt_pad_len=pad_lens,
                                  logits_processor=processors)


def _prefill(model, gen, ids, mask, pad_lens, key, max_new: int, processors: tuple, chunk: int | None = None):
    """Run the prompt, choose the first new token, return the loop's initial state.

    ``chunk``: the most tokens one forward writes into the cache (the prompt, or a longer
    recompute planned for later, see :func:`cache_reset_index`), which sizes rolling caches.
    """
    b, t = ids.shape
    total = t + max_new
    tokens = jnp.zeros((b, total), jnp.int32).at[:, :t].set(ids)
    logits, cache, positions = _forward_from_scratch(model, gen, tokens, t, mask, chunk or t)
    scores, kept_logits = output_buffers(gen, b, max_new, logits.shape[-1])
    state = DecodeState(tokens, jnp.int32(t), positions, jnp.zeros((b,), bool), cache, key, scores, kept_logits)
    return _emit(gen, _processor(gen, t, total, pad_lens, processors), state, logits, cache, positions, t)


def _recompute(model, gen, state: DecodeState, mask, pad_lens, prompt_len: int, length: int, processors: tuple,
               chunk: int):
    """Drop the cache and run the whole sequence ``tokens[:, :length]`` again, then choose the next token.

    Transformers' Phi-3 does this once, when the sequence first passes
    ``original_max_position_embeddings``: longrope then switches to its long factors for
    every position, including the ones already cached with the short factors.
    Generated tokens count as attended, as in Transformers' extended attention mask.
    """
    b, total = state.tokens.shape
    full_mask = jnp.concatenate([mask, jnp.ones((b, length - prompt_len), mask.dtype)], axis=1)
    logits, cache, positions = _forward_from_scratch(model, gen, state.tokens, length, full_mask, chunk)
    process = _processor(gen, prompt_len, total, pad_lens, processors)
    return _emit(gen, process, state, logits, cache, positions, prompt_len)


def _decode(model, gen, state: DecodeState, prompt_len: int, pad_lens, stop_at, processors: tuple):
    """Decode until every row is finished or ``cur_len == stop_at``."""
    process = _processor(gen, prompt_len, state.tokens.shape[1], pad_lens, processors)

    def cond(s: DecodeState):
        return (s.cur_len < stop_at) & ~jnp.all(s.finished)

    def body(s: DecodeState):
        last = jax.lax.dynamic_slice_in_dim(s.tokens, s.cur_len - 1, 1, axis=1)
        positions = s.positions + 1
        logits, cache = model_step(model, last, s.cache, positions[:, None])
        return _emit(gen, process, s, logits, cache, positions, prompt_len)

    return jax.lax.while_loop(cond, body, state)


prefill_fn = jax.jit(_prefill, static_argnames=("gen", "max_new", "processors", "chunk"))
decode_fn = jax.jit(_decode, static_argnames=("gen", "prompt_len", "processors"), donate_argnames=("state",))
recompute_fn = jax.jit(_recompute, static_argnames=("gen", "prompt_len", "length", "processors", "chunk"),
                       donate_argnames=("state",))


def cache_reset_length(model: Any) -> int | None:
    hook = getattr(get_family(model.config.model_type), "cache_reset_length", None)
    return None if hook is None else hook(model.config)


def cache_reset_index(model: Any, prompt_len: int, bucket: int, total: int) -> int | None:
    """``cur_len`` (in the bucketed buffer) at which the cache must be dropped and rebuilt, or None.

    A family may define ``cache_reset_length(cfg)``: the sequence length (in the caller's
    padded coordinates, as Transformers counts ``input_ids.shape[1]``) at which its
    Transformers twin discards the cache once, provided the cache then holds fewer tokens
    (Phi-3 longrope). Only a generation that starts below it and reaches it recomputes.
    """
    n = cache_reset_length(model)
    if n is None or prompt_len >= n:
        return None
    at = bucket - prompt_len + n
    return at if at < total else None


# ---------------------------------------------------------------- public entry point
def generate(
    model: Any,
    input_ids: Any = None,
    attention_mask: Any = None,
    *,
    generation_config: GenerationConfig | None = None,
    key: jax.Array | None = None,
    seed: int | None = None,
    streamer: Any = None,
    tokenizer: Any = None,
    assistant_model: Any = None,
    logits_processor: Sequence[Callable] = (),
    stream_chunk_size: int = 8,
    **kwargs: Any,
) -> Any:
    """Transformers-style ``generate``: returns ids ``[batch * num_return_sequences, prompt + new]``.

    ``key`` (or ``seed``) drives sampling; the same key gives the same tokens.
    ``streamer`` receives new tokens chunk by chunk; ``stop_strings`` needs ``tokenizer``.
    """
    gen = _resolve_config(model, generation_config, kwargs)
    ids, mask = prepare_inputs(input_ids, attention_mask)
    if not isinstance(stream_chunk_size, int) or stream_chunk_size < 1:
        raise ValueError(f"stream_chunk_size must be a positive integer, got {stream_chunk_size!r}")
    check_token_ids(ids, mask, getattr(model.config, "vocab_size", None))
    if gen.do_sample and gen.temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {gen.temperature}")
    check_implementation(gen.cache_implementation)
    max_new = plan_lengths(gen, ids.shape[1], model.config)
    gen = dataclasses.replace(gen, max_new_tokens=max_new, max_length=None)
    if key is None:
        key = jax.random.PRNGKey(0 if seed is None else seed)
    if assistant_model is not None or gen.prompt_lookup_num_tokens:
        from zoo.generation.assisted import assisted_generate

        return assisted_generate(model, gen, ids, mask, key=key, assistant_model=assistant_model,
                                 streamer=streamer, tokenizer=tokenizer, processors=tuple(logits_processor),
                                 chunk=stream_chunk_size)
    if gen.num_beams > 1:
        from zoo.generation.beam import beam_search

        if streamer is not None:
            raise ValueError("streamer cannot be used with beam search (num_beams > 1): the best beam is only "
                             "known at the end; use greedy, sampling or assisted decoding to stream")

        return beam_search(model, gen, ids, mask, key=key, logits_processor=tuple(logits_processor))
    if gen.num_return_sequences > 1:
        if not gen.do_sample:
            raise ValueError("num_return_sequences > 1 needs do_sample=True or num_beams >= num_return_sequences")
        ids = np.repeat(ids, gen.num_return_sequences, axis=0)
        mask = np.repeat(mask, gen.num_return_sequences, axis=0)
    return sample_or_greedy(model, gen, ids, mask, key, streamer=streamer, tokenizer=tokenizer,
                            processors=tuple(logits_processor), chunk=stream_chunk_size)


def sample_or_greedy(model, gen, ids, mask, key, *, streamer=None, tokenizer=None, processors=(), chunk=8):
    b, t = ids.shape
    bucket = bucket_length(t)
    pad_id = gen.pad_token_id if gen.pad_token_id is not None else 0
    matcher = stop_string_matcher(gen, tokenizer)
    check_streamer(streamer, b)
    ids_b, mask_b = left_pad(ids, mask, bucket, pad_id)
    # left padding per row (ours and the caller's), which repetition penalty ignores as in Transformers
    pad_lens = jnp.asarray((mask_b != 0).argmax(axis=1), jnp.int32)
    mask_b = jnp.asarray(mask_b)
    max_new = gen.max_new_tokens
    total = bucket + max_new
    reset_at = cache_reset_index(model, t, bucket, total)
    fill = None if reset_at is None else max(bucket, reset_at)  # the recompute writes reset_at tokens at once
    state = prefill_fn(model, gen, jnp.asarray(ids_b), mask_b, pad_lens, key, max_new, processors, fill)

    def advance(state: DecodeState, stop_at: int) -> DecodeState:
        if reset_at is not None and int(state.cur_len) <= reset_at < stop_at:
            state = decode_fn(model, gen, state, bucket, pad_lens, jnp.int32(reset_at), processors)
            if int(state.cur_len) == reset_at and not bool(jnp.all(state.finished)):
                state = recompute_fn(model, gen, state, mask_b, pad_lens, bucket, reset_at, processors, fill)
        return decode_fn(model, gen, state, bucket, pad_lens, jnp.int32(stop_at), processors)

    state = run_chunks(advance, state, prompt=ids, bucket=bucket, total=total, streamer=streamer, matcher=matcher,
                       chunk=chunk)
    return collect_output(state, gen, prompt_len=t, bucket=bucket, total=total, matcher=matcher, pad_id=pad_id)


# ---------------------------------------------------------------- host loop shared by plain and assisted decoding
def stop_string_matcher(gen: GenerationConfig, tokenizer: Any) -> StopStringMatcher | None:
    if not gen.stop_strings:
        return None
    if tokenizer is None:
        raise ValueError("stop_strings needs the tokenizer: generate(..., tokenizer=tok)")
    return StopStringMatcher(tokenizer, gen.stop_strings)


def check_streamer(streamer: Any, batch: int) -> None:
    if streamer is not None and batch != 1:
        raise ValueError(f"streaming supports batch size 1, got a batch of {batch}")


def run_chunks(advance: Callable[[Any, int], Any], state: Any, *, prompt: np.ndarray, bucket: int, total: int,
               streamer: Any, matcher: StopStringMatcher | None, chunk: int) -> Any:
    """Drive a compiled loop ``advance(state, stop_at)`` to the end.

    ``state`` has ``tokens`` (the bucketed buffer), ``cur_len`` and ``finished``. Plain calls
    run the loop once; streaming or stop strings run it ``chunk`` tokens at a time, hand the
    new tokens to the streamer and mark rows whose text holds a stop string as finished.
    """
    stepwise = streamer is not None or matcher is not None
    if streamer is not None:
        streamer.put(prompt[0])  # Transformers' streamers receive the prompt first (and may skip it)
    emitted = bucket
    while True:
        stop_at = min(int(state.cur_len) + chunk, total) if stepwise else total
        state = advance(state, stop_at)
        if not stepwise:
            break
        cur = min(int(state.cur_len), total)
        toks = np.asarray(state.tokens)[:, :cur]  # slice on the host: a device slice compiles per length
        if matcher is not None:
            # rows whose text now holds a stop string are finished, as with Transformers' StopStringCriteria
            hit = matcher(toks[:, bucket:])
            state = state._replace(finished=state.finished | jnp.asarray(hit))
            if streamer is not None and hit[0]:
                toks = toks[:, : bucket + matcher.find(toks[0, bucket:]).num_tokens]
        if streamer is not None and toks.shape[1] > emitted:
            streamer.put(toks[0, emitted:])
            emitted = toks.shape[1]
        if cur >= total or bool(jnp.all(state.finished)):
            break
    if streamer is not None:
        streamer.end()
    return state


def collect_output(state: Any, gen: GenerationConfig, *, prompt_len: int, bucket: int, total: int,
                   matcher: StopStringMatcher | None, pad_id: int) -> Any:
    """Ids ``[B, prompt + new]`` (or a ``GenerateOutput``) from a finished loop state.

    ``state.scores`` / ``state.logits`` hold one row per generated token from index 0; rows
    past the returned length (rejected drafts, steps after the last row ended) are dropped.
    """
    t = prompt_len
    cur = min(int(state.cur_len), total)  # an assisted round may run past the end
    sequences = np.asarray(state.tokens)[:, bucket - t: cur]
    if matcher is not None:
        sequences = _cut_at_stop_strings(sequences, t, matcher, pad_id)
    # an assisted round may also run past the last row's EOS: cut to the longest row, as plain decoding stops
    sequences = _trim_finished(sequences, t, gen)
    if not gen.return_dict_in_generate:
        return sequences
    n = sequences.shape[1] - t
    scores = _per_step(state.scores, n) if gen.output_scores else None
    logits = _per_step(state.logits, n) if gen.output_logits else None
    return GenerateOutput(sequences=sequences, scores=scores, logits=logits)


def _trim_finished(seqs: np.ndarray, prompt_len: int, gen: GenerationConfig) -> np.ndarray:
    """Decoding stops when every row has ended; drop trailing columns after the last row's EOS."""
    eos = np.asarray(gen.eos_token_ids or (-1,))
    hit = np.isin(seqs[:, prompt_len:], eos)
    if not hit.any(axis=1).all():
        return seqs
    ends = hit.argmax(axis=1) + 1
    return seqs[:, : prompt_len + int(ends.max())]


def _per_step(buf: jax.Array, n: int) -> tuple[np.ndarray, ...]:
    """Transformers' per-step tuple from a ``[B, max_new, V]`` buffer (copied to the host once)."""
    host = np.asarray(buf)
    return tuple(host[:, i] for i in range(n))


def _cut_at_stop_strings(seqs: np.ndarray, prompt_len: int, matcher: StopStringMatcher, pad: int) -> np.ndarray:
    """A row that hit a stop string ends right after the token completing it (padding after);
    the batch is as long as its longest row."""
    out = seqs.copy()
    ends = []
    for r in range(seqs.shape[0]):
        hit = matcher.find(seqs[r, prompt_len:])
        end = seqs.shape[1] if hit is None else prompt_len + hit.num_tokens
        out[r, end:] = pad
        ends.append(end)
    return out[:, : max(ends)]


__all__ = ["generate", "GenerateOutput", "bucket_length", "position_ids_from_mask", "run_chunks", "collect_output"]
