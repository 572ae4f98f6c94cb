"""Two pipeline inputs users bring from Transformers: token-classification on pre-split words
(``is_split_into_words=True``), compared with Transformers' pipeline on the same tiny random
checkpoints; and question-answering with a tokenizer that pads on the left, which puts the context
first (Transformers 4's arrangement), compared with that rule written out by brute force on the
PyTorch model's logits (Transformers 5 has no question-answering pipeline)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_pipelines import (NER_LABELS, QA_CONTEXT, assert_same, bert_checkpoint, hf_pipeline, reference_answers,
                            roberta_checkpoint)

WORDS = ["Jean-Baptiste", "lives", "in", "Montréal", "with", "Zoë"]
BATCH = [WORDS, ["hello", "world,", "unbelievably", "tokenized", "words"]]
STRATEGIES = ("none", "simple", "first", "average", "max")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("words")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            if name == "ner":
                built[name] = bert_checkpoint(root / name, "BertForTokenClassification", id2label=NER_LABELS, seed=5)
            elif name == "ner16":  # 16-token windows for stride
                built[name] = bert_checkpoint(root / name, "BertForTokenClassification", id2label=NER_LABELS, seed=5,
                                              model_max_length=16)
            elif name == "roberta_ner":
                built[name] = roberta_checkpoint(root / name, "RobertaForTokenClassification", id2label=NER_LABELS,
                                                 seed=5)
            elif name == "qa":
                built[name] = bert_checkpoint(root / name, "BertForQuestionAnswering")
            elif name == "qa_left":  # the same model, its tokenizer_config saying padding_side="left"
                folder = root / name
                shutil.copytree(get("qa"), folder)
                path = folder / "tokenizer_config.json"
                path.write_text(json.dumps({**json.loads(path.read_text()), "padding_side": "left"}))
                built[name] = str(folder)
        return built[name]

    return get


# ---------------------------------------------------------------- token-classification, pre-split words
def test_split_into_words_matches_transformers(folders):
    import zoo

    folder = folders("ner")
    ours, ref = zoo.pipeline("ner", model=folder), hf_pipeline("token-classification", folder)
    for strategy in STRATEGIES:
        for delimiter in (None, " | ", ""):  # offsets index delimiter.join(words)
            kwargs = {"is_split_into_words": True, "aggregation_strategy": strategy, "ignore_labels": []}
            if delimiter is not None:
                kwargs["delimiter"] = delimiter
            for inputs in (WORDS, BATCH):  # one list of words answers as a list of one, as Transformers does
                assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs), f"{strategy} {delimiter!r}")
        kwargs = {"is_split_into_words": True, "aggregation_strategy": strategy}
        assert_same(ours(BATCH, **kwargs), ref(BATCH, **kwargs), f"{strategy} default ignore_labels")
    got = ours(WORDS, is_split_into_words=True, ignore_labels=[], delimiter=" | ")[0]
    sentence = " | ".join(WORDS)
    assert got and all(sentence[e["start"]:e["end"]].lower().startswith(e["word"].lstrip("#")[:1]) for e in got)
    # Words are not split again on spaces: a two-word "word" stays one word.
    assert_same(ours(["New York", "is", "big"], is_split_into_words=True, aggregation_strategy="first",
                     ignore_labels=[]),
                ref(["New York", "is", "big"], is_split_into_words=True, aggregation_strategy="first",
                    ignore_labels=[]))


@pytest.mark.filterwarnings("ignore:Tokenizer does not support real words")
def test_split_into_words_byte_level_bpe_and_stride(folders):
    import zoo

    folder = folders("roberta_ner")
    ours, ref = zoo.pipeline("ner", model=folder), hf_pipeline("token-classification", folder)
    for strategy in STRATEGIES:
        kwargs = {"is_split_into_words": True, "aggregation_strategy": strategy, "ignore_labels": []}
        assert_same(ours(BATCH, **kwargs), ref(BATCH, **kwargs), f"roberta {strategy}")

    folder = folders("ner16")
    long_words = ("Jean-Baptiste lives in Montréal with Zoë and walks to the old harbour every morning at seven"
                  .split())
    ours, ref = zoo.pipeline("token-classification", model=folder), hf_pipeline("token-classification", folder)
    for strategy in ("simple", "first", "max"):
        kwargs = {"is_split_into_words": True, "aggregation_strategy": strategy, "stride": 4, "ignore_labels": []}
        expected = ref(long_words, **kwargs)
        assert expected[0][-1]["end"] == len(" ".join(long_words))  # the windows reached the last word
        assert_same(ours(long_words, **kwargs), expected, f"stride {strategy}")
    with pytest.raises(ValueError, match="longer than the model's limit"):
        ours(long_words, is_split_into_words=True)


def test_split_into_words_bad_input(folders):
    import zoo

    ner = zoo.pipeline("ner", model=folders("ner"))
    for bad in ("a whole sentence", [], [["a"], "b"], [[]], [["a", 3]], {"words": ["a"]}, [[" ", ""]]):
        with pytest.raises(ValueError, match="is_split_into_words|word"):
            ner(bad, is_split_into_words=True)
    with pytest.raises(ValueError, match="delimiter must be a string"):
        ner(WORDS, is_split_into_words=True, delimiter=1)
    # Without the flag a list of strings is still a batch of texts.
    assert len(ner(["hello world", "Zoë"])) == 2


# ---------------------------------------------------------------- question-answering, left padding
def reference_context_first(folder: str, question: str, context: str, **kwargs):
    """Transformers 4's rule for a tokenizer padding on the left: (context, question) pairs."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.padding_side == "left"
    enc = tok(context, question)
    seq = enc.sequence_ids()
    assert seq[1] == 0 and seq[-2] == 1  # [CLS] context [SEP] question [SEP]
    return reference_answers(folder, question, context, context_first=True, **kwargs)


