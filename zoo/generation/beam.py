"""Beam search as one compiled loop, token-identical to Transformers' vectorised ``_beam_search``.

The state keeps Transformers' static-shaped tensors: ``running`` beams and the best
``finished`` hypotheses, both ``[batch, num_beams, buffer_len]``, their scores, and the
early-stopping flags. Each loop step scores ``num_beams * vocab`` continuations, keeps the
top ``beams_to_keep`` (twice the beams, or more with several EOS ids), moves the ones that
hit EOS / max length into the finished set (length-penalised), continues with the best
``num_beams`` others, and gathers the KV cache rows of their parents. Beam sampling draws
the ``beams_to_keep`` continuations without replacement with the Gumbel top-k trick (the
same distribution as ``torch.multinomial(..., replacement=False)``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zoo.generation.cache import init_cache, reorder_cache
from zoo.generation.config import GenerationConfig
from zoo.generation.logits_process import build_logits_processor

NEG = -1.0e9  # Transformers' "impossible" score


class BeamState(NamedTuple):
    running: jax.Array         # [B, nb, L] running beams
    running_scores: jax.Array  # [B, nb] accumulated log-probs
    sequences: jax.Array       # [B, nb, L] best finished hypotheses
    seq_scores: jax.Array      # [B, nb] their length-penalised scores
    seq_lens: jax.Array        # [B, nb] their generated lengths
    finished: jax.Array        # [B, nb] whether a finished slot holds a hypothesis
    improvable: jax.Array      # [B, 1] early-stop heuristic not yet satisfied
    done: jax.Array            # bool scalar
    cur_len: jax.Array         # int32 scalar
    logits: jax.Array          # [B*nb, V] next-token logits of the running beams
    positions: jax.Array       # [B*nb] position id of each running beam's last token
    cache: Any
    key: jax.Array
    scores: Any                # [B*nb, max_new, V] processed scores, or None


def output_fill_value(gen: GenerationConfig) -> int:
    """Transformers: ``pad_token_id or eos_token_id[0] if eos_token_id is not None else -1``."""
    eos = gen.eos_token_ids
    if not eos:
        return -1
    return gen.pad_token_id or eos[0]


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """``x[b, idx[b, j], ...]`` for x [B, N, ...] and idx [B, M]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _top_continuations(gen, key, acc, k):
    if gen.do_sample:
        key, sub = jax.random.split(key)
        # Gumbel top-k: k draws without replacement from softmax(acc), sorted by acc as in Transformers
        gumbel = jax.random.gumbel(sub, acc.shape, acc.dtype)
        _, idx = jax.lax.top_k(jnp.where(jnp.isneginf(acc), -jnp.inf, acc + gumbel), k)
        vals = jnp.take_along_axis(acc, idx, axis=1)
        order = jnp.argsort(-vals, axis=1, stable=True)
        return jnp.take_along_axis(vals, order, 1), jnp.take_along_axis(idx, order, 1), key
    vals, idx = jax.lax.top_k(acc, k)
    return vals, idx, key


def _beam_prefill(model, gen, ids, mask, key, max_new: int, num_beams: int):
    from zoo.generation.decode import model_step, position_ids_from_mask

    bn, t = ids.shape
    b = bn // num_beams
    total = t + max_new
    cache = init_cache(model, bn, total, gen)
    positions = position_ids_from_mask(mask)
    logits, cache = model_step(model, ids, cache, positions, mask)
    fill = output_fill_value(gen)
    running = jnp.full((b, num_beams, total), fill, jnp.int32).at[:, :, :t].set(ids.reshape(b, num_beams, t))
    running_scores = jnp.zeros((b, num_beams), jnp.float32).at[:, 1:].set(NEG)
    scores = jnp.zeros((bn, max_new, logits.shape[-1]), jnp.float32) if gen.output_scores else None
    return BeamState(
        running=running, running_scores=running_scores, sequences=running,
        seq_scores=jnp.full((b, num_beams), NEG, jnp.float32), seq_lens=jnp.zeros((b, num_beams), jnp.int32),
        finished=jnp.zeros((b, num_beams), bool), improvable=jnp.ones((b, 1), bool), done=jnp.zeros((), bool),
        cur_len=jnp.int32(t), logits=logits, positions=positions[:, -1], cache=cache, key=key, scores=scores,
    )


