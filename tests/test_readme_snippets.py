"""README.md's examples run as written, so they cannot rot.

The convention (also stated in a comment at the top of README.md):

* Every ```python block runs, top to bottom, in one shared namespace (a later block may use names
  an earlier one defined), from a scratch working folder.
* A Hub repo id in a block (a string literal like "Qwen/Qwen3-0.6B") is swapped for a tiny local
  checkpoint of the same kind from ``HUB_STAND_INS``; nothing touches the network. A block that can
  only run against the real Hub is preceded by ``<!-- test: skip hub -->`` and is not run.
* Every ``zoo ...`` command (in ```bash blocks or inline code) parses with the CLI's own parser,
  and the repo files it names exist.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARK = re.compile(r"<!--\s*test:\s*skip\b[^>]*-->")
HUB_ID = re.compile(r"""(["'])([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)\1""")


def fenced_blocks(text: str, lang: str) -> list[tuple[int, str, bool]]:
    """(first line number, code, skipped) for each ```lang block of ``text``."""
    blocks = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, re.S | re.M):
        before = text[:m.start()].rstrip().splitlines()
        skipped = bool(before) and bool(SKIP_MARK.fullmatch(before[-1].strip()))
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1), skipped))
    return blocks


# ------------------------------------------------------------------ tiny stand-ins for Hub ids
def _qwen3_chat(folder: Path) -> None:
    """Tiny random Qwen3 with a byte-level BPE tokenizer that has a chat template."""
    from tiny_chat import SPECIALS, build_tokenizer

    from zoo import AutoConfig, AutoModelForCausalLM

    vocab = build_tokenizer(folder).get_vocab_size()
    cfg = AutoConfig.for_model("qwen3", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                               max_position_embeddings=256, initializer_range=0.2, bos_token_id=1,
                               eos_token_id=SPECIALS.index("<|end|>"), pad_token_id=0)
    AutoModelForCausalLM.from_config(cfg, 0).save_pretrained(folder)


def _bert(model_cls: str, **config) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        from test_pipelines import bert_checkpoint

        bert_checkpoint(folder, model_cls, **config)
    return build


NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
HUB_STAND_INS: dict[str, Callable[[Path], None]] = {
    "Qwen/Qwen3-0.6B": _qwen3_chat,
    "google-bert/bert-base-uncased": _bert("BertForMaskedLM"),
    "dslim/bert-base-NER": _bert("BertForTokenClassification", id2label=NER_LABELS, seed=5),
    # long enough positions for the README's doc_stride=64
    "deepset/bert-base-cased-squad2": _bert("BertForQuestionAnswering", max_position_embeddings=128),
}


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = [b for b in fenced_blocks(README.read_text(encoding="utf-8"), "python") if not b[2]]
    assert len(blocks) >= 3, "README.md lost its python examples?"
    used = {hub_id for _, code, _ in blocks for _, hub_id in HUB_ID.findall(code)}
    unknown = sorted(used - set(HUB_STAND_INS))
    assert not unknown, (f"README python blocks use Hub ids {unknown}: add a tiny stand-in to HUB_STAND_INS in "
                         "tests/test_readme_snippets.py, or mark the block `<!-- test: skip hub -->`")
    local = {}
    for hub_id in sorted(used):
        local[hub_id] = tmp_path / "hub" / hub_id.replace("/", "--")
        HUB_STAND_INS[hub_id](local[hub_id])

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__readme__"}
    for line, code, _ in blocks:
        code = HUB_ID.sub(lambda m: repr(str(local[m.group(2)])) if m.group(2) in local else m.group(0), code)
        try:
            exec(compile(code, f"README.md (block at line {line})", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"README.md python block at line {line} failed: {type(err).__name__}: {err}") \
                from err

    # What the text around the blocks promises about their results.
    ids, input_ids = np.asarray(namespace["ids"]), np.asarray(namespace["input_ids"])
    assert ids.shape[0] == input_ids.shape[0] == 2 and ids.shape[1] > input_ids.shape[1]
    assert namespace["out"].logits.dtype == np.float32
    np.testing.assert_allclose(np.asarray(namespace["logits"]), np.asarray(namespace["out"].logits), atol=1e-5)
    assert (work / "out" / "config.json").is_file() and (work / "out" / "tokenizer.json").is_file()
    assert (work / "adapter" / "adapter_config.json").is_file()
    assert np.isfinite(float(namespace["metrics"]["loss"]))


def test_skip_marker_is_honoured():
    text = "intro\n\n<!-- test: skip hub -->\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n"
    assert [(code, skipped) for _, code, skipped in fenced_blocks(text, "python")] == [("x = 1\n", True),
                                                                                      ("y = 2\n", False)]


# ------------------------------------------------------------------ the command line
def readme_zoo_commands(text: str) -> list[list[str]]:
    """argv (after ``zoo``) of each ``zoo ...`` / ``python -m zoo ...`` command in bash blocks and inline code."""
    lines = [ln for _, code, skipped in fenced_blocks(text, "bash") if not skipped for ln in code.splitlines()]
    lines += re.findall(r"`((?:python -m )?zoo [^`]+)`", re.sub(r"<!--.*?-->", "", text, flags=re.S))
    commands = []
    for line in lines:
        for part in re.split(r"\s+&&\s+", line.split(" #", 1)[0].strip()):
            words = shlex.split(part)
            if words[:3] == ["python", "-m", "zoo"]:
                commands.append(words[3:])
            elif words[:1] == ["zoo"]:
                commands.append(words[1:])
    return commands


def test_readme_cli_commands_parse():
    from zoo.cli.main import build_parser
    from zoo.train.loop import build_parser as train_parser
    from zoo.train.loop import load_recipe

    commands = readme_zoo_commands(README.read_text(encoding="utf-8"))
    assert {argv[0] for argv in commands} >= {"demo", "env", "generate", "serve", "train"}
    parser = build_parser()
    for argv in commands:
        if argv[0] == "train":
            args = train_parser().parse_args(argv[1:])
            assert (ROOT / args.config).is_file(), f"README names a missing recipe: {args.config}"
            load_recipe(str(ROOT / args.config), args.set)  # the recipe and its --set keys are valid
            continue
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit:
            pytest.fail(f"README command `zoo {' '.join(argv)}` does not parse")
        assert not extra, f"README command `zoo {' '.join(argv)}`: unknown arguments {extra}"
        assert args.command == argv[0]