def test_question_answering_left_padding_puts_the_context_first(folders):
    import zoo

    folder = folders("qa_left")
    qa = zoo.pipeline("question-answering", model=folder)
    assert qa.tokenizer.padding_side == "left"
    windows = dict(max_seq_len=24, doc_stride=8)
    question, short = "Who built the first pipeline?", "Where do the llamas count pages?"
    for kwargs in ({}, {"top_k": 3}, {"max_answer_len": 2, "top_k": 2}, {"handle_impossible_answer": True},
                   {"top_k": 40}):
        expected = reference_context_first(folder, question, QA_CONTEXT, **windows, **kwargs)
        got = qa(question=question, context=QA_CONTEXT, **windows, **kwargs)
        assert_same(got, expected, str(kwargs))
        for answer in got if isinstance(got, list) else [got]:  # never a piece of the question
            assert answer["answer"] == QA_CONTEXT[answer["start"]:answer["end"]]
    both = qa(question=[question, short], context=QA_CONTEXT, **windows)
    assert_same(both, [reference_context_first(folder, q, QA_CONTEXT, **windows) for q in (question, short)])
    # One window holding the whole context (the default sizes), and the tokenizer given as an object
    # told to pad on the left, over a checkpoint whose own tokenizer pads on the right.
    tok = zoo.AutoTokenizer.from_pretrained(folders("qa"), padding_side="left")
    model = zoo.AutoModelForQuestionAnswering.from_pretrained(folders("qa"))
    qa_obj = zoo.pipeline("question-answering", model=model, tokenizer=tok)
    assert_same(qa_obj(question=short, context=QA_CONTEXT[:80]),
                reference_context_first(folder, short, QA_CONTEXT[:80], max_seq_len=64, doc_stride=32))
    # The right-padding tokenizer still asks the question first, so the two arrangements differ.
    right = zoo.pipeline("question-answering", model=folders("qa"))(question=question, context=QA_CONTEXT,
                                                                     top_k=3, **windows)
    assert [a["score"] for a in right] != pytest.approx([a["score"] for a in qa(
        question=question, context=QA_CONTEXT, top_k=3, **windows)])
