"""Server load benchmark: requests/s and time-to-first-token at 1, 8 and 32 concurrent clients,
continuous batching on vs off (``--batching static``: a batch runs to its end before the next).

Builds a small random Llama with a byte-level BPE tokenizer (tests/tiny_chat.py) unless
``--model`` names a checkpoint folder, runs the OpenAI-compatible server in this process
(uvicorn in a thread), compiles everything first, then drives it with the official
``openai`` async client: streaming completions with ``ignore_eos`` so every request makes
exactly the tokens it asks for. Prompt lengths (3..20 words) and lengths asked for
(``--max-tokens``/4 .. ``--max-tokens``) vary, so static batching pays for waiting on the
longest row of each batch; continuous batching refills a row as soon as it frees.

    python benchmarks/bench_server.py [--model DIR] [--hidden 256 --layers 4] [--max-tokens 32]

``--mixed``: chunked prefill on vs off instead. One client keeps sending a long prompt
(``--long-prompt`` tokens, a few tokens asked) while ``--short-clients`` clients stream short
requests; prints the short requests' time-to-first-token and inter-token latency (ITL: the
gaps between streamed tokens), which a long prompt prefilled in one go stalls.

    python benchmarks/bench_server.py --mixed [--long-prompt 1536] [--prefill-chunk-size 256]
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_model(folder: Path, hidden: int, layers: int, max_len: int = 256) -> Path:
    import jax

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_chat import SPECIALS, build_tokenizer

    from zoo import AutoModelForCausalLM
    from zoo.models.llama.config import LlamaConfig

    vocab = build_tokenizer(folder).get_vocab_size()
    heads = max(hidden // 32, 1)
    cfg = LlamaConfig.from_dict(dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1), max_position_embeddings=max_len,
        initializer_range=0.05, bos_token_id=1, eos_token_id=SPECIALS.index("<|end|>"), pad_token_id=0))
    AutoModelForCausalLM.from_config(cfg, jax.random.PRNGKey(0)).save_pretrained(folder)
    return folder


class RunningServer:
    def __init__(self, model_dir: Path, batching: str, max_batch: int, max_tokens: int, max_model_len: int = 256,
                 prefill_chunk_size: int | None = 256, warmup: tuple[int, ...] = (4, 8, 16, 32, 64, 128)):
        import uvicorn

        from zoo.serving import build_app, load_engine

        self.engine = load_engine(str(model_dir), max_batch=max_batch, page_size=16, max_model_len=max_model_len,
                                  max_queued=256, batching=batching, prefill_chunk_size=prefill_chunk_size)
        self.engine.warmup(warmup)
        self.engine.start()
        app = build_app(self.engine, "bench", max_tokens=max_tokens)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.shutdown()


async def drive(port: int, concurrency: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                timeout=600)
    words = "the zoo keeps its models as plain functions of their weights and pages".split()
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        prompt = " ".join(words[j % len(words)] for j in range(i * 3, i * 3 + 3 + (i * 7) % 18))
        queue.put_nowait((prompt, max_tokens // 4 + (i * 13) % (max_tokens - max_tokens // 4 + 1)))
    ttfts, tokens = [], 0

    async def client_loop():
        nonlocal tokens
        while not queue.empty():
            prompt, n_tokens = queue.get_nowait()
            t0 = time.perf_counter()
            first = None
            stream = await client.completions.create(
                model="bench", prompt=prompt, max_tokens=n_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter() - t0
                if chunk.usage is not None:
                    tokens += chunk.usage.completion_tokens
            ttfts.append(first if first is not None else time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    ttfts.sort()
    return {"req_s": requests / wall, "tok_s": tokens / wall, "ttft_mean": statistics.mean(ttfts),
            "ttft_p50": ttfts[len(ttfts) // 2], "ttft_p90": ttfts[int(len(ttfts) * 0.9)], "wall": wall}


async def drive_mixed(port: int, short_clients: int, short_requests: int, long_tokens: int,
                      max_tokens: int) -> dict:
    """Short streaming requests from ``short_clients`` clients while one client keeps sending a
    ``long_tokens``-token prompt (4 tokens asked). Latencies of the short requests only."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                timeout=600)
    long_prompt = [5 + (i * 7) % 200 for i in range(long_tokens)]  # token ids: the length is exact
    ttfts, gaps, long_ttfts = [], [], []
    shorts_done = asyncio.Event()

    async def stream(prompt, n_tokens):
        t0 = time.perf_counter()
        times = []
        response = await client.completions.create(
            model="bench", prompt=prompt, max_tokens=n_tokens, temperature=0, stream=True,
            extra_body={"ignore_eos": True})
        async for chunk in response:
            if chunk.choices and chunk.choices[0].text:
                times.append(time.perf_counter())
        return t0, times

    async def long_client():
        while not shorts_done.is_set():
            t0, times = await stream(long_prompt, 4)
            long_ttfts.append(times[0] - t0 if times else float("nan"))

    async def short_client(k: int):
        words = "the zoo keeps its models as plain functions of their weights and pages".split()
        for i in range(short_requests):
            await asyncio.sleep(0.05 * k)  # stagger, so short requests arrive during long prefills
            prompt = " ".join(words[(j + k) % len(words)] for j in range(4 + (i + k) % 8))
            t0, times = await stream(prompt, max_tokens)
            if times:
                ttfts.append(times[0] - t0)
                gaps.extend(b - a for a, b in zip(times, times[1:]))

    async def shorts():
        await asyncio.sleep(0.2)  # the long client's first request is in flight
        await asyncio.gather(*(short_client(k) for k in range(short_clients)))
        shorts_done.set()

    t0 = time.perf_counter()
    await asyncio.gather(long_client(), shorts())
    wall = time.perf_counter() - t0
    await client.close()
    ttfts.sort()
    gaps.sort()
    nan = float("nan")
    pick = lambda xs, q: xs[min(int(len(xs) * q), len(xs) - 1)] if xs else nan  # noqa: E731
    mean = lambda xs: statistics.mean(xs) if xs else nan  # noqa: E731
    return {"ttft_mean": mean(ttfts), "ttft_p50": pick(ttfts, 0.5), "ttft_p90": pick(ttfts, 0.9),
            "itl_mean": mean(gaps), "itl_p50": pick(gaps, 0.5), "itl_p90": pick(gaps, 0.9),
            "itl_p99": pick(gaps, 0.99), "itl_max": pick(gaps, 1.0), "long_ttft_mean": mean(long_ttfts),
            "long_requests": len(long_ttfts), "short_requests": len(ttfts), "wall": wall}


