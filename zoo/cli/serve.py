"""``zoo serve --model M``: an OpenAI-compatible HTTP server (continuous batching, paged KV cache).

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions
(``"stream": true`` for server-sent events). Point the ``openai`` client at
``http://HOST:PORT/v1``.
"""
from __future__ import annotations

import argparse
import sys

from zoo.cli.common import add_model_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument("--served-model-name", default=None, help="the 'model' clients send (default: --model)")
    g = parser.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=int, default=8, help="rows decoded together (default 8)")
    g.add_argument("--page-size", type=int, default=16, help="tokens per KV page (default 16)")
    g.add_argument("--num-pages", type=int, default=None, help="KV pool size in pages (default: max-batch full rows)")
    g.add_argument("--max-model-len", type=int, default=None, help="prompt + completion limit (default: the model's)")
    g.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted")
    g.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens accepted")
    g.add_argument("--max-queued", type=int, default=64, help="waiting requests beyond which the server answers 503")
    g.add_argument("--prefill-chunk-size", type=int, default=256,
                   help="prompt tokens prefilled per engine step, in chunks of this many (default 256): a long "
                        "prompt is spread over several steps, between which running requests keep decoding, "
                        "and the prefill compiles once whatever the prompt length")
    g.add_argument("--no-chunked-prefill", action="store_true",
                   help="prefill each prompt whole in one step (one compile per prompt-length bucket)")
    g.add_argument("--batching", choices=("continuous", "static"), default="continuous",
                   help="continuous: new requests join the running batch; static: a batch runs to its end first")
    parser.add_argument("--no-warmup", action="store_true", help="compile on the first request instead of at start")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    from zoo.serving import serve

    for name in ("max_batch", "page_size", "max_queued", "port", "prefill_chunk_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    print(f"[zoo serve] loading {args.model}", file=sys.stderr, flush=True)
    serve(args.model, host=args.host, port=args.port, model_name=args.served_model_name, dtype=args.dtype,
          warmup=not args.no_warmup, log_level=args.log_level,
          limits={"max_prompt_tokens": args.max_prompt_tokens, "max_tokens": args.max_tokens},
          max_batch=args.max_batch, page_size=args.page_size, num_pages=args.num_pages,
          max_model_len=args.max_model_len, max_queued=args.max_queued, batching=args.batching,
          prefill_chunk_size=None if args.no_chunked_prefill else args.prefill_chunk_size)
    return 0
