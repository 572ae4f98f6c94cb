"""Training data from a Hugging Face ``datasets`` object: ``Dataset.from_dict`` and
``load_dataset("json", data_files=...)`` (as a DatasetDict, one split, or streamed) pack into exactly
the rows that the same text read from local files gives, shuffle by seed and resume the same way,
and a wrong ``text_field`` is named in a clear error."""
from __future__ import annotations

import json

import datasets  # in the test extra: a missing library must fail here, not skip
import numpy as np
import pytest

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "short",
    "",  # an empty document still gets its bos/eos
    "naïve café — ünïcödé bytes differ from characters",
    "a much longer document that is cut into several pieces because it does not fit in one row at all",
    "x",
    "two words",
    "the end of the corpus, with some punctuation: (a), [b]; {c}!",
] * 3
SEQ_LEN = 16


def tokenizer():
    from zoo.train.loop import ByteTokenizer

    return ByteTokenizer()


@pytest.fixture()
def jsonl(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    return path


def from_files(path):
    from zoo.train.data import load_packed

    return load_packed(path, tokenizer(), SEQ_LEN)


def dataset_sources(jsonl, tmp_path):
    cache = str(tmp_path / "hf-cache")
    return {
        "from_dict": datasets.Dataset.from_dict({"id": list(range(len(TEXTS))), "text": TEXTS}),
        "load_dataset": datasets.load_dataset("json", data_files=str(jsonl), cache_dir=cache),  # DatasetDict
        "load_dataset[train]": datasets.load_dataset("json", data_files=str(jsonl), split="train", cache_dir=cache),
        "streaming": datasets.load_dataset("json", data_files=str(jsonl), split="train", streaming=True),
    }


def test_datasets_objects_pack_like_local_files(jsonl, tmp_path):
    from zoo.train.data import load_packed

    reference = from_files(jsonl)
    # The packing is not trivial: several documents share rows, positions restart, padding exists.
    assert reference["segment_ids"].max() >= 3 and (reference["segment_ids"] == 0).any()
    first = reference["input_ids"][0]
    assert first[0] == 1 and bytes((first[1:] - 3).tolist()).decode() == TEXTS[0][:SEQ_LEN - 1]  # bos + bytes
    for name, source in dataset_sources(jsonl, tmp_path).items():
        packed = load_packed(source, tokenizer(), SEQ_LEN)
        assert sorted(packed) == sorted(reference), name
        for key in reference:  # input_ids, labels, segment_ids, position_ids, attention_mask
            np.testing.assert_array_equal(packed[key], reference[key], err_msg=f"{name}: {key}")


def test_datasets_rows_shuffle_by_seed_and_resume_like_files(jsonl, tmp_path):
    from zoo.train.data import PackedBatches, load_packed

    file_rows = from_files(jsonl)
    ds_rows = load_packed(datasets.load_dataset("json", data_files=str(jsonl), split="train",
                                                cache_dir=str(tmp_path / "hf-cache")), tokenizer(), SEQ_LEN)
    n_batches = len(PackedBatches(file_rows, 4))
    steps = 2 * n_batches + 1  # crosses two epoch boundaries

    def batches(rows, seed, n=steps, state=None):
        it = PackedBatches(rows, 4, seed=seed)
        if state is not None:
            it.load_state_dict(state)
        return [next(it) for _ in range(n)]

    def same(a, b):
        return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)

    from_file, from_ds = batches(file_rows, 5), batches(ds_rows, 5)
    assert same(from_file, from_ds) and same(from_ds, batches(ds_rows, 5))  # same seed, same order
    assert not same(from_ds, batches(ds_rows, 6))  # another seed, another order
    epoch0 = [b["input_ids"] for b in from_ds[:n_batches]]
    epoch1 = [b["input_ids"] for b in from_ds[n_batches:2 * n_batches]]
    assert not all(np.array_equal(a, b) for a, b in zip(epoch0, epoch1))  # reshuffled per epoch

    # Stop after 3 batches, restore the position into a fresh iterator: the rest is unchanged.
    it = PackedBatches(ds_rows, 4, seed=5)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.state_dict()))  # as it travels in a checkpoint
    assert same(batches(ds_rows, 5, steps - 3, state), from_ds[3:])
    assert same(batches(file_rows, 5, steps - 3, state), from_file[3:])


def test_wrong_text_field_is_a_clear_error(jsonl, tmp_path):
    from zoo.train.data import load_packed

    for name, source in dataset_sources(jsonl, tmp_path).items():
        with pytest.raises(ValueError, match=r"no (column|field) 'body'.*'text'"):
            load_packed(source, tokenizer(), SEQ_LEN, text_field="body")
    with pytest.raises(ValueError, match=r"record 0 has no field 'body'.*'text'"):
        load_packed([{"text": "a"}], tokenizer(), SEQ_LEN, text_field="body")
    two_splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                                       "test": datasets.Dataset.from_dict({"text": ["b"]})})
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]; pass one of them"):
        load_packed(two_splits, tokenizer(), SEQ_LEN)
    # The same mistake with local files names the field too.
    with pytest.raises(ValueError, match="has no field 'body'"):
        load_packed(jsonl, tokenizer(), SEQ_LEN, text_field="body")
