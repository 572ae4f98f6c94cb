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