def _beam_loop(model, gen, state: BeamState, prompt_len: int, pad_lens, processors: tuple, stop_at,
               mask=None, recompute: int | None = None):
    """Beam steps until done or ``cur_len == stop_at``.

    With ``recompute`` (a static length), run exactly one step whose forward drops the cache
    and re-runs every beam's first ``recompute`` tokens (``mask``: the bucketed prompt mask
    per beam), as Transformers' Phi-3 does once past ``original_max_position_embeddings``.
    """
    from zoo.generation.decode import _forward_from_scratch, model_step

    b, nb, total = state.running.shape
    max_new = total - prompt_len
    eos = jnp.asarray(gen.eos_token_ids or (-1,), jnp.int32)
    k = max(2, 1 + len(gen.eos_token_ids)) * nb
    top_mask = jnp.arange(k) < nb
    lp = float(gen.length_penalty)
    process = build_logits_processor(gen, prompt_len=prompt_len, max_length=total,
                                     prompt_pad_len=jnp.repeat(pad_lens, nb), logits_processor=processors)
    positions_in_buffer = jnp.arange(total)

    def cond(s: BeamState):
        return ~s.done & (s.cur_len < total)

    def body(s: BeamState):
        cur = s.cur_len
        log_probs = jax.nn.log_softmax(s.logits.astype(jnp.float32), axis=-1)
        log_probs = process(s.running.reshape(b * nb, total), cur, log_probs)
        vocab = log_probs.shape[-1]
        kept = s.scores if s.scores is None else jax.lax.dynamic_update_slice_in_dim(
            s.scores, log_probs[:, None], cur - prompt_len, axis=1)
        acc = (log_probs.reshape(b, nb, vocab) + s.running_scores[:, :, None]).reshape(b, nb * vocab)
        topk_lp, topk_idx, key = _top_continuations(gen, s.key, acc, k)
        parent = topk_idx // vocab
        token = (topk_idx % vocab).astype(jnp.int32)
        topk_seqs = _gather(s.running, parent)
        topk_seqs = jnp.where(positions_in_buffer == cur, token[:, :, None], topk_seqs)
        hits = jnp.any(token[:, :, None] == eos, axis=-1) | (cur + 1 >= total)

        # the best num_beams continuations that did not stop keep running
        run_lp = topk_lp + hits.astype(jnp.float32) * NEG
        nxt = jax.lax.top_k(run_lp, nb)[1]
        running = _gather(topk_seqs, nxt)
        running_scores = _gather(run_lp, nxt)
        beam_parent = _gather(parent, nxt)

        # stopped ones among the top num_beams compete for the finished slots
        just = hits & top_mask[None]
        gen_len = cur + 1 - prompt_len
        fin_lp = topk_lp / (gen_len.astype(jnp.float32) ** lp)
        if gen.early_stopping is True:
            fin_lp = fin_lp + jnp.all(s.finished, axis=-1, keepdims=True).astype(jnp.float32) * NEG
        fin_lp = fin_lp + (~s.improvable).astype(jnp.float32) * NEG
        fin_lp = fin_lp + (~just).astype(jnp.float32) * NEG
        merged_scores = jnp.concatenate([s.seq_scores, fin_lp], axis=1)
        best = jax.lax.top_k(merged_scores, nb)[1]
        sequences = _gather(jnp.concatenate([s.sequences, topk_seqs], axis=1), best)
        seq_scores = _gather(merged_scores, best)
        seq_lens = _gather(jnp.concatenate([s.seq_lens, jnp.broadcast_to(gen_len, (b, k))], axis=1), best)
        finished = _gather(jnp.concatenate([s.finished, just], axis=1), best)

        # early-stop heuristic and loop condition (Transformers' _check_early_stop_heuristic)
        new_len = cur + 1
        if gen.early_stopping == "never" and lp > 0.0:
            hyp_len = jnp.float32(max_new)
        else:
            hyp_len = (new_len - prompt_len).astype(jnp.float32)
        best_running = running_scores[:, :1] / (hyp_len ** lp)
        worst_finished = jnp.where(finished, jnp.min(seq_scores, axis=1, keepdims=True), NEG)
        improvable = s.improvable & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        open_beam = ~(jnp.all(finished) & (gen.early_stopping is True))
        done = ~(jnp.any(improvable) & open_beam & ~jnp.all(hits))

        if recompute is None:
            # reorder the cache to the surviving beams' parents and run them one step
            flat_parent = (beam_parent + jnp.arange(b)[:, None] * nb).reshape(-1)
            cache = reorder_cache(s.cache, flat_parent)
            positions = s.positions + 1
            last = jax.lax.dynamic_slice_in_dim(running, cur, 1, axis=2).reshape(b * nb, 1)
            logits, cache = model_step(model, last, cache, positions[:, None])
        else:
            full_mask = jnp.concatenate([mask, jnp.ones((b * nb, recompute - prompt_len), mask.dtype)], axis=1)
            logits, cache, positions = _forward_from_scratch(model, gen, running.reshape(b * nb, total), recompute,
                                                             full_mask, chunk=total)
        return BeamState(running, running_scores, sequences, seq_scores, seq_lens, finished, improvable, done,
                         new_len, logits, positions, cache, key, kept)

    if recompute is not None:
        return body(state)
    return jax.lax.while_loop(lambda s: cond(s) & (s.cur_len < stop_at), body, state)


