"""The engine: one thread runs the model; a scheduler batches requests continuously.

Requests arrive from any thread (the HTTP event loop) through :meth:`Engine.submit`
and wait in a FIFO queue. Each iteration of the engine loop

1. drops cancelled sequences (a client went away) and gives their pages back,
2. admits waiting sequences into free batch rows while the page pool can hold
   their prompt plus ``max_tokens`` (continuous batching: they join a batch that
   is already decoding; with ``batching="static"`` only an empty batch admits,
   so a batch runs to its end before the next starts),
3. prefills admitted prompts into their pages (first token comes from there):
   with ``prefill_chunk_size=C`` (the default, 256) at most C prompt tokens per
   iteration, oldest prompt first, in chunks padded to one of a few fixed lengths
   (C, C/2, ... down to 16: compiled once, never per prompt length), so a long
   prompt is spread over several iterations (chunked prefill, as in vLLM); with
   ``prefill_chunk_size=None`` each prompt whole, in one go, padded to a bucket,
4. runs one :func:`~zoo.generation.paged.paged_decode_step` for the rows whose
   prompt is in (a row still prefilling sits idle), and hands each row's new text
   to its sequence's sink. Running sequences thus get a token between any two
   chunks of a long prompt instead of stalling until all of it is in.

Pages are reserved for ``prompt + max_tokens`` at admission, so a running
sequence never runs out of memory and nothing needs preempting.

Sinks are called on the engine thread; the server wraps them to hop onto its
event loop. Text is detokenized incrementally; stop strings are matched on the
text and never streamed (a tail that could begin a stop string is held back).
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import secrets
import threading
import time
from typing import Any, Callable

import numpy as np

from zoo.generation import paged
from zoo.generation.decode import bucket_length

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests waiting than ``max_queued``."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclasses.dataclass
class Delta:
    text: str
    token_ids: list[int]


@dataclasses.dataclass
class Finished:
    reason: str  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    text: str  # the whole completion
    error: str | None = None


Sink = Callable[[Any], None]
_ids = itertools.count()


@dataclasses.dataclass(eq=False)
class Sequence:
    prompt: list[int]
    params: SamplingParams
    sink: Sink
    id: int = dataclasses.field(default_factory=lambda: next(_ids))
    seed: int = 0
    out: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of ``text`` handed to the sink
    pages: list[int] = dataclasses.field(default_factory=list)
    slot: int | None = None
    prefilled: int = 0  # prompt tokens whose K/V are in the pages
    cancelled: bool = False
    done: bool = False
    submitted: float = dataclasses.field(default_factory=time.perf_counter)


class Engine:
    """Continuous-batching generation over a paged KV cache, run by one thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 8,
        page_size: int = 16,
        num_pages: int | None = None,
        max_model_len: int | None = None,
        max_queued: int = 64,
        batching: str = "continuous",
        eos_token_ids: tuple[int, ...] | None = None,
        prefill_chunk_size: int | None = 256,
    ):
        if batching not in ("continuous", "static"):
            raise ValueError(f"batching must be 'continuous' or 'static', got {batching!r}")
        if max_batch < 1 or max_queued < 1:  # every request waits in the queue, however briefly
            raise ValueError(f"max_batch and max_queued must be >= 1, got {max_batch}, {max_queued}")
        cfg = model.config
        paged.check_supported(cfg)
        if cfg.scan_layers:  # per-layer arrays decode faster (DESIGN.md); converted once here
            model = model.with_layout(scan_layers=False)
        self.model, self.tokenizer = model, tokenizer
        limit = getattr(cfg, "max_position_embeddings", None) or 2048
        self.max_model_len = min(max_model_len or limit, limit)
        self.max_batch, self.page_size, self.max_queued, self.batching = max_batch, page_size, max_queued, batching
        self.table_width = paged.pages_needed(self.max_model_len, page_size)
        # None: whole prompts (one compile per prompt-length bucket). A chunk longer than any
        # prompt can be is only padding, so it is capped at max_model_len.
        self.prefill_chunk_size = None if prefill_chunk_size is None else \
            min(paged.check_chunk_size(prefill_chunk_size), self.max_model_len)
        # default pool: every row at full length at once (+ the scratch page)
        self.num_pages = num_pages or max_batch * self.table_width + 1
        if self.num_pages - 1 < self.table_width:
            raise ValueError(f"num_pages={self.num_pages} cannot hold even one sequence of max_model_len "
                             f"{self.max_model_len} ({self.table_width} pages of {page_size})")
        self.eos = tuple(eos_token_ids) if eos_token_ids is not None else _eos_ids(model)
        self.pages = paged.init_pages(cfg, self.num_pages, page_size)
        self.allocator = paged.PageAllocator(self.num_pages)
        b, w = max_batch, self.table_width
        self.tables = np.zeros((b, w), np.int32)
        self.tokens = np.zeros((b,), np.int32)
        self.positions = np.zeros((b,), np.int32)
        self.active = np.zeros((b,), bool)
        self.temperature = np.zeros((b,), np.float32)
        self.top_p = np.ones((b,), np.float32)
        self.seeds = np.zeros((b,), np.uint32)
        self.steps = np.zeros((b,), np.int32)
        self.rows: list[Sequence | None] = [None] * b
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.prefilling: collections.deque[Sequence] = collections.deque()  # in a row, prompt not all in
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running = threading.Event()  # cleared: paused (no admission, no decoding)
        self._running.set()
        self._parked = threading.Event()  # set while the loop sits paused
        self._stop = False
        self._thread: threading.Thread | None = None
        self.stats = collections.Counter()

    # ------------------------------------------------------------------ public, any thread
    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink) -> Sequence:
        """Queue a sequence; raises :class:`QueueFull` beyond ``max_queued`` waiting ones."""
        return self.submit_many([(prompt, params, sink)])[0]

    def submit_many(self, requests: list[tuple[list[int], SamplingParams, Sink]]) -> list[Sequence]:
        """Queue several sequences (the ``n`` choices of one request) all or none: raises
        :class:`QueueFull` if they do not all fit in the queue, leaving nothing of them queued."""
        seqs = []
        for prompt, params, sink in requests:
            self.check_request(len(prompt), params.max_tokens)
            seed = params.seed if params.seed is not None else secrets.randbits(32)
            seqs.append(Sequence(list(prompt), params, sink, seed=seed & 0xFFFFFFFF))
        with self._lock:
            if len(self.waiting) + len(seqs) > self.max_queued:
                self.stats["rejected"] += 1
                raise QueueFull(f"the server is at capacity: {len(self.waiting)} requests already waiting "
                                f"(max_queued={self.max_queued}); retry later")
            self.waiting.extend(seqs)
        self._wake.set()
        return seqs

    def check_request(self, prompt_len: int, max_tokens: int) -> None:
        if prompt_len < 1:
            raise ValueError("the prompt is empty")
        if prompt_len + max_tokens > self.max_model_len:
            raise ValueError(
                f"this model's maximum context length is {self.max_model_len} tokens; the prompt has "
                f"{prompt_len} and max_tokens asks for {max_tokens} more")

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True
        self._wake.set()

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="zoo-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._running.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def pause(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Stop admitting and decoding after the current step (requests keep queueing).
        ``wait``: return only once the engine thread has finished that step and is parked."""
        self._parked.clear()
        self._running.clear()
        self._wake.set()
        if wait and self._thread is not None and self._thread.is_alive():
            if not self._parked.wait(timeout):
                raise TimeoutError(f"the engine did not pause within {timeout}s")

    def resume(self) -> None:
        self._running.set()
        self._wake.set()

    def snapshot(self) -> dict[str, int]:
        return {"running": int(self.active.sum()), "waiting": len(self.waiting), "prefilling": len(self.prefilling),
                "free_pages": self.allocator.num_free, "total_pages": self.num_pages - 1,
                "max_batch": self.max_batch, **{k: int(v) for k, v in self.stats.items()}}

    def warmup(self, prompt_lengths: tuple[int, ...] = (1,)) -> None:
        """Compile the decode step and the prefill before serving (hits the compile cache): the
        chunk shapes with chunked prefill (``prompt_lengths`` then does not matter), else the
        buckets of ``prompt_lengths``."""
        for c in () if self.prefill_chunk_size is None else paged.chunk_shapes(self.prefill_chunk_size):
            _, _, self.pages = paged.prefill_chunk_into_pages(
                self.model, self.pages, np.zeros((1, c), np.int32), [0], [1], self.tables[:1] * 0)
        for n in () if self.prefill_chunk_size is not None else \
                sorted({bucket_length(min(max(p, 1), self.max_model_len - 1)) for p in prompt_lengths}):
            _, _, self.pages = paged.prefill_into_pages(
                self.model, self.pages, np.zeros((1, n), np.int32), [1], self.tables[:1] * 0)
        nxt, _, self.pages = paged.paged_decode_step(self.model, self.pages, self.tokens, self.positions,
                                                     self.tables, np.zeros_like(self.active))
        np.asarray(nxt)

    # ------------------------------------------------------------------ engine thread
    def _loop(self) -> None:
        while not self._stop:
            if not self._running.is_set():
                self._parked.set()
            self._running.wait()
            if self._stop:
                break
            try:
                self._drop_cancelled()
                self._admit()
                self._prefill_chunks()
                if not self.active.any():
                    if self.prefilling:
                        continue
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                self._decode()
            except Exception as err:  # keep serving: fail the sequences in flight, not the process
                logger.exception("engine step failed")
                self._fail_all(f"{type(err).__name__}: {err}")

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [s for s in self.waiting if s.cancelled]
            for s in gone:
                self.waiting.remove(s)
        for s in gone:
            self._finish(s, "cancelled")
        for s in self.rows:
            if s is not None and s.cancelled:
                self._finish(s, "cancelled")

    def _admit(self) -> None:
        if self.batching == "static" and any(s is not None for s in self.rows):
            return
        while True:
            free_rows = [i for i, s in enumerate(self.rows) if s is None]
            with self._lock:
                if not free_rows or not self.waiting:
                    return
                seq = self.waiting[0]
                need = paged.pages_needed(len(seq.prompt) + seq.params.max_tokens, self.page_size)
                if need > self.allocator.num_free:
                    return  # FIFO: wait for pages rather than let later requests overtake
                self.waiting.popleft()
            seq.pages = self.allocator.allocate(need)
            if self.prefill_chunk_size is not None:  # prefilled a chunk at a time by _prefill_chunks
                self._take_row(seq, free_rows[0])
                self.prefilling.append(seq)
                continue
            try:
                self._prefill(seq, free_rows[0])
            except Exception as err:
                # out of the queue but not yet in a row: finish it here, or its client waits forever
                self._finish(seq, "error", f"{type(err).__name__}: {err}")
                raise

    def _take_row(self, seq: Sequence, row: int) -> None:
        """Give ``seq`` batch row ``row`` (idle in decode steps until its prompt is in)."""
        p = seq.params
        seq.slot = row
        self.rows[row] = seq
        self.tables[row] = paged.block_table_row(seq.pages, self.table_width)
        self.temperature[row], self.top_p[row], self.seeds[row] = p.temperature, p.top_p, seq.seed
        self.active[row] = False

    def _start_decoding(self, seq: Sequence, first: int) -> None:
        """The prompt is in: the row joins the decode batch with its first token."""
        row = seq.slot
        seq.prefilled = len(seq.prompt)
        self.stats["prefills"] += 1
        self.steps[row] = 1
        self.positions[row] = len(seq.prompt)
        self.active[row] = True
        self._append(seq, first)

    def _prefill(self, seq: Sequence, row: int) -> None:
        """The whole prompt in one call, left-padded to a length bucket."""
        n = len(seq.prompt)
        bucket = min(bucket_length(n), max(self.max_model_len, n))
        ids = np.zeros((1, bucket), np.int32)
        ids[0, bucket - n:] = seq.prompt
        table = paged.block_table_row(seq.pages, self.table_width)
        p = seq.params
        first, _, self.pages = paged.prefill_into_pages(
            self.model, self.pages, ids, [n], table[None], temperature=[p.temperature], top_p=[p.top_p],
            seeds=np.asarray([seq.seed], np.uint32))
        self._take_row(seq, row)
        self._start_decoding(seq, int(np.asarray(first)[0]))

    def _prefill_chunks(self) -> None:
        """Up to ``prefill_chunk_size`` prompt tokens this iteration, oldest prompt first. A
        prompt that ends here starts decoding with its first token."""
        budget = self.prefill_chunk_size or 0
        while budget > 0 and self.prefilling:
            seq = self.prefilling[0]
            start = seq.prefilled
            count = min(len(seq.prompt) - start, budget)
            ids = np.zeros((1, paged.chunk_shape(count, self.prefill_chunk_size)), np.int32)
            ids[0, :count] = seq.prompt[start:start + count]
            row = seq.slot
            try:
                tok, _, self.pages = paged.prefill_chunk_into_pages(
                    self.model, self.pages, ids, [start], [count], self.tables[row:row + 1],
                    temperature=self.temperature[row:row + 1], top_p=self.top_p[row:row + 1],
                    seeds=self.seeds[row:row + 1])
                tok = int(np.asarray(tok)[0])
            except Exception as err:
                self._finish(seq, "error", f"{type(err).__name__}: {err}")
                raise
            self.stats["prefill_chunks"] += 1
            budget -= count
            seq.prefilled = start + count
            if seq.prefilled == len(seq.prompt):
                self.prefilling.popleft()
                self._start_decoding(seq, tok)

    def _decode(self) -> None:
        nxt, _, self.pages = paged.paged_decode_step(
            self.model, self.pages, self.tokens, self.positions, self.tables, self.active,
            temperature=self.temperature, top_p=self.top_p, seeds=self.seeds, steps=self.steps)
        nxt = np.asarray(nxt)
        self.stats["decode_steps"] += 1
        for row, seq in enumerate(self.rows):
            if seq is not None and self.active[row]:
                self.positions[row] += 1
                self.steps[row] += 1
                self._append(seq, int(nxt[row]))

    def _append(self, seq: Sequence, token: int) -> None:
        """Record a new token: stream its text, or finish the sequence."""
        seq.out.append(token)
        self.tokens[seq.slot] = token
        p = seq.params
        hit_eos = token in self.eos and not p.ignore_eos
        ids = seq.out[:-1] if hit_eos else seq.out
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        reason = "stop" if hit_eos else None
        cut = _find_stop(text, p.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        elif reason is None and (len(seq.out) >= p.max_tokens
                                 or len(seq.prompt) + len(seq.out) >= self.max_model_len):
            reason = "length"
        seq.text = text
        if reason is None:
            safe = _safe_prefix_len(text, p.stop)
            if safe > seq.sent:
                self._emit(seq, Delta(text[seq.sent:safe], [token]))
                seq.sent = safe
            return
        self._finish(seq, reason)

    def _emit(self, seq: Sequence, event: Any) -> None:
        try:
            seq.sink(event)
        except Exception:  # a broken sink (closed loop) must not stop the engine
            logger.exception("sink failed; cancelling sequence %d", seq.id)
            seq.cancelled = True

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        if reason != "cancelled" and len(seq.text) > seq.sent:
            self._emit(seq, Delta(seq.text[seq.sent:], []))
            seq.sent = len(seq.text)
        if seq in self.prefilling:
            self.prefilling.remove(seq)
        if seq.slot is not None:
            row = seq.slot
            self.rows[row] = None
            self.active[row] = False
            self.tables[row] = paged.SCRATCH_PAGE
            seq.slot = None
        if seq.pages:
            self.allocator.free(seq.pages)
            seq.pages = []
        self.stats["finished_" + reason] += 1
        self._emit(seq, Finished(reason, len(seq.prompt), len(seq.out), seq.text, error))

    def _fail_all(self, message: str) -> None:
        for s in self.rows:
            if s is not None:
                self._finish(s, "error", message)
        self.prefilling.clear()
        self.pages = paged.init_pages(self.model.config, self.num_pages, self.page_size)  # donated: rebuild


def _eos_ids(model: Any) -> tuple[int, ...]:
    gen = getattr(model, "generation_config", None)
    ids = getattr(gen, "eos_token_ids", None) if gen is not None else None
    if not ids:
        eos = getattr(model.config, "eos_token_id", None)
        ids = eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
    return tuple(int(i) for i in ids)


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _safe_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be streamed: not a trailing partial UTF-8 character (shown as
    U+FFFD by the decoder) and not a tail that may grow into a stop string."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end = min(end, len(text[:end]) - k)
                break
    return end
