"""Pieces the ``zoo`` sub-commands share: loading a model folder, sampling flags, a text streamer."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", required=True, metavar="M",
                        help="checkpoint folder (HF format or a `zoo convert --to orbax` folder) or Hub repo id")
    parser.add_argument("--dtype", default=None, help="compute/weight dtype, e.g. bfloat16 (default: the checkpoint's)")


def add_sampling_arguments(parser: argparse.ArgumentParser, default_max_new: int = 64) -> None:
    g = parser.add_argument_group("sampling (as in generate(); unset flags keep the model's generation_config)")
    g.add_argument("--max-new-tokens", type=int, default=default_max_new, help=f"default {default_max_new}")
    g.add_argument("--min-new-tokens", type=int, default=None, help="do not end (EOS) before this many tokens")
    g.add_argument("--do-sample", action="store_true", default=None, help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    names = {"min_new_tokens": "min_new_tokens", "do_sample": "do_sample", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
             "min_p": "min_p", "repetition_penalty": "repetition_penalty", "stop": "stop_strings"}
    kw: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    kw.update({dst: getattr(args, src) for src, dst in names.items() if getattr(args, src) is not None})
    return kw


ORBAX_MARKER = "zoo_orbax.json"


def load_model(name: str, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a folder or repo id; per-layer params (faster decoding on CPU)."""
    from zoo.tokenization import AutoTokenizer

    folder = Path(name).expanduser()
    if (folder / ORBAX_MARKER).is_file():
        from zoo.cli.convert import load_orbax

        model = load_orbax(folder, dtype=dtype, scan_layers=False)
    else:
        from zoo import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, scan_layers=False)
    tok = AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else name)
    return model, tok


class TextStreamer:
    """Prints new text as tokens arrive (``generate(..., streamer=...)`` protocol: the prompt
    first, then chunks of new ids, then ``end()``). A trailing partial UTF-8 character waits."""

    def __init__(self, tokenizer: Any, out: TextIO = sys.stdout, skip_prompt: bool = True):
        self.tokenizer, self.out, self.skip_prompt = tokenizer, out, skip_prompt
        self.ids: list[int] = []
        self.printed = 0
        self.seen_prompt = False
        self.text = ""

    def put(self, ids: Any) -> None:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if self.skip_prompt and not self.seen_prompt:
            self.seen_prompt = True
            return
        self.ids.extend(ids)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # A character still being completed decodes as at most 4 trailing U+FFFD (UTF-8 is <= 4
        # bytes); hold those back, but no more, so a model that emits invalid bytes still streams.
        end = len(self.text)
        while end > max(self.printed, len(self.text) - 4) and self.text[end - 1] == "\ufffd":
            end -= 1
        self._write(end)

    def end(self) -> None:
        self._write(len(self.text))

    def _write(self, end: int) -> None:
        if end > self.printed:
            self.out.write(self.text[self.printed:end])
            self.out.flush()
            self.printed = end
