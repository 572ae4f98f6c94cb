"""``zoo convert SRC DST``: Hugging Face checkpoint <-> orbax checkpoint of the param tree.

An orbax folder holds ``params/`` (orbax ``StandardCheckpointer``, the stacked param
tree), ``config.json`` (the HF config), ``zoo_orbax.json`` (which task class, layout,
dtype) and the tokenizer / generation-config files copied from the source, so it is
self-contained: ``zoo generate --model DST`` and ``zoo convert DST HF_DST --to hf`` read it.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from zoo.cli.common import ORBAX_MARKER

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "vocab.txt", "merges.txt", "vocab.json", "chat_template.jinja", "chat_template.json",
              "generation_config.json")
TASK_SUFFIXES = (("ForCausalLM", "causal_lm"), ("ForMaskedLM", "masked_lm"),
                 ("ForSequenceClassification", "sequence_classification"),
                 ("ForTokenClassification", "token_classification"), ("ForQuestionAnswering", "question_answering"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="HF checkpoint folder or Hub repo id, or an orbax folder made by zoo convert")
    parser.add_argument("dst", help="output folder (must not exist or be empty)")
    parser.add_argument("--to", choices=("orbax", "hf"), default=None,
                        help="output format (default: orbax for an HF source, hf for an orbax source)")
    parser.add_argument("--dtype", default=None, help="cast weights: bf16, fp16 or fp32 (default: keep)")


def task_of(architectures: Any) -> str:
    arch = (architectures or [""])[0]
    for suffix, task in TASK_SUFFIXES:
        if arch.endswith(suffix):
            return task
    return "base"


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    dtype = None
    if args.dtype is not None:
        if args.dtype.lower() not in DTYPES:
            raise ValueError(f"--dtype '{args.dtype}' is not one of {', '.join(sorted(DTYPES))}")
        dtype = DTYPES[args.dtype.lower()]
    is_orbax = (src / ORBAX_MARKER).is_file()
    to = args.to or ("hf" if is_orbax else "orbax")
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new folder")
    if is_orbax:
        model = load_orbax(src, dtype=dtype)
        side_src = src
    else:
        from zoo.hub import resolve_folder

        side_src = resolve_folder(str(args.src))
        model = _load_hf(side_src, dtype)
    if to == "orbax":
        save_orbax(model, dst)
    else:
        model.save_pretrained(dst)
    for name in SIDE_FILES:
        if (side_src / name).is_file() and not (dst / name).exists():
            shutil.copy2(side_src / name, dst / name)
    print(f"[zoo convert] {src} -> {dst} ({to}, {model.config.dtype}, {type(model).__name__})")
    return 0


def _load_hf(folder: Path, dtype: str | None):
    from zoo.auto import task_class
    from zoo.config_utils import read_config_dict

    data = read_config_dict(folder)
    cls = task_class(task_of(data.get("architectures")), data.get("model_type"))
    return cls.from_pretrained(folder, dtype=dtype, scan_layers=True)


def save_orbax(model: Any, folder: Path) -> None:
    import jax
    import orbax.checkpoint as ocp

    folder = folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    model = model.with_layout(scan_layers=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(folder / "params", model.params)
    ckptr.wait_until_finished()
    cfg = model.config.to_dict()
    cfg["architectures"] = [model.hf_architecture()]
    cfg["dtype"] = jax.tree.leaves(model.params)[0].dtype.name
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    meta = {"format": "zoo-orbax", "version": 1, "task": task_of(cfg["architectures"]), "scan_layers": True,
            "dtype": cfg["dtype"]}
    (folder / ORBAX_MARKER).write_text(json.dumps(meta, indent=2) + "\n")


def load_orbax(folder: Path, *, dtype: str | None = None, scan_layers: bool = True):
    """The model class named in ``zoo_orbax.json``, params restored from ``params/``."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from zoo.auto import task_class
    from zoo.config_utils import read_config_dict
    from zoo.modeling import _load_generation_config, config_from_dict
    from zoo.models import get_family
    from zoo.nn.params import abstract_params

    folder = Path(folder).absolute()
    meta = json.loads((folder / ORBAX_MARKER).read_text())
    if meta.get("format") != "zoo-orbax":
        raise ValueError(f"{folder / ORBAX_MARKER} is not a zoo orbax marker")
    data = read_config_dict(folder)
    saved = meta["dtype"]
    config = config_from_dict(data, dtype=saved, scan_layers=bool(meta.get("scan_layers", True)))
    cls = task_class(meta["task"], config.model_type)
    specs = cls.param_specs_for(get_family(config.model_type), config)
    target = abstract_params(specs, saved)
    params = ocp.StandardCheckpointer().restore(folder / "params", target)
    model = cls(config, params, _load_generation_config(folder))
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(saved):
        model = model.astype(dtype)
    return model.with_layout(scan_layers)
