"""A checkpoint that ships only a SentencePiece ``tokenizer.model`` (no tokenizer.json).

zoo converts it on load; the result must match both Transformers (loading the same
folder) and the ``sentencepiece`` library itself (the ids of plain text).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece as spm  # a test dependency (pyproject): the second oracle
import transformers  # the oracle

from test_tokenization import CORPUS, TEXTS, plain
from zoo.tokenization import AutoTokenizer


@pytest.fixture(scope="module")
def sp_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sp_only")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=120, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "extra_ids": 0,
    }))
    return folder


def test_sentencepiece_only_checkpoint_matches_transformers_and_sentencepiece(sp_folder):
    assert not (sp_folder / "tokenizer.json").exists()
    ours = AutoTokenizer.from_pretrained(sp_folder)
    ref = transformers.AutoTokenizer.from_pretrained(str(sp_folder))
    texts = [t.format(bos="</s>", eos="</s>", pad="<pad>") for t in TEXTS]
    for kwargs in ({}, {"padding": True, "return_offsets_mapping": True}, {"truncation": True, "max_length": 6}):
        assert plain(ours(texts, **kwargs)) == plain(ref(texts, **kwargs)), kwargs

    processor = spm.SentencePieceProcessor(model_file=str(sp_folder / "tokenizer.model"))
    for text in ("Hello world!", "The quick brown fox jumps over the lazy dog.", "Ünïcödé café naïve — 日本語テキスト"):
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert ids == processor.encode(text), text
        assert ours(text)["input_ids"] == ids + [processor.eos_id()]
        assert ours.decode(ids) == processor.decode(ids)
