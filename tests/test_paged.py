"""Paged KV cache (zoo/generation/paged.py): decoding through pages gives the tokens of the
static-cache ``generate`` path and the logits of a full forward pass; the page allocator hands
out and takes back pages; a pool that is too small queues work instead of failing it."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close_rel

MAX_NEW = 7
PAGE = 4  # small pages: every sequence spans several, interleaved with its neighbours'


def tiny_decoder(kind: str):
    import jax

    from zoo import AutoModelForCausalLM
    from zoo.models.llama.config import LlamaConfig
    from zoo.models.qwen3.config import Qwen3Config

    common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, eos_token_id=None)
    cfg = {
        "llama": lambda: LlamaConfig.from_dict(common),
        # q/k norms, and a mix of full layers and sliding layers whose window (6) is shorter
        # than prompt + completion, so the paged kernel must drop old keys
        "qwen3": lambda: Qwen3Config.from_dict({**common, "head_dim": 8, "use_sliding_window": True,
                                                 "sliding_window": 6,
                                                 "layer_types": ["full_attention", "sliding_attention"]}),
    }[kind]()
    return AutoModelForCausalLM.from_config(cfg, jax.random.PRNGKey(1))


def interleaved_pages(alloc, needs: list[int]) -> list[list[int]]:
    """One page at a time, round robin, so no sequence owns a contiguous run of pages."""
    owned: list[list[int]] = [[] for _ in needs]
    while any(len(o) < n for o, n in zip(owned, needs)):
        for o, n in zip(owned, needs):
            if len(o) < n:
                o.extend(alloc.allocate(1))
    return owned


def paged_greedy(model, prompts: list[list[int]], join_after: list[int], batch: int = 3):
    """Greedy decoding of ``prompts`` through the paged cache; prompt i joins the running batch
    after ``join_after[i]`` decode steps (continuous batching). Returns per-prompt tokens and
    the logits that chose each of them."""
    from zoo.generation import paged
    from zoo.generation.decode import bucket_length

    cfg = model.config
    width = paged.pages_needed(cfg.max_position_embeddings, PAGE)
    pool = paged.init_pages(cfg, num_pages=24, page_size=PAGE)
    alloc = paged.PageAllocator(24)
    owned = interleaved_pages(alloc, [paged.pages_needed(len(p) + MAX_NEW, PAGE) for p in prompts])
    tables = np.zeros((batch, width), np.int32)
    tokens = np.zeros((batch,), np.int32)
    positions = np.zeros((batch,), np.int32)
    active = np.zeros((batch,), bool)
    out_tokens: list[list[int]] = [[] for _ in prompts]
    out_logits: list[list[np.ndarray]] = [[] for _ in prompts]
    step = 0
    while any(len(t) < MAX_NEW for t in out_tokens):
        for i, prompt in enumerate(prompts):
            if join_after[i] == step and not out_tokens[i]:
                n = len(prompt)
                bucket = bucket_length(n)
                ids = np.zeros((1, bucket), np.int32)
                ids[0, bucket - n:] = prompt
                tables[i] = paged.block_table_row(owned[i], width)
                first, logits, pool = paged.prefill_into_pages(model, pool, ids, [n], tables[i:i + 1])
                out_tokens[i].append(int(np.asarray(first)[0]))
                out_logits[i].append(np.asarray(logits)[0])
                tokens[i], positions[i], active[i] = out_tokens[i][-1], n, True
        nxt, logits, pool = paged.paged_decode_step(model, pool, tokens, positions, tables, active)
        nxt, logits = np.asarray(nxt), np.asarray(logits)
        for i in range(len(prompts)):
            if active[i]:
                out_tokens[i].append(int(nxt[i]))
                out_logits[i].append(logits[i])
                tokens[i] = nxt[i]
                positions[i] += 1
                if len(out_tokens[i]) >= MAX_NEW:
                    active[i] = False
                    alloc.free(owned[i])
        step += 1
    assert alloc.num_free == 23, "every page went back to the pool"
    return out_tokens, out_logits


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_paged_decoding_matches_static_cache_and_full_forward(kind):
    model = tiny_decoder(kind)
    rng = np.random.RandomState(0)
    prompts = [rng.randint(3, 96, n).tolist() for n in (5, 9, 2)]
    toks, logits = paged_greedy(model, prompts, join_after=[0, 2, 3])
    # the static-cache path: one left-padded batch through generate
    longest = max(map(len, prompts))
    ids = np.zeros((len(prompts), longest), np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):], mask[i, longest - len(p):] = p, 1
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    ref_logits = np.stack(ref.logits, axis=1)  # [batch, new, vocab]
    # and no cache at all: each whole sequence, right-padded (causal: padding after cannot matter)
    whole = [p + t[:-1] for p, t in zip(prompts, toks)]
    flat = np.zeros((len(whole), max(map(len, whole))), np.int32)
    for i, w in enumerate(whole):
        flat[i, :len(w)] = w
    full = np.asarray(model(flat).logits)
    for i, (prompt, got, got_logits) in enumerate(zip(prompts, toks, logits)):
        assert got == ref.sequences[i, longest:].tolist()
        assert_close_rel(np.stack(got_logits), ref_logits[i], 1e-5)
        assert_close_rel(np.stack(got_logits), full[i, len(prompt) - 1: len(whole[i])], 1e-5)


def test_paged_decoding_with_stacked_layers_and_idle_rows():
    """The scan layout (stacked layer weights) decodes the same; an idle row writes only to the
    scratch page, so it does not disturb its neighbours."""
    per_layer = tiny_decoder("llama")
    stacked = per_layer.with_layout(scan_layers=True)
    assert stacked.config.scan_layers
    prompts = [[7, 8, 9, 10], [11, 12]]
    a, la = paged_greedy(per_layer, prompts, join_after=[0, 4])
    b, lb = paged_greedy(stacked, prompts, join_after=[0, 4])
    assert a == b
    for x, y in zip(la, lb):
        assert_close_rel(np.stack(x), np.stack(y), 1e-5)


def test_page_allocator_hands_out_and_takes_back():
    from zoo.generation.paged import SCRATCH_PAGE, OutOfPages, PageAllocator, block_table_row, pages_needed

    alloc = PageAllocator(6)
    assert alloc.num_free == 5
    a = alloc.allocate(2)
    b = alloc.allocate(3)
    assert SCRATCH_PAGE not in a + b and len(set(a + b)) == 5
    assert alloc.num_free == 0
    with pytest.raises(OutOfPages, match="asked for 1 pages, 0 free of 5"):
        alloc.allocate(1)
    alloc.free(a)
    assert alloc.num_free == 2 and sorted(alloc.allocate(2)) == sorted(a)
    with pytest.raises(ValueError, match="not pages of this pool"):
        alloc.free([SCRATCH_PAGE])
    with pytest.raises(ValueError, match="not pages of this pool"):
        alloc.free([6])
    assert pages_needed(1, 4) == 1 and pages_needed(4, 4) == 1 and pages_needed(5, 4) == 2
    assert block_table_row([3, 5], 4).tolist() == [3, 5, SCRATCH_PAGE, SCRATCH_PAGE]
    with pytest.raises(ValueError, match="do not fit a block table of width 1"):
        block_table_row([3, 5], 1)


def test_pool_configuration_errors_are_clear():
    from zoo.generation import paged

    from zoo.models.llama.config import LlamaConfig
    from zoo.models.gpt2.config import GPT2Config

    with pytest.raises(ValueError, match="num_pages must be >= 2"):
        paged.init_pages(LlamaConfig(), 1, 4)
    with pytest.raises(ValueError, match="model_type 'gpt2' is not one of them"):
        paged.init_pages(GPT2Config(), 8, 4)


def test_engine_queues_when_pages_run_out(tiny_chat_dir):
    """A pool with room for one sequence at a time: the second request waits for the first's
    pages (no error, no preemption) and both produce what they produce alone."""
    from zoo import AutoModelForCausalLM
    from zoo.serving.engine import Engine, Finished, SamplingParams
    from zoo.tokenization import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_chat_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_dir), scan_layers=False)
    # 2 pages of 16 = one sequence of up to 32 tokens; two rows, so rows are not the limit
    engine = Engine(model, tok, max_batch=2, page_size=16, num_pages=3, max_model_len=32).start()
    try:
        import threading

        params = SamplingParams(max_tokens=8, ignore_eos=True)
        prompts = [tok.encode("Hello there, how are you"), tok.encode("Tell me a story")]
        done = [threading.Event(), threading.Event()]
        results: list = [None, None]
        running_together = []

        def sink(i):
            def put(event):
                running_together.append(int(engine.active.sum()))
                if isinstance(event, Finished):
                    results[i] = event
                    done[i].set()
            return put

        engine.pause(wait=True)  # submit both before the engine looks, so the second has to queue
        for i, p in enumerate(prompts):
            engine.submit(p, params, sink(i))
        engine.resume()
        assert all(d.wait(120) for d in done)
        assert [r.reason for r in results] == ["length", "length"]
        assert [r.completion_tokens for r in results] == [8, 8]
        assert max(running_together) == 1, "the pool only holds one sequence at a time"
        assert engine.allocator.num_free == 2
        width = max(map(len, prompts))
        ids = np.array([[0] * (width - len(p)) + p for p in prompts])
        mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None)
        for i, r in enumerate(results):
            assert r.text == tok.decode(ref[i, width:].tolist(), skip_special_tokens=True)
        # a request that can never fit the pool is refused up front
        with pytest.raises(ValueError, match="maximum context length is 32"):
            engine.submit(list(range(3, 30)), SamplingParams(max_tokens=8), lambda e: None)
    finally:
        engine.shutdown()


# ---------------------------------------------------------------- chunked prefill
CHUNK = 8  # two pages of PAGE


def chunked_greedy(model, prompts: list[list[int]], chunk: int = CHUNK):
    """Greedy decoding with every prompt prefilled ``chunk`` tokens at a time, the chunks of the
    prompts taken round robin (so each chunk writes among its neighbours' pages), then one
    decode batch. Returns per-prompt tokens and the logits that chose each of them."""
    from zoo.generation import paged

    cfg = model.config
    width = paged.pages_needed(cfg.max_position_embeddings, PAGE)
    pool = paged.init_pages(cfg, num_pages=40, page_size=PAGE)
    alloc = paged.PageAllocator(40)
    owned = interleaved_pages(alloc, [paged.pages_needed(len(p) + MAX_NEW, PAGE) for p in prompts])
    tables = np.stack([paged.block_table_row(o, width) for o in owned])
    pending = [paged.prompt_chunks(len(p), chunk) for p in prompts]
    out_tokens: list[list[int]] = [[] for _ in prompts]
    out_logits: list[list[np.ndarray]] = [[] for _ in prompts]
    while any(pending):
        for i, prompt in enumerate(prompts):
            if not pending[i]:
                continue
            start, count = pending[i].pop(0)
            ids = np.zeros((1, chunk), np.int32)
            ids[0, :count] = prompt[start:start + count]
            tok, logits, pool = paged.prefill_chunk_into_pages(model, pool, ids, [start], [count], tables[i:i + 1])
            if not pending[i]:  # the prompt's last chunk chose its first token
                out_tokens[i].append(int(np.asarray(tok)[0]))
                out_logits[i].append(np.asarray(logits)[0])
    tokens = np.array([t[0] for t in out_tokens], np.int32)
    positions = np.array([len(p) for p in prompts], np.int32)
    active = np.ones((len(prompts),), bool)
    for _ in range(MAX_NEW - 1):
        nxt, logits, pool = paged.paged_decode_step(model, pool, tokens, positions, tables, active)
        for i, (t, lg) in enumerate(zip(np.asarray(nxt), np.asarray(logits))):
            out_tokens[i].append(int(t))
            out_logits[i].append(lg)
        tokens, positions = np.asarray(nxt), positions + 1
    return out_tokens, out_logits


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_chunked_prefill_matches_generate_and_compiles_once(kind):
    """Prompts shorter than a chunk, exactly one chunk, and several chunks long with a ragged
    last chunk (27 = 3 x 8 + 3: not a multiple of the chunk nor of the page) decode exactly
    as ``generate``, logits included; qwen3's window (6) is shorter than a chunk, so windowed
    layers must drop keys of earlier chunks. Every prompt length runs the same compiled chunk."""
    from zoo.generation import paged

    model = tiny_decoder(kind)
    rng = np.random.RandomState(1)
    prompts = [rng.randint(3, 96, n).tolist() for n in (5, CHUNK, 27, 13)]
    compiles = paged.prefill_chunk_compiles()
    toks, logits = chunked_greedy(model, prompts[:1])
    assert paged.prefill_chunk_compiles() == compiles + 1
    toks, logits = chunked_greedy(model, prompts)
    assert paged.prefill_chunk_compiles() == compiles + 1, "a new prompt length compiled a new shape"
    longest = max(map(len, prompts))
    ids = np.zeros((len(prompts), longest), np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):], mask[i, longest - len(p):] = p, 1
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    ref_logits = np.stack(ref.logits, axis=1)
    for i in range(len(prompts)):
        assert toks[i] == ref.sequences[i, longest:].tolist(), f"prompt of {len(prompts[i])} tokens"
        assert_close_rel(np.stack(logits[i]), ref_logits[i], 1e-5)
    # and the same first-token logits as the whole-prompt prefill into pages
    whole_tokens, whole_logits = paged_greedy(model, prompts[2:3], join_after=[0], batch=1)
    assert whole_tokens[0] == toks[2]
    assert_close_rel(np.stack(whole_logits[0]), np.stack(logits[2]), 1e-5)


def test_chunked_prefill_bad_values_are_clear():
    from zoo.cli.main import build_parser
    from zoo.cli import serve as serve_cli
    from zoo.generation import paged
    from zoo.serving.engine import Engine

    assert paged.chunk_shapes(256) == (16, 32, 64, 128, 256)
    assert paged.chunk_shapes(100) == (25, 50, 100) and paged.chunk_shapes(8) == (8,)
    assert [paged.chunk_shape(n, 256) for n in (1, 16, 17, 100, 256)] == [16, 16, 32, 128, 256]
    assert paged.prompt_chunks(27, 8) == [(0, 8), (8, 8), (16, 8), (24, 3)]
    model = tiny_decoder("llama")
    for bad in (0, -16, 2.5, True, "256"):
        with pytest.raises(ValueError, match="prefill_chunk_size must be a positive number of tokens"):
            Engine(model, None, max_batch=1, page_size=PAGE, prefill_chunk_size=bad)
    # a chunk longer than any prompt can be is capped, not refused; None turns chunking off
    assert Engine(model, None, max_batch=1, page_size=PAGE, prefill_chunk_size=1000).prefill_chunk_size == 64
    assert Engine(model, None, max_batch=1, page_size=PAGE, prefill_chunk_size=None).prefill_chunk_size is None
    pool = paged.init_pages(model.config, 4, PAGE)
    table = paged.block_table_row([1, 2], 2)[None]
    with pytest.raises(ValueError, match=r"chunk token counts must be in 1..8"):
        paged.prefill_chunk_into_pages(model, pool, np.zeros((1, 8), np.int32), [0], [9], table)
    with pytest.raises(ValueError, match="past the block table's 8 token slots"):
        paged.prefill_chunk_into_pages(model, pool, np.zeros((1, 8), np.int32), [4], [8], table)
    args = build_parser().parse_args(["serve", "--model", "unused", "--prefill-chunk-size", "0"])
    with pytest.raises(ValueError, match="--prefill-chunk-size must be positive, got 0"):
        serve_cli.run(args)


@pytest.mark.parametrize("chunked", [True, False])
def test_running_request_streams_while_a_long_prompt_prefills(tiny_chat_dir, chunked, monkeypatch):
    """Request A is decoding when request B, whose prompt is five chunks long, arrives. With
    chunked prefill A gets a token between any two of B's chunks (the order of engine events,
    not timing); prefilled whole, B's prompt goes in in one call. Both answers equal
    ``generate``'s either way, and B's prompt length compiled no new chunk shape. A request
    cancelled halfway through its prefill gives its row and pages back."""
    import threading

    from zoo import AutoModelForCausalLM
    from zoo.generation import paged
    from zoo.serving.engine import Engine, Finished, SamplingParams
    from zoo.tokenization import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_chat_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_dir), scan_layers=False)
    engine = Engine(model, tok, max_batch=2, page_size=PAGE, max_model_len=96,
                    prefill_chunk_size=CHUNK if chunked else None)
    engine.warmup((8, 64))
    compiles = paged.prefill_chunk_compiles()
    prompt_a = tok.encode("Hello there")
    prompt_b = tok.encode("the zoo keeps its models as plain functions of their weights and its pages " * 3)[:37]
    assert len(prompt_a) <= CHUNK and len(prompt_b) == 37  # B: 4 x 8 + 5, five chunks, the last ragged
    prefill_calls: list[tuple[int, int, int]] = []  # (first position, tokens, A's tokens so far)
    cancel_at_16: list = []  # a sequence to cancel while its chunk at position 16 runs
    name = "prefill_chunk_into_pages" if chunked else "prefill_into_pages"
    real = getattr(paged, name)

    def recording(model, pages, ids, *args, **kwargs):
        start, count = (args[0][0], args[1][0]) if chunked else (0, args[0][0])
        prefill_calls.append((int(start), int(count), len(a_seq.out)))
        if cancel_at_16 and start == 16:
            engine.cancel(cancel_at_16[0])
        return real(model, pages, ids, *args, **kwargs)

    monkeypatch.setattr(paged, name, recording)
    finished: dict[str, Finished] = {}
    done = threading.Event()

    def sink(who):
        def put(event):
            if who == "A" and not finished and len(a_seq.out) >= 2 and not b_seq:
                # A is decoding: now B arrives (submitted on the engine thread, so no race)
                b_seq.append(engine.submit(prompt_b, SamplingParams(max_tokens=4, ignore_eos=True), sink("B")))
            if isinstance(event, Finished):
                finished[who] = event
                if len(finished) == 2:
                    done.set()
        return put

    b_seq: list = []
    a_seq = engine.submit(prompt_a, SamplingParams(max_tokens=20, ignore_eos=True), sink("A"))
    engine.start()
    try:
        assert done.wait(120), prefill_calls
        calls_a_b = list(prefill_calls)
        if chunked:
            cancelled = threading.Event()
            c_end: list = []
            c_sink = lambda e: (c_end.append(e), cancelled.set()) if isinstance(e, Finished) else None  # noqa: E731
            cancel_at_16.append(engine.submit(prompt_b, SamplingParams(max_tokens=4), c_sink))
            assert cancelled.wait(60)
            assert [c[:2] for c in prefill_calls[len(calls_a_b):]] == [(0, 8), (8, 8), (16, 8)]
            assert (c_end[0].reason, c_end[0].completion_tokens) == ("cancelled", 0)
            assert engine.allocator.num_free == engine.num_pages - 1
            assert not engine.prefilling and engine.rows == [None, None]
    finally:
        engine.shutdown()
    assert calls_a_b[0] == (0, len(prompt_a), 0)
    b_calls = calls_a_b[1:]
    if chunked:
        assert [(s, n) for s, n, _ in b_calls] == [(0, 8), (8, 8), (16, 8), (24, 8), (32, 5)]
        a_progress = [a for _, _, a in b_calls]
        assert a_progress == list(range(a_progress[0], a_progress[0] + 5)), "A decoded once between B's chunks"
        assert a_progress[0] >= 2
        assert paged.prefill_chunk_compiles() == compiles, "B's prompt length compiled a new chunk shape"
    else:
        assert [(s, n) for s, n, _ in b_calls] == [(0, len(prompt_b))]
    for who, prompt, n in (("A", prompt_a, 20), ("B", prompt_b, 4)):
        ref = model.generate([prompt], max_new_tokens=n, do_sample=False, eos_token_id=None)
        assert finished[who].reason == "length"
        assert finished[who].text == tok.decode(ref[0, len(prompt):].tolist(), skip_special_tokens=True), who
