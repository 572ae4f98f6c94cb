"""A paged KV cache (vLLM-style) for serving many sequences in one decode batch.

Memory is one pool of fixed-size pages per layer,
``k/v: [layers, pages, page_size, kv_heads, head_dim]``; each sequence owns a list of
page ids (its *block table*), so sequences of any length share the pool without
reserving ``max_length`` slots each, and a finished sequence gives its pages back
at once. Page 0 is never handed out: rows of the batch that are idle, and the
padding of a prompt, write their K/V there, so every step has the same shapes.

Four pieces:

* :class:`PageAllocator`: host-side free list of page ids.
* :func:`prefill_into_pages`: runs prompts through the model's own ``forward`` with a
  contiguous cache (left-padded, as ``generate`` does, so the numerics are the same),
  scatters the keys/values into the sequences' pages, and picks each first token.
* :func:`prefill_chunk_into_pages`: chunked prefill. One piece of a prompt (right-padded
  to one of the fixed :func:`chunk_shapes`) writes its K/V into the sequence's pages and
  attends through its block table to every earlier page of the sequence plus, causally,
  itself; the last chunk of a prompt also picks the first token. The shapes do not depend
  on the prompt length, so a server compiles them once and can interleave chunks with
  decode steps.
* :func:`paged_decode_step`: one token for every row of the batch: writes the new K/V
  into the pages and attends through the block tables with
  :func:`kernels.paged_decode_attention` (the Pallas kernel on GPU, the gather
  reference under XLA on CPU).

All compile once per shape (prompt-length bucket for the whole-prompt prefill, padded chunk
length for chunked prefill; batch and table width fixed by the server) and donate the
page pool, so it is updated in place.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zoo.models import get_family
from zoo.models.llama.config import LlamaConfig
from zoo.nn.dense import embed, gated_mlp, project, unembed
from zoo.nn.norms import rms_norm
from zoo.nn.rope import rope_cos_sin

SCRATCH_PAGE = 0


class PagedKV(NamedTuple):
    """The page pool: ``k``/``v`` of shape ``[layers, num_pages, page_size, kv_heads, head_dim]``."""

    k: jax.Array
    v: jax.Array

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def page_size(self) -> int:
        return self.k.shape[2]


def check_supported(cfg: Any) -> None:
    from zoo.models.llama import model as llama_model

    # Families that subclass LlamaConfig but run their own layers (Gemma, OLMo-2, MoE) do not qualify.
    if not isinstance(cfg, LlamaConfig) or get_family(cfg.model_type).forward is not llama_model.forward:
        raise ValueError(
            f"the paged KV cache serves Llama-style decoders (llama, mistral, qwen2, qwen3); "
            f"model_type '{cfg.model_type}' is not one of them"
        )


def init_pages(cfg: Any, num_pages: int, page_size: int, dtype: Any = None) -> PagedKV:
    check_supported(cfg)
    if num_pages < 2:
        raise ValueError(f"num_pages must be >= 2 (page 0 is scratch), got {num_pages}")
    shape = (cfg.num_hidden_layers, num_pages, page_size, cfg.num_key_value_heads, cfg.head_dim)
    dtype = jnp.dtype(dtype or cfg.dtype)
    return PagedKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def pages_needed(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


class OutOfPages(RuntimeError):
    pass


class PageAllocator:
    """Free list of page ids 1..num_pages-1 (page 0 is the scratch page). Not thread-safe:
    the engine thread owns it."""

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, 0, -1))  # pop() hands out low ids first

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfPages(f"asked for {n} pages, {len(self._free)} free of {self.num_pages - 1}")
        return [self._free.pop() for _ in range(n)]

    def free(self, pages: list[int]) -> None:
        if any(p == SCRATCH_PAGE or p >= self.num_pages for p in pages):
            raise ValueError(f"not pages of this pool: {pages}")
        self._free.extend(reversed(pages))


def block_table_row(pages: list[int], width: int) -> np.ndarray:
    """A sequence's pages padded with the scratch page to the table width."""
    if len(pages) > width:
        raise ValueError(f"{len(pages)} pages do not fit a block table of width {width}")
    row = np.full((width,), SCRATCH_PAGE, np.int32)
    row[: len(pages)] = pages
    return row


