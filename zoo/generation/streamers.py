"""Streamers: text handed to the host while ``generate`` runs, with Transformers' names and behaviour.

``generate(..., streamer=s)`` decodes in compiled chunks of ``stream_chunk_size`` steps and
calls ``s.put(ids)`` after each (the prompt first, as Transformers does), then ``s.end()``.
``TextStreamer`` turns ids into text that is safe to show: it holds back a partial word until
a space, a newline or a CJK character closes it, so text already shown never changes, and
``end()`` flushes the rest. Concatenating everything it emits gives ``decode(new ids)``.

Any object with ``put`` and ``end`` works as a streamer (Transformers' own streamers too).
"""
from __future__ import annotations

import asyncio
import unicodedata
from queue import Queue
from typing import Any

import numpy as np


class BaseStreamer:
    """What ``generate`` calls: ``put`` with new token ids, ``end`` once at the end."""

    def put(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


def _row_ids(value: Any) -> list[int]:
    """The ids of a batch-1 ``put``: a 1-D or ``[1, n]`` array (numpy, jax or torch) or a list."""
    arr = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
    if arr.ndim > 1:
        if arr.shape[0] > 1:
            raise ValueError(f"TextStreamer only supports batch size 1, got ids of shape {arr.shape}")
        arr = arr[0]
    return arr.reshape(-1).astype(np.int64).tolist()


def is_cjk(cp: int) -> bool:
    """CJK ideographs (Transformers' ``_is_chinese_char``): each one is a word, so it can be shown at once."""
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class TextStreamer(BaseStreamer):
    """Prints decoded text to stdout as soon as whole words are available.

    ``skip_prompt``: drop the first ``put`` (the prompt). ``decode_kwargs`` go to
    ``tokenizer.decode`` (e.g. ``skip_special_tokens=True``). Override ``on_finalized_text``
    to send the text elsewhere.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, **self.decode_kwargs)

    def put(self, value: Any) -> None:
        ids = _row_ids(value)
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(ids)
        text = self._decode(self.token_cache)
        if text.endswith("\n"):
            # a finished line: start a fresh cache from its last token (keeps spacing rules of the tokenizer)
            printable = text[self.print_len:]
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self._decode(self.token_cache))
        elif text and is_cjk(ord(text[-1])):
            printable = text[self.print_len:]
            self.print_len += len(printable)
        elif all(c.isspace() or unicodedata.category(c)[0] in "LMN" for c in text[self.print_len:]):
            printable = text[self.print_len:]
            self.print_len += len(printable)
        else:  # the last word may still grow: show up to the last space
            printable = text[self.print_len: text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        printable = ""
        if self.token_cache:
            printable = self._decode(self.token_cache)[self.print_len:]
        self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end=None if stream_end else "")


class TextIteratorStreamer(TextStreamer):
    """Text pieces in a queue, read by iterating while ``generate`` runs in another thread.

    ``timeout`` (seconds) bounds each wait, so a consumer is not stuck forever when
    generation fails in its thread (``queue.Empty`` is raised).
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration
        return value


class AsyncTextIteratorStreamer(TextStreamer):
    """``async for`` over text pieces; create it inside a running event loop, generate in a thread."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: asyncio.Queue = asyncio.Queue()
        self.stop_signal = None
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.loop.call_soon_threadsafe(self.text_queue.put_nowait, text)
        if stream_end:
            self.loop.call_soon_threadsafe(self.text_queue.put_nowait, self.stop_signal)

    def __aiter__(self) -> "AsyncTextIteratorStreamer":
        return self

    async def __anext__(self) -> str:
        value = await asyncio.wait_for(self.text_queue.get(), self.timeout)
        if value is self.stop_signal:
            raise StopAsyncIteration
        return value


__all__ = ["BaseStreamer", "TextStreamer", "TextIteratorStreamer", "AsyncTextIteratorStreamer"]
