"""``zoo generate --model M "prompt"``: stream a completion to the terminal."""
from __future__ import annotations

import argparse
import sys
import time

from zoo.cli.common import TextStreamer, add_model_argument, add_sampling_arguments, load_model, sampling_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn with the chat template")
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model, tok = load_model(args.model, args.dtype)
    if args.chat:
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      return_dict=False)
    else:
        ids = tok(args.prompt)["input_ids"]
    if not ids:
        raise ValueError("the prompt is empty after tokenization")
    loaded = time.perf_counter()
    streamer = TextStreamer(tok)
    out = model.generate([ids], streamer=streamer, tokenizer=tok, seed=args.seed, stream_chunk_size=2,
                         **sampling_kwargs(args))
    print(flush=True)
    n = out.shape[1] - len(ids)
    took = time.perf_counter() - loaded
    print(f"[zoo] {n} tokens in {took:.2f}s ({n / max(took, 1e-9):.1f} tok/s, load {loaded - t0:.2f}s)",
          file=sys.stderr)
    return 0
