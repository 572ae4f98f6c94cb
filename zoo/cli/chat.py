"""``zoo chat --model M``: an interactive chat with the model's chat template.

Type a message and press Enter. ``/clear`` forgets the conversation, ``/exit`` (or
Ctrl-D) leaves; Ctrl-C stops the answer being written and keeps the session. Reads
stdin line by line, so it can be driven by a pipe.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

from zoo.cli.common import TextStreamer, add_model_argument, add_sampling_arguments, load_model, sampling_kwargs

HELP = "commands: /clear (new conversation), /exit (quit); Ctrl-C stops an answer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--system", default=None, help="system prompt")
    add_sampling_arguments(parser, default_max_new=256)


class AnswerStopped(Exception):
    """Ctrl-C during an answer, raised at a safe point (between decoded chunks)."""


class StoppableStreamer(TextStreamer):
    """Streams like TextStreamer; once ``stop`` is set, the next chunk ends the answer. Raising
    from here, on the host between compiled chunks, never interrupts JAX mid-dispatch."""

    def __init__(self, tokenizer: Any, stop: threading.Event):
        super().__init__(tokenizer)
        self.stop = stop

    def put(self, ids: Any) -> None:
        if self.stop.is_set():
            raise AnswerStopped
        super().put(ids)


@contextlib.contextmanager
def ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While answering, SIGINT only sets ``stop`` (a KeyboardInterrupt raised inside JAX's
    dispatch or compile could leave a lock held and hang the next answer)."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def fresh_history(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []


def run(args: argparse.Namespace) -> int:
    model, tok = load_model(args.model, args.dtype)
    if not tok.chat_template:
        raise ValueError(f"{args.model} has no chat template (tokenizer_config.json 'chat_template'); "
                         f"use `zoo generate` for plain completion")
    kwargs = sampling_kwargs(args)
    history = fresh_history(args.system)
    interactive = sys.stdin.isatty()
    print(f"[zoo chat] {args.model} -- {HELP}", file=sys.stderr, flush=True)
    turn = 0
    while True:
        try:
            if interactive:
                print("you> ", end="", flush=True)
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print("\n(use /exit or Ctrl-D to leave)", file=sys.stderr, flush=True)
            continue
        if not line:  # EOF
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/clear":
            history = fresh_history(args.system)
            print("[conversation cleared]", flush=True)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=sys.stderr, flush=True)
            continue
        history.append({"role": "user", "content": text})
        stop = threading.Event()
        streamer = StoppableStreamer(tok, stop)
        try:  # Ctrl-C anywhere in the turn ends the answer, never the session
            print("assistant> ", end="", flush=True)
            with ctrl_c_sets(stop):
                ids = tok.apply_chat_template(history, add_generation_prompt=True, return_dict=False)
                model.generate([ids], streamer=streamer, tokenizer=tok, seed=args.seed + turn,
                               stream_chunk_size=2, **kwargs)
            if stop.is_set():  # Ctrl-C after the last chunk
                raise AnswerStopped
        except (AnswerStopped, KeyboardInterrupt):
            print(" [stopped]", end="", flush=True)
        except ValueError as err:  # e.g. the conversation outgrew the context: say so, keep the session
            print(flush=True)
            print(f"[zoo chat] {err}; /clear starts over", file=sys.stderr, flush=True)
            history.pop()
            continue
        print(flush=True)
        history.append({"role": "assistant", "content": streamer.text})
        turn += 1
    return 0
