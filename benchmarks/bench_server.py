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


def build_model(folder: Path, hidden: int, layers: int) -> Path:
    import jax

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_chat import SPECIALS, build_tokenizer

    from zoo import AutoModelForCausalLM
    from zoo.models.llama.config import LlamaConfig

    vocab = build_tokenizer(folder).get_vocab_size()
    heads = max(hidden // 32, 1)
    cfg = LlamaConfig.from_dict(dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1), max_position_embeddings=256,
        initializer_range=0.05, bos_token_id=1, eos_token_id=SPECIALS.index("<|end|>"), pad_token_id=0))
    AutoModelForCausalLM.from_config(cfg, jax.random.PRNGKey(0)).save_pretrained(folder)
    return folder


class RunningServer:
    def __init__(self, model_dir: Path, batching: str, max_batch: int, max_tokens: int):
        import uvicorn

        from zoo.serving import build_app, load_engine

        self.engine = load_engine(str(model_dir), max_batch=max_batch, page_size=16, max_model_len=256,
                                  max_queued=256, batching=batching)
        self.engine.warmup((4, 8, 16, 32, 64, 128))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint folder (default: build a random Llama)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-client", type=int, default=2, help="requests = max(8, this x concurrency)")
    args = ap.parse_args()

    from zoo.cli.cache import enable_compile_cache, resolve_cache_dir

    enable_compile_cache(resolve_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model(Path(tmp), args.hidden, args.layers)
        rows = []
        for batching in ("continuous", "static"):
            srv = RunningServer(model_dir, batching, args.max_batch, args.max_tokens)
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