beam_prefill_fn = jax.jit(_beam_prefill, static_argnames=("gen", "max_new", "num_beams"))
beam_loop_fn = jax.jit(_beam_loop, static_argnames=("gen", "prompt_len", "processors", "recompute"),
                       donate_argnames=("state",))


def beam_search(model: Any, gen: GenerationConfig, ids: np.ndarray, mask: np.ndarray, *, key: jax.Array,
                logits_processor: tuple = ()) -> Any:
    """Beam search (or beam sampling with ``do_sample``) over a prepared, unpadded batch."""
    from zoo.generation.decode import GenerateOutput, _per_step, bucket_length, cache_reset_index, left_pad

    nb = gen.num_beams
    if gen.num_return_sequences > nb:
        raise ValueError(f"num_return_sequences ({gen.num_return_sequences}) must be <= num_beams ({nb})")
    if gen.stop_strings:
        raise NotImplementedError("stop_strings with beam search is not supported; use greedy or sampling")
    b, t = ids.shape
    bucket = bucket_length(t)
    pad_id = gen.pad_token_id if gen.pad_token_id is not None else 0
    ids_b, mask_b = left_pad(ids, mask, bucket, pad_id)
    pad_lens = jnp.asarray((mask_b != 0).argmax(axis=1), jnp.int32)
    ids_rep, mask_rep = np.repeat(ids_b, nb, axis=0), np.repeat(mask_b, nb, axis=0)
    state = beam_prefill_fn(model, gen, jnp.asarray(ids_rep), jnp.asarray(mask_rep), key, gen.max_new_tokens, nb)
    processors, total = tuple(logits_processor), bucket + gen.max_new_tokens
    reset_at = cache_reset_index(model, t, bucket, total)
    if reset_at is not None:  # the step at reset_at - 1 feeds the token that makes the sequence reset_at long
        state = beam_loop_fn(model, gen, state, bucket, pad_lens, processors, jnp.int32(reset_at - 1))
        if not bool(state.done) and int(state.cur_len) == reset_at - 1:
            state = beam_loop_fn(model, gen, state, bucket, pad_lens, processors, jnp.int32(total),
                                 jnp.asarray(mask_rep), recompute=reset_at)
    state = beam_loop_fn(model, gen, state, bucket, pad_lens, processors, jnp.int32(total))
    n = gen.num_return_sequences
    seqs = np.asarray(state.sequences[:, :n]).reshape(b * n, -1)
    lens = np.asarray(state.seq_lens[:, :n]).reshape(-1)
    out = seqs[:, bucket - t: bucket + int(lens.max())]
    if not gen.return_dict_in_generate:
        return out
    seq_scores = np.asarray(state.seq_scores[:, :n]).reshape(-1)
    steps = int(state.cur_len) - bucket
    scores = _per_step(state.scores, steps) if gen.output_scores else None
    return GenerateOutput(sequences=out, scores=scores, sequences_scores=seq_scores if gen.output_scores else None)


__all__ = ["beam_search", "BeamState", "output_fill_value"]
