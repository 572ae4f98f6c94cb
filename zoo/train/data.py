"""Host-side data: read local text / JSONL (or a ``datasets`` object), tokenise, pack into
fixed-length rows, and iterate in a seeded order that can resume exactly.

Packing puts several documents in one row. Each gets its own ``segment_ids`` value (0 marks
padding) and positions that restart at 0, so with ``segment_ids`` passed to the model no
token attends across a document boundary and rotary positions are those of the document
alone; the first token of each document is labelled -100 (nothing in its row predicts it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

IGNORE_INDEX = -100


# ---------------------------------------------------------------- reading
def read_texts(paths: str | os.PathLike | Sequence[str | os.PathLike], *, text_field: str = "text") -> list[str]:
    """Documents from ``.txt`` (one per non-empty line, as ``datasets``' text loader) and
    ``.json``/``.jsonl`` files (the ``text_field`` of each record). A folder means its files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".json", ".jsonl")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"data file {p} does not exist")
    texts: list[str] = []
    for f in files:
        if f.suffix in (".jsonl", ".json"):
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{f}:{n} is not valid JSON: {err}") from err
                if text_field not in record:
                    raise ValueError(f"{f}:{n} has no field '{text_field}' (fields: {sorted(record)})")
                texts.append(str(record[text_field]))
        elif f.suffix == ".txt":
            texts.extend(line for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
        else:
            raise ValueError(f"unsupported data file {f}: use .txt, .json or .jsonl")
    return texts


def texts_from_dataset(dataset: Any, *, text_field: str = "text") -> list[str]:
    """The ``text_field`` column of a Hugging Face ``datasets.Dataset`` / ``IterableDataset``, a
    ``DatasetDict`` holding one split (what ``load_dataset("json", data_files=...)`` returns), or
    any iterable of dicts, in order."""
    if isinstance(dataset, Mapping) and dataset and all(hasattr(v, "column_names") for v in dataset.values()):
        if len(dataset) != 1:
            raise ValueError(f"the dataset has splits {sorted(dataset)}; pass one of them, e.g. dataset['train']")
        dataset = next(iter(dataset.values()))
    columns = getattr(dataset, "column_names", None)  # None for an IterableDataset of unknown features
    if columns is not None and text_field not in columns:
        raise ValueError(f"dataset has no column '{text_field}' (columns: {list(columns)}); "
                         f"set text_field to the column that holds the text")
    if columns is not None and hasattr(dataset, "__len__"):  # a Dataset: read the column at once
        texts = list(dataset[text_field])
    else:
        texts = []
        for n, record in enumerate(dataset):
            if not isinstance(record, Mapping) or text_field not in record:
                fields = sorted(record) if isinstance(record, Mapping) else type(record).__name__
                raise ValueError(f"dataset record {n} has no field '{text_field}' (fields: {fields}); "
                                 f"set text_field to the field that holds the text")
            texts.append(record[text_field])
    return [str(t) for t in texts]  # as read_texts does for JSONL records


def tokenize(texts: Iterable[str], tokenizer: Any, *, add_bos: bool = True, add_eos: bool = True) -> list[np.ndarray]:
    """Token ids per document, with the tokenizer's bos/eos around each (when it has them)."""
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    eos = getattr(tokenizer, "eos_token_id", None) if add_eos else None
    docs = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False) if callable(tokenizer) else tokenizer.encode(text)
        ids = list(enc["input_ids"] if isinstance(enc, Mapping) or hasattr(enc, "keys") else getattr(enc, "ids", enc))
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if eos is not None:
            ids = ids + [eos]
        docs.append(np.asarray(ids, np.int32))
    return docs


# ---------------------------------------------------------------- packing
def pack_documents(docs: Sequence[Sequence[int]], seq_len: int, *, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Pack documents in order into rows of ``seq_len`` (a document that does not fit in what is
    left of a row starts the next one; one longer than a row is cut into row-sized pieces).

    Returns ``input_ids``, ``labels`` (-100 on padding and on each document's first token),
    ``segment_ids`` (1, 2, ... per row; 0 = padding), ``position_ids`` (restarting per
    document) and ``attention_mask`` (1 on real tokens), all [rows, seq_len] int32.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    pieces: list[np.ndarray] = []
    for d in docs:
        d = np.asarray(d, np.int32)
        pieces.extend(d[i: i + seq_len] for i in range(0, len(d), seq_len) if len(d[i: i + seq_len]))
    rows: list[list[np.ndarray]] = []
    used = seq_len
    for piece in pieces:
        if used + len(piece) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(piece)
        used += len(piece)
    n = len(rows)
    out = {
        "input_ids": np.full((n, seq_len), pad_id, np.int32),
        "labels": np.full((n, seq_len), IGNORE_INDEX, np.int32),
        "segment_ids": np.zeros((n, seq_len), np.int32),
        "position_ids": np.zeros((n, seq_len), np.int32),
        "attention_mask": np.zeros((n, seq_len), np.int32),
    }
    for r, row in enumerate(rows):
        at = 0
        for s, piece in enumerate(row, 1):
            end = at + len(piece)
            out["input_ids"][r, at:end] = piece
            out["labels"][r, at + 1:end] = piece[1:]
            out["segment_ids"][r, at:end] = s
            out["position_ids"][r, at:end] = np.arange(len(piece))
            out["attention_mask"][r, at:end] = 1
            at = end
    return out


# ---------------------------------------------------------------- iteration
class PackedBatches:
    """Batches of packed rows in a seeded, per-epoch shuffled order; resumable.

    ``state_dict()`` is two integers (epoch, position) that ``load_state_dict`` restores, so a
    resumed run sees exactly the batches it would have seen. With several processes each
    takes its ``process_index``-th share of every global batch.
    """

    def __init__(self, examples: Mapping[str, np.ndarray], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, process_index: int = 0, process_count: int = 1):
        self.examples = {k: np.asarray(v) for k, v in examples.items()}
        self.num_rows = len(next(iter(self.examples.values())))
        if batch_size % process_count:
            raise ValueError(f"global batch size {batch_size} is not divisible by {process_count} processes")
        if self.num_rows < batch_size and drop_last:
            raise ValueError(f"only {self.num_rows} packed rows, fewer than one batch of {batch_size}")
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.process_index, self.process_count = process_index, process_count
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        full, rest = divmod(self.num_rows, self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        idx = self.order(self.epoch)[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        local = len(idx) // self.process_count
        idx = idx[self.process_index * local:(self.process_index + 1) * local]
        return {k: v[idx] for k, v in self.examples.items()}


def load_packed(
    source: Any,
    tokenizer: Any,
    seq_len: int,
    *,
    text_field: str = "text",
    pad_id: int | None = None,
    transform: Callable[[list[str]], list[str]] | None = None,
) -> dict[str, np.ndarray]:
    """Files / folder / ``datasets`` object -> packed rows (see :func:`pack_documents`)."""
    if isinstance(source, (str, os.PathLike)) or (isinstance(source, (list, tuple)) and source
                                                  and isinstance(source[0], (str, os.PathLike))):
        texts = read_texts(source, text_field=text_field)
    else:
        texts = texts_from_dataset(source, text_field=text_field)
    if transform is not None:
        texts = transform(texts)
    if not texts:
        raise ValueError(f"no documents found in {source}")
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    return pack_documents(tokenize(texts, tokenizer), seq_len, pad_id=pad_id)


TokenDataset = load_packed

__all__ = ["read_texts", "texts_from_dataset", "tokenize", "pack_documents", "PackedBatches", "load_packed",
           "TokenDataset", "IGNORE_INDEX"]