# ---------------------------------------------------------------- token choice
def choose_tokens(logits: jax.Array, temperature: jax.Array, top_p: jax.Array, seeds: jax.Array,
                  steps: jax.Array) -> jax.Array:
    """Per-row choice: greedy where ``temperature == 0``, else nucleus sampling at that
    temperature with key ``fold_in(PRNGKey(seed), step)`` (reproducible whatever else is
    in the batch). logits [B, V] fp32 -> int32 [B]."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    t = jnp.where(temperature > 0, temperature, 1.0)[:, None]
    scaled = logits / t
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
    keep_sorted = before < top_p[:, None]
    keep_sorted = keep_sorted.at[:, 0].set(True)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(order.shape[0])[:, None], order].set(keep_sorted)
    filtered = jnp.where(keep, scaled, -jnp.inf)
    keys = jax.vmap(lambda s, n: jax.random.fold_in(jax.random.PRNGKey(s), n))(seeds, steps)
    sampled = jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, filtered).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


# ---------------------------------------------------------------- prefill
def _stack_layers(buffers: Any) -> jax.Array:
    """Cache K or V, stacked [L, b, T, h, d] or a per-layer list -> [L, b, T, h, d]."""
    return buffers if not isinstance(buffers, (list, tuple)) else jnp.stack(buffers)


def _prefill(model, pages: PagedKV, ids, lengths, tables, temperature, top_p, seeds):
    """ids [n, T] left-padded; lengths [n]; tables [n, W]. Returns (first tokens [n], logits [n, V], pages)."""
    n, t = ids.shape
    cfg = model.config
    mask = (jnp.arange(t)[None, :] >= (t - lengths)[:, None]).astype(jnp.int32)
    positions = jnp.where(mask == 0, 1, jnp.cumsum(mask, axis=-1) - 1).astype(jnp.int32)
    family = get_family(cfg.model_type)
    cache = model.init_cache(n, t)
    logits, cache = family.forward(model.params, cfg, ids, attention_mask=mask, position_ids=positions,
                                   cache=cache, logits_to_keep=1)
    logits = logits[:, -1]
    # slot j of row i holds token position j - (T - length); padding goes to the scratch page
    pos = jnp.arange(t)[None, :] - (t - lengths)[:, None]
    valid = pos >= 0
    ps = pages.page_size
    page_ids = jnp.where(valid, jnp.take_along_axis(tables, jnp.maximum(pos, 0) // ps, axis=1), SCRATCH_PAGE)
    slots = jnp.where(valid, pos % ps, 0)
    k = _stack_layers(cache["k"]).astype(pages.k.dtype)  # [L, n, T, h, d]
    v = _stack_layers(cache["v"]).astype(pages.v.dtype)
    pages = PagedKV(pages.k.at[:, page_ids, slots].set(k), pages.v.at[:, page_ids, slots].set(v))
    first = choose_tokens(logits, temperature, top_p, seeds, jnp.zeros((n,), jnp.int32))
    return first, logits, pages


_prefill_jit = jax.jit(_prefill, donate_argnames=("pages",))


def prefill_into_pages(model: Any, pages: PagedKV, ids: Any, lengths: Any, tables: Any, *,
                       temperature: Any = None, top_p: Any = None, seeds: Any = None):
    """Prompts into their pages. ``ids`` [n, T] left-padded to a bucket, ``lengths`` [n] real
    lengths, ``tables`` [n, W] block tables. Returns ``(first_tokens [n], logits [n, V], pages)``;
    ``pages`` is donated (do not reuse the argument)."""
    n = np.shape(ids)[0]
    temperature = np.zeros((n,), np.float32) if temperature is None else temperature
    top_p = np.ones((n,), np.float32) if top_p is None else top_p
    seeds = np.zeros((n,), np.uint32) if seeds is None else seeds
    return _prefill_jit(model, pages, jnp.asarray(ids, jnp.int32), jnp.asarray(lengths, jnp.int32),
                        jnp.asarray(tables, jnp.int32), jnp.asarray(temperature, jnp.float32),
                        jnp.asarray(top_p, jnp.float32), jnp.asarray(seeds, jnp.uint32))


# ---------------------------------------------------------------- decode
def _layer_params(layers: Any, i: int) -> Any:
    if isinstance(layers, (list, tuple)):
        return layers[i]
    return jax.tree.map(lambda a: a[i], layers)


def _paged_layers(model, pages: PagedKV, ids, positions, page_ids, slots, attend):
    """The decoder over new tokens ids [n, t] at ``positions`` [n, t] with a paged cache: each
    layer writes its K/V at (``page_ids``, ``slots``) [n, t] first, then ``attend(q, k_pages,
    v_pages, window)`` reads them back through the block tables with the earlier ones. Returns
    the last layer's hidden states [n, t, D] (before the final norm) and the updated pages."""
    from zoo.models.llama.model import qkv_rope

    cfg = model.config
    params = model.params
    x = embed(params["embed_tokens"]["embedding"], ids, cfg.compute_dtype)
    cos, sin = rope_cos_sin(cfg.rope, positions, cfg.compute_dtype)
    k_pool, v_pool = pages.k, pages.v
    for i, window in enumerate(cfg.layer_windows()):
        lp = _layer_params(params["layers"], i)
        h = rms_norm(lp["input_layernorm"]["scale"], x, cfg.rms_norm_eps)
        q, k, v = qkv_rope(lp["self_attn"], cfg, h, cos, sin)
        k_pool = k_pool.at[i, page_ids, slots].set(k.astype(k_pool.dtype))
        v_pool = v_pool.at[i, page_ids, slots].set(v.astype(v_pool.dtype))
        out = attend(q, k_pool[i], v_pool[i], window)
        x = x + project(out.astype(x.dtype), lp["self_attn"]["o_proj"], "bthk,hkd->btd")
        h = rms_norm(lp["post_attention_layernorm"]["scale"], x, cfg.rms_norm_eps)
        x = x + gated_mlp(lp["mlp"], h, cfg.hidden_act)
    return x, PagedKV(k_pool, v_pool)