def main_mixed(args) -> int:
    max_len = args.long_prompt + 64
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model(Path(tmp), args.hidden, args.layers, max_len)
        results = {}
        for label, chunk in (("chunked", args.prefill_chunk_size), ("whole", None)):
            srv = RunningServer(model_dir, "continuous", args.max_batch, args.max_tokens, max_model_len=max_len,
                                prefill_chunk_size=chunk, warmup=(4, 8, 16, 32, args.long_prompt))
            try:
                asyncio.run(drive_mixed(srv.port, 1, 1, args.long_prompt, 4))  # first-request costs out of the way
                r = asyncio.run(drive_mixed(srv.port, args.short_clients, args.short_requests, args.long_prompt,
                                            args.max_tokens))
                results[label] = r
                print(f"{label:>8}: short TTFT mean {r['ttft_mean'] * 1e3:7.1f} p50 {r['ttft_p50'] * 1e3:7.1f} "
                      f"p90 {r['ttft_p90'] * 1e3:7.1f} ms | ITL mean {r['itl_mean'] * 1e3:6.1f} "
                      f"p50 {r['itl_p50'] * 1e3:6.1f} p90 {r['itl_p90'] * 1e3:6.1f} p99 {r['itl_p99'] * 1e3:6.1f} "
                      f"max {r['itl_max'] * 1e3:7.1f} ms | long TTFT mean {r['long_ttft_mean'] * 1e3:7.1f} ms "
                      f"({r['long_requests']} long, {r['short_requests']} short, {r['wall']:.1f} s)", flush=True)
            finally:
                srv.close()
    print(f"\nmodel: {args.model or f'random Llama hidden {args.hidden} x {args.layers} layers'}, "
          f"long prompt {args.long_prompt} tokens, {args.short_clients} short clients x {args.short_requests} "
          f"requests of up to {args.max_tokens} tokens, chunk {args.prefill_chunk_size}, max_batch {args.max_batch}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint folder (default: build a random Llama)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-client", type=int, default=2, help="requests = max(8, this x concurrency)")
    ap.add_argument("--mixed", action="store_true", help="chunked prefill on vs off: one long-prompt client "
                    "among short ones (short requests' TTFT and inter-token latency)")
    ap.add_argument("--long-prompt", type=int, default=1536, help="--mixed: tokens in the long prompt")
    ap.add_argument("--short-clients", type=int, default=4, help="--mixed: clients sending short requests")
    ap.add_argument("--short-requests", type=int, default=6, help="--mixed: requests per short client")
    ap.add_argument("--prefill-chunk-size", type=int, default=256,
                    help="chunk size of chunked prefill (--mixed: of the chunked run); 0: whole prompts")
    args = ap.parse_args()
    if args.mixed:
        from zoo.cli.cache import enable_compile_cache, resolve_cache_dir

        enable_compile_cache(resolve_cache_dir())
        return main_mixed(args)

    from zoo.cli.cache import enable_compile_cache, resolve_cache_dir

    enable_compile_cache(resolve_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model(Path(tmp), args.hidden, args.layers)
        rows = []
        for batching in ("continuous", "static"):
            srv = RunningServer(model_dir, batching, args.max_batch, args.max_tokens,
                                prefill_chunk_size=args.prefill_chunk_size or None)
            try:
                asyncio.run(drive(srv.port, 2, 4, args.max_tokens))  # first-request costs out of the way
                for c in args.concurrency:
                    n = max(8, args.requests_per_client * c)
                    r = asyncio.run(drive(srv.port, c, n, args.max_tokens))
                    rows.append((batching, c, n, r))
                    print(f"{batching:>10}  clients {c:>3}  requests {n:>3}  {r['req_s']:7.2f} req/s  "
                          f"{r['tok_s']:8.1f} tok/s  TTFT mean {r['ttft_mean'] * 1e3:7.1f} ms  "
                          f"p50 {r['ttft_p50'] * 1e3:7.1f} ms  p90 {r['ttft_p90'] * 1e3:7.1f} ms", flush=True)
            finally:
                srv.close()
    print(f"\nmodel: {args.model or f'random Llama hidden {args.hidden} x {args.layers} layers'}, "
          f"max_batch {args.max_batch}, up to {args.max_tokens} tokens per request")
    print(f"{'clients':>8} | {'req/s cont.':>11} | {'req/s static':>12} | {'TTFT p50 cont.':>14} | {'TTFT p50 static':>15}")
    by = {(b, c): r for b, c, _, r in rows}
    for c in args.concurrency:
        a, s = by[("continuous", c)], by[("static", c)]
        print(f"{c:>8} | {a['req_s']:>11.2f} | {s['req_s']:>12.2f} | {a['ttft_p50'] * 1e3:>11.1f} ms | "
              f"{s['ttft_p50'] * 1e3:>12.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
