"""Assisted (speculative) decoding and prompt-lookup decoding, as one compiled loop.

Each round proposes K draft tokens, then the target model scores all of them in one
forward over K + 1 positions:

* drafts come from an ``assistant_model`` (K cheap forwards), or from prompt lookup:
  the continuation of the earliest earlier occurrence of the sequence's last n-gram
  (Transformers' ``PromptLookupCandidateGenerator``, n = 2 then 1);
* greedy, and sampling with deterministic drafts (prompt lookup), accept the leading
  drafts equal to the target's own choice, so greedy output equals plain greedy;
* sampling with an assistant uses the speculative-sampling rejection rule: accept
  draft d with probability min(1, p(d) / q(d)); at the first rejection draw from
  normalise(max(0, p - q)); after K acceptances draw a bonus token from p. Every emitted
  token is then distributed as the target model's p (Leviathan et al. 2023).

Rows of a batch advance together by the smallest number of accepted drafts. That keeps
shapes static and stays exact: a row that accepted more simply emits its next accepted
draft (itself a draw from p) and re-proposes the rest next round.

Cache invariant at the start of a round with ``cur_len = c`` valid tokens: the target
cache holds tokens ``[0, c - 1)``; the assistant cache is cut back to ``[0, c - 2)`` and
fed the last two tokens, which covers the case where its last draft was accepted and
never fed. Rejected tokens are forgotten by emptying their slots (``truncate_cache``).
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zoo.generation.cache import init_cache, truncate_cache
from zoo.generation.config import GenerationConfig
from zoo.generation.decode import (bucket_length, cache_reset_length, check_streamer, choose, collect_output,
                                   keep_rows, left_pad, output_buffers, position_ids_from_mask, run_chunks,
                                   sample_or_greedy, stop_string_matcher)
from zoo.generation.logits_process import build_logits_processor
from zoo.generation.stopping_criteria import is_eos
from zoo.models import get_family

MAX_MATCHING_NGRAM = 2  # Transformers' default max_matching_ngram_size


class AssistState(NamedTuple):
    tokens: jax.Array       # [B, L] buffer, [:, :cur_len] valid
    cur_len: jax.Array
    finished: jax.Array     # [B]
    cache: Any
    draft_cache: Any        # assistant cache, or None for prompt lookup
    key: jax.Array
    rounds: jax.Array       # number of verification rounds (acceptance statistics)
    scores: Any             # [B, max_new + K, V] processed scores of the target, or None
    logits: Any             # [B, max_new + K, V] its raw logits, or None


def forward_positions(model, ids, cache, positions, mask=None, keep=1):
    family = get_family(model.config.model_type)
    logits, cache = family.forward(model.params, model.config, ids, attention_mask=mask, position_ids=positions,
                                   cache=cache, logits_to_keep=keep)
    return logits, cache


def _choose(gen, key, scores):
    """Next token per row [B] and the distribution it was drawn from (None for greedy)."""
    if gen.do_sample:
        return jax.random.categorical(key, scores, axis=-1).astype(jnp.int32), jax.nn.softmax(scores, axis=-1)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32), None


def _assistant_drafts(assistant, gen, process, tokens, c, pad_lens, cache, key, k: int):
    """K tokens from the assistant: [B, K] ids and [B, K, V] probabilities (None when greedy)."""
    b = tokens.shape[0]
    cache = truncate_cache(cache, c - 2)
    two = jax.lax.dynamic_slice_in_dim(tokens, c - 2, 2, axis=1)
    pos = c - 2 + jnp.arange(2, dtype=jnp.int32)[None] - pad_lens[:, None]
    logits, cache = forward_positions(assistant, two, cache, pos)

    def step(carry, i):
        buf, logits, cache, key = carry
        key, sub = jax.random.split(key)
        scores = process(buf, c + i, logits[:, -1])
        d, q = _choose(gen, sub, scores)
        buf = jax.lax.dynamic_update_slice_in_dim(buf, d[:, None], c + i, axis=1)
        p = (c + i - pad_lens)[:, None]
        logits, cache = forward_positions(assistant, d[:, None], cache, p)
        return (buf, logits, cache, key), (d, q)

    (_, _, cache, key), (drafts, probs) = jax.lax.scan(step, (tokens, logits, cache, key), jnp.arange(k))
    drafts = drafts.T  # [B, K]
    probs = None if probs is None else jnp.swapaxes(probs, 0, 1)
    return drafts, jnp.ones((b, k), bool), probs, cache, key


def prompt_lookup_drafts(tokens: jax.Array, c: jax.Array, pad_lens: jax.Array, k: int):
    """Continuation of the earliest earlier match of the last n-gram (n = 2, then 1).

    Returns drafts [B, K] and which of them exist [B, K] (a continuation stops at ``c``).
    """
    b, length = tokens.shape
    idx = jnp.arange(length)
    found = jnp.zeros((b,), bool)
    start = jnp.zeros((b,), jnp.int32)
    for n in range(MAX_MATCHING_NGRAM, 0, -1):
        tail = jax.lax.dynamic_slice_in_dim(tokens, c - n, n, axis=1)  # [B, n]
        windows = jnp.stack([jnp.roll(tokens, -j, axis=1) for j in range(n)], axis=-1)  # [B, L, n]
        ok = jnp.all(windows == tail[:, None, :], axis=-1)
        ok = ok & (idx[None] >= pad_lens[:, None]) & (idx[None] + n < c) & (c - n >= pad_lens)[:, None]
        first = jnp.argmax(ok, axis=1).astype(jnp.int32)
        hit = jnp.any(ok, axis=1) & ~found
        start = jnp.where(hit, first + n, start)
        found = found | hit
    pos = start[:, None] + jnp.arange(k)[None]
    drafts = jnp.take_along_axis(tokens, jnp.clip(pos, 0, length - 1), axis=1)
    valid = found[:, None] & (pos < c)
    return drafts, valid


def _assisted_round(model, assistant, gen, k, s: AssistState, prompt_len, pad_lens, process):
    b, length = s.tokens.shape
    c = s.cur_len
    key, kd, ka, kr = jax.random.split(s.key, 4)
    if assistant is not None:
        drafts, dvalid, q, draft_cache, _ = _assistant_drafts(assistant, gen, process, s.tokens, c, pad_lens,
                                                               s.draft_cache, kd, k)
    else:
        drafts, dvalid = prompt_lookup_drafts(s.tokens, c, pad_lens, k)
        q, draft_cache = None, None
    pad = gen.pad_token_id if gen.pad_token_id is not None else 0
    # a finished row, and a row after its drafted EOS, is fed padding as plain decoding feeds it, so every kept
    # score row is the one plain decoding computes (past an accepted EOS the row ends anyway)
    drafted_eos = is_eos(drafts, gen.eos_token_ids)
    drafts = jnp.where(s.finished[:, None] | ((jnp.cumsum(drafted_eos, axis=1) - drafted_eos) > 0), pad, drafts)
    buf = jax.lax.dynamic_update_slice_in_dim(s.tokens, drafts, c, axis=1)

    # the target scores the last accepted token and the K drafts in one forward
    feed = jax.lax.dynamic_slice_in_dim(buf, c - 1, k + 1, axis=1)
    pos = c - 1 + jnp.arange(k + 1, dtype=jnp.int32)[None] - pad_lens[:, None]
    logits, cache = forward_positions(model, feed, s.cache, pos, keep=k + 1)
    scores = jax.vmap(lambda j, x: process(buf, c + j, x), in_axes=(0, 1), out_axes=1)(
        jnp.arange(k + 1, dtype=jnp.int32), logits)  # [B, K+1, V]

    if q is not None:  # speculative sampling
        p = jax.nn.softmax(scores, axis=-1)
        p_d = jnp.take_along_axis(p[:, :k], drafts[..., None], axis=-1)[..., 0]
        q_d = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
        accept = jax.random.uniform(ka, p_d.shape) <= p_d / q_d
    else:
        if gen.do_sample:
            target = jax.random.categorical(ka, scores, axis=-1).astype(jnp.int32)
        else:
            target = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        accept = drafts == target[:, :k]
    accept = accept & dvalid
    n_row = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=1), axis=1)  # leading accepted drafts
    n = jnp.min(jnp.where(s.finished, k, n_row))

    # the token after the n shared drafts
    if q is not None:
        p_n = jax.lax.dynamic_index_in_dim(p, n, 1, keepdims=False)
        q_n = jax.lax.dynamic_index_in_dim(jnp.concatenate([q, jnp.zeros_like(q[:, :1])], 1), n, 1, keepdims=False)
        resid = jnp.maximum(p_n - q_n, 0.0)
        mass = jnp.sum(resid, axis=-1, keepdims=True)
        resid = jnp.where(mass > 0, resid, p_n)  # n == K: q_n is zero and this is the bonus draw from p
        fresh = jax.random.categorical(kr, jnp.log(resid), axis=-1).astype(jnp.int32)
        d_n = jax.lax.dynamic_index_in_dim(jnp.concatenate([drafts, drafts[:, :1]], 1), n, 1, keepdims=False)
        last = jnp.where(n_row > n, d_n, fresh)
    else:
        last = jax.lax.dynamic_index_in_dim(target, n, 1, keepdims=False)
    j = jnp.arange(k + 1)
    emitted = jnp.where(j[None] < n, jnp.concatenate([drafts, drafts[:, :1]], 1), last[:, None])  # [B, K+1]

    # end rows at their first EOS; finished rows emit padding
    eos_hit = is_eos(emitted, gen.eos_token_ids) & (j[None] <= n)
    after = (jnp.cumsum(eos_hit, axis=1) - eos_hit) > 0
    emitted = jnp.where(s.finished[:, None] | after, pad, emitted)
    finished = s.finished | jnp.any(eos_hit & ~s.finished[:, None], axis=1)
    tokens = jax.lax.dynamic_update_slice_in_dim(s.tokens, emitted, c, axis=1)
    new_len = c + n + 1
    cache = truncate_cache(cache, new_len - 1)
    # the target's rows for all K + 1 positions; the next round overwrites those past the accepted ones
    step = c - prompt_len
    return AssistState(tokens, new_len, finished, cache, draft_cache, key, s.rounds + 1,
                       keep_rows(s.scores, scores, step), keep_rows(s.logits, logits, step))


def _assisted_prefill(model, assistant, gen, ids, mask, key, max_new: int, k: int, processors: tuple):
    b, t = ids.shape
    total = t + max_new
    length = total + k + 1
    positions = position_ids_from_mask(mask)
    cache = init_cache(model, b, length, gen, chunk=max(t, k + 1))
    logits, cache = forward_positions(model, ids, cache, positions, mask)
    draft_cache = None
    if assistant is not None:
        draft_cache = init_cache(assistant, b, length, gen, chunk=max(t, 2))
        _, draft_cache = forward_positions(assistant, ids, draft_cache, positions, mask)
    pad_lens = jnp.argmax(mask != 0, axis=1).astype(jnp.int32)
    process = build_logits_processor(gen, prompt_len=t, max_length=total, prompt_pad_len=pad_lens,
                                     logits_processor=processors)
    tokens = jnp.zeros((b, length), jnp.int32).at[:, :t].set(ids)
    first = process(tokens, jnp.int32(t), logits[:, -1])
    nxt, key = choose(gen, key, first)
    tokens = tokens.at[:, t].set(nxt)
    finished = is_eos(nxt, gen.eos_token_ids)
    scores, kept_logits = output_buffers(gen, b, max_new + k, logits.shape[-1])
    return AssistState(tokens, jnp.int32(t + 1), finished, cache, draft_cache, key, jnp.int32(0),
                       keep_rows(scores, first[:, None], 0), keep_rows(kept_logits, logits[:, -1:], 0))


def _loop(model, assistant, gen, k: int, state: AssistState, prompt_len: int, pad_lens, stop_at, processors: tuple):
    total = prompt_len + gen.max_new_tokens
    process = build_logits_processor(gen, prompt_len=prompt_len, max_length=total, prompt_pad_len=pad_lens,
                                     logits_processor=processors)
    return jax.lax.while_loop(
        lambda s: (s.cur_len < jnp.minimum(stop_at, total)) & ~jnp.all(s.finished),
        lambda s: _assisted_round(model, assistant, gen, k, s, prompt_len, pad_lens, process), state)


assisted_prefill_fn = jax.jit(_assisted_prefill, static_argnames=("gen", "max_new", "k", "processors"))
assisted_loop_fn = jax.jit(_loop, static_argnames=("gen", "k", "prompt_len", "processors"),
                           donate_argnames=("state",))


def check_assisted(model: Any, gen: GenerationConfig, assistant: Any) -> int:
    """Validate the options; returns K, the number of draft tokens per round."""
    if assistant is not None and gen.prompt_lookup_num_tokens:
        raise ValueError("pass either assistant_model or prompt_lookup_num_tokens, not both")
    if gen.num_beams > 1:
        raise ValueError("assisted decoding (assistant_model / prompt_lookup_num_tokens) does not support "
                         f"num_beams > 1 (got num_beams={gen.num_beams})")
    if assistant is not None:
        va, vt = assistant.config.vocab_size, model.config.vocab_size
        if va != vt:
            raise ValueError(f"the assistant model's vocabulary ({va}) differs from the model's ({vt}); "
                             "assisted decoding needs a shared vocabulary")
        k = gen.num_assistant_tokens
    else:
        k = gen.prompt_lookup_num_tokens
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of draft tokens must be a positive integer, got {k}")
    return k


def assisted_generate(model: Any, gen: GenerationConfig, ids: np.ndarray, mask: np.ndarray, *, key: jax.Array,
                      assistant_model: Any = None, streamer: Any = None, tokenizer: Any = None,
                      processors: tuple = (), chunk: int = 8) -> Any:
    """``generate`` with an assistant model or prompt lookup; same output contract as plain decoding."""
    k = check_assisted(model, gen, assistant_model)
    if gen.num_return_sequences > 1:
        if not gen.do_sample:
            raise ValueError("num_return_sequences > 1 needs do_sample=True")
        ids, mask = np.repeat(ids, gen.num_return_sequences, 0), np.repeat(mask, gen.num_return_sequences, 0)
    b, t = ids.shape
    reset = cache_reset_length(model)
    if reset is not None and t < reset <= t + gen.max_new_tokens + k - 1:
        # a verification forward could reach the length where the model's cache must be rebuilt (Phi-3
        # longrope switching factors); plain decoding does that exactly, and greedy output is the same
        warnings.warn(f"assisted decoding falls back to plain decoding: this generation crosses the length "
                      f"({reset}) at which {model.config.model_type} recomputes its cache", stacklevel=3)
        return sample_or_greedy(model, gen, ids, mask, key, streamer=streamer, tokenizer=tokenizer,
                                processors=processors, chunk=chunk)
    bucket = bucket_length(t)
    pad_id = gen.pad_token_id if gen.pad_token_id is not None else 0
    matcher = stop_string_matcher(gen, tokenizer)
    check_streamer(streamer, b)
    ids_b, mask_b = left_pad(ids, mask, bucket, pad_id)
    pad_lens = jnp.asarray((mask_b != 0).argmax(axis=1), jnp.int32)
    max_new = gen.max_new_tokens
    total = bucket + max_new
    state = assisted_prefill_fn(model, assistant_model, gen, jnp.asarray(ids_b), jnp.asarray(mask_b), key,
                                max_new, k, processors)

    def advance(state: AssistState, stop_at: int) -> AssistState:
        return assisted_loop_fn(model, assistant_model, gen, k, state, bucket, pad_lens, jnp.int32(stop_at),
                                processors)

    state = run_chunks(advance, state, prompt=ids, bucket=bucket, total=total, streamer=streamer, matcher=matcher,
                       chunk=chunk)
    return collect_output(state, gen, prompt_len=t, bucket=bucket, total=total, matcher=matcher, pad_id=pad_id)


__all__ = ["assisted_generate", "prompt_lookup_drafts", "AssistState", "check_assisted"]