def _final_logits(model, x) -> jax.Array:
    """Logits [n, V] (fp32) of hidden states [n, 1, D]."""
    cfg, params = model.config, model.params
    h = rms_norm(params["norm"]["scale"], x, cfg.rms_norm_eps)
    return unembed(h, params, cfg.tie_word_embeddings)[:, 0].astype(jnp.float32)


def _decode(model, pages: PagedKV, tokens, positions, tables, active, temperature, top_p, seeds, steps):
    """One new token per row. tokens [B] (the last token of each row, not yet in the cache),
    positions [B] (its position), tables [B, W], active [B] bool."""
    from kernels import paged_decode_attention
    from zoo.models.llama.model import attention_scale

    cfg = model.config
    ps = pages.page_size
    write_page = jnp.where(active, jnp.take_along_axis(tables, (positions // ps)[:, None], axis=1)[:, 0],
                           SCRATCH_PAGE)
    write_slot = jnp.where(active, positions % ps, 0)
    lengths = jnp.where(active, positions + 1, 0)  # idle rows see nothing (their output is zeros)
    # On CPU the Pallas kernel only runs interpreted (slow): use the gather reference unless asked.
    backend = "xla" if jax.default_backend() == "cpu" and cfg.attn_implementation != "pallas" else None

    def attend(q, k_pages, v_pages, window):
        return paged_decode_attention(q, k_pages, v_pages, tables, lengths, scale=attention_scale(cfg),
                                      sliding_window=window, backend=backend)

    x, pages = _paged_layers(model, pages, tokens[:, None], positions[:, None], write_page[:, None],
                             write_slot[:, None], attend)
    logits = _final_logits(model, x)
    nxt = choose_tokens(logits, temperature, top_p, seeds, steps)
    return nxt, logits, pages


_decode_jit = jax.jit(_decode, donate_argnames=("pages",))


def paged_decode_step(model: Any, pages: PagedKV, tokens: Any, positions: Any, tables: Any, active: Any, *,
                      temperature: Any = None, top_p: Any = None, seeds: Any = None, steps: Any = None):
    """One decode step for the whole batch. Returns ``(next_tokens [B], logits [B, V], pages)``;
    ``pages`` is donated. ``steps[b]`` numbers the row's sampling draws (0 was the prefill's)."""
    b = np.shape(tokens)[0]
    temperature = np.zeros((b,), np.float32) if temperature is None else temperature
    top_p = np.ones((b,), np.float32) if top_p is None else top_p
    seeds = np.zeros((b,), np.uint32) if seeds is None else seeds
    steps = np.ones((b,), np.int32) if steps is None else steps
    return _decode_jit(model, pages, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32),
                       jnp.asarray(tables, jnp.int32), jnp.asarray(active, bool),
                       jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                       jnp.asarray(seeds, jnp.uint32), jnp.asarray(steps, jnp.int32))


# ---------------------------------------------------------------- chunked prefill
def _chunk_attention(q, k_pages, v_pages, tables, q_positions, kv_len, scale, window):
    """Attention of a chunk's queries [n, C, H, d] through the block tables [n, W]: key slot j
    of a row holds position j; slots at or past ``kv_len`` [n] are empty. Flash-style: a loop
    over blocks of about C keys with an online softmax, from the first block a query can see
    (its window) to the last filled one, so the work and memory follow the sequence's length,
    not the table width (max_model_len)."""
    n, c, hq, d = q.shape
    ps, hk = k_pages.shape[1], k_pages.shape[2]
    g = hq // hk
    block_pages = max(1, c // ps)
    bk = block_pages * ps
    w = tables.shape[1]
    tables = jnp.pad(tables, ((0, 0), (0, -(-w // block_pages) * block_pages - w)))  # pad: scratch page
    qg = q.astype(jnp.float32).reshape(n, c, hk, g, d)
    q_pos = q_positions[:, None, None, :, None]  # [n, 1, 1, C, 1]
    hi = (jnp.max(kv_len) + bk - 1) // bk
    lo = 0 if window is None else jnp.maximum(jnp.min(q_positions[:, 0]) - window + 1, 0) // bk

    def block(j, carry):
        m, l, acc = carry
        ids = jax.lax.dynamic_slice_in_dim(tables, j * block_pages, block_pages, axis=1)
        k = k_pages[ids].reshape(n, bk, hk, d).astype(jnp.float32)
        v = v_pages[ids].reshape(n, bk, hk, d).astype(jnp.float32)
        kv_pos = (j * bk + jnp.arange(bk, dtype=jnp.int32))[None, None, None, None, :]
        visible = (kv_pos <= q_pos) & (kv_pos < kv_len[:, None, None, None, None])
        if window is not None:
            visible &= kv_pos > q_pos - window
        s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, precision=jax.lax.Precision.HIGHEST) * scale
        s = jnp.where(visible, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.exp(s - m_new[..., None])
        correction = jnp.exp(m - m_new)
        l = l * correction + jnp.sum(p, axis=-1)
        acc = acc * correction[..., None] + jnp.einsum("bhgqk,bkhd->bhgqd", p, v,
                                                       precision=jax.lax.Precision.HIGHEST)
        return m_new, l, acc

    init = (jnp.full((n, hk, g, c), -1e30, jnp.float32), jnp.zeros((n, hk, g, c), jnp.float32),
            jnp.zeros((n, hk, g, c, d), jnp.float32))
    _, l, acc = jax.lax.fori_loop(lo, hi, block, init)
    out = acc / jnp.where(l == 0.0, 1.0, l)[..., None]  # every real query sees itself: l > 0
    return out.transpose(0, 3, 1, 2, 4).reshape(n, c, hq, d).astype(q.dtype)


def _prefill_chunk(model, pages: PagedKV, ids, starts, counts, tables, temperature, top_p, seeds):
    """ids [n, C] right-padded chunk tokens; starts [n] position of each chunk's first token;
    counts [n] real tokens in the chunk (>= 1); tables [n, W]. Returns (token [n], logits [n, V],
    pages): the token and logits of each chunk's last real token (meaningful on a prompt's last chunk)."""
    from zoo.models.llama.model import attention_scale

    cfg = model.config
    ps = pages.page_size
    n, c = ids.shape
    offsets = jnp.arange(c, dtype=jnp.int32)[None, :]
    positions = starts[:, None] + offsets  # padding continues the count: finite rope, output unused
    real = offsets < counts[:, None]
    page_ids = jnp.where(real, jnp.take_along_axis(tables, jnp.minimum(positions // ps, tables.shape[1] - 1),
                                                   axis=1), SCRATCH_PAGE)
    slots = jnp.where(real, positions % ps, 0)
    kv_len = starts + counts

    def attend(q, k_pages, v_pages, window):
        return _chunk_attention(q, k_pages, v_pages, tables, positions, kv_len, attention_scale(cfg), window)

    x, pages = _paged_layers(model, pages, ids, positions, page_ids, slots, attend)
    last = jnp.take_along_axis(x, (counts - 1)[:, None, None], axis=1)  # [n, 1, D]
    logits = _final_logits(model, last)
    first = choose_tokens(logits, temperature, top_p, seeds, jnp.zeros((n,), jnp.int32))
    return first, logits, pages


_prefill_chunk_jit = jax.jit(_prefill_chunk, donate_argnames=("pages",))


def check_chunk_size(chunk_size: Any) -> int:
    """A prefill chunk size: a positive int (tokens per chunk)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise ValueError(f"prefill_chunk_size must be a positive number of tokens, got {chunk_size!r}")
    return int(chunk_size)


MIN_CHUNK = 16


def chunk_shapes(chunk_size: int) -> tuple[int, ...]:
    """The padded lengths a prefill chunk runs at: ``chunk_size`` and its halvings down to
    ``MIN_CHUNK`` (256 -> 16, 32, 64, 128, 256), so a short prompt or a long prompt's last
    piece does not pay for a whole chunk of padding. A fixed set (log2(chunk / 16) + 1
    compiles, all made by the server's warmup), whatever the prompt lengths."""
    sizes = [check_chunk_size(chunk_size)]
    while sizes[-1] // 2 >= MIN_CHUNK:
        sizes.append(sizes[-1] // 2)
    return tuple(sorted(sizes))


def chunk_shape(count: int, chunk_size: int) -> int:
    """The smallest of :func:`chunk_shapes` that holds ``count`` tokens."""
    return next(s for s in chunk_shapes(chunk_size) if s >= count)


def prompt_chunks(prompt_len: int, chunk_size: int, start: int = 0) -> list[tuple[int, int]]:
    """``(start, count)`` of each chunk that prefills positions ``start..prompt_len-1``."""
    check_chunk_size(chunk_size)
    return [(s, min(chunk_size, prompt_len - s)) for s in range(start, prompt_len, chunk_size)]


def prefill_chunk_into_pages(model: Any, pages: PagedKV, ids: Any, starts: Any, counts: Any, tables: Any, *,
                             temperature: Any = None, top_p: Any = None, seeds: Any = None):
    """One chunk of each of ``n`` prompts into their pages. ``ids`` [n, C]: the chunk's tokens,
    right-padded to the chunk size C (one compiled shape for every prompt length); ``starts`` [n]:
    how many tokens of the prompt are already in the pages (the chunk's first position);
    ``counts`` [n]: real tokens in the chunk (1..C); ``tables`` [n, W]: block tables with pages
    for at least ``starts + counts`` tokens. Returns ``(tokens [n], logits [n, V], pages)``:
    the choice after each chunk's last real token (the first generated token when the chunk
    ends the prompt); ``pages`` is donated."""
    n, c = np.shape(ids)
    starts_np, counts_np = np.asarray(starts), np.asarray(counts)
    if np.any(counts_np < 1) or np.any(counts_np > c):
        raise ValueError(f"chunk token counts must be in 1..{c} (the chunk size), got {counts_np.tolist()}")
    if np.any(starts_np < 0):
        raise ValueError(f"chunk starts must be >= 0, got {starts_np.tolist()}")
    capacity = np.shape(tables)[1] * pages.page_size
    if np.any(starts_np + counts_np > capacity):
        raise ValueError(f"chunk ends {(starts_np + counts_np).tolist()} past the block table's "
                         f"{capacity} token slots")
    temperature = np.zeros((n,), np.float32) if temperature is None else temperature
    top_p = np.ones((n,), np.float32) if top_p is None else top_p
    seeds = np.zeros((n,), np.uint32) if seeds is None else seeds
    return _prefill_chunk_jit(model, pages, jnp.asarray(ids, jnp.int32), jnp.asarray(starts, jnp.int32),
                              jnp.asarray(counts, jnp.int32), jnp.asarray(tables, jnp.int32),
                              jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                              jnp.asarray(seeds, jnp.uint32))


def prefill_chunk_compiles() -> int:
    """How many shapes the chunked prefill has compiled in this process (one per padded chunk
    length, batch and table width; never one per prompt length)."""
    return _prefill_chunk_jit._cache_size()


__all__ = ["PagedKV", "PageAllocator", "OutOfPages", "init_pages", "pages_needed", "block_table_row",
           "prefill_into_pages", "prefill_chunk_into_pages", "prompt_chunks", "check_chunk_size",
           "prefill_chunk_compiles", "chunk_shapes", "chunk_shape", "paged_decode_step", "choose_tokens", "check_supported", "SCRATCH_PAGE"]
