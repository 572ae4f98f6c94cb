"""Compile time against depth: does a 32-layer model compile like a 2-layer one?

For each family (llama, qwen3_moe, a qwen3_moe whose first layer is dense, and gemma2 when
the zoo has it) and each layer layout (``scan_layers`` True / False), times ``jit``
lowering and XLA compilation of a prefill forward (batch 1 x 64 tokens into a KV cache)
and of one decode step (one token against that cache), at 2 and at 32 layers. Widths are
tiny, so the figures are compile cost, not weight size; params and caches are abstract
(``jax.eval_shape``), so nothing is allocated. Prints one table.

    python benchmarks/compile_depth.py [--depths 2 32] [--prompt 64] [--families llama qwen3_moe]
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

# Each measurement must pay the full compile, not read an earlier run's result from disk.
jax.config.update("jax_enable_compilation_cache", False)

from zoo.auto import AutoConfig  # noqa: E402
from zoo.models import get_family  # noqa: E402

ATTN = dict(vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", dict(ATTN, intermediate_size=128)),
    "qwen3_moe": ("qwen3_moe", dict(ATTN, intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                                    num_experts_per_tok=2, moe_implementation="dense")),
    "qwen3_moe+dense0": ("qwen3_moe", dict(ATTN, intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                                           num_experts_per_tok=2, mlp_only_layers=[0],
                                           moe_implementation="dense")),
    "gemma2": ("gemma2", dict(ATTN, intermediate_size=128, sliding_window=16)),
}


def has_family(model_type: str) -> bool:
    try:
        get_family(model_type)
        return True
    except Exception:  # noqa: BLE001 - an absent family is simply skipped
        return False


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def compile_seconds(step: Callable, *args: Any) -> tuple[float, float]:
    """(lower seconds, compile seconds) of a fresh ``jax.jit`` of ``step``."""
    lowered, t_lower = timed(lambda: jax.jit(step, donate_argnums=(3,)).lower(*args))
    _, t_compile = timed(lowered.compile)
    return t_lower, t_compile


def measure(model_type: str, fields: dict[str, Any], layers: int, scan: bool, prompt: int) -> dict[str, float]:
    family = get_family(model_type)
    cfg = AutoConfig.for_model(model_type, num_hidden_layers=layers, **fields).replace(scan_layers=scan)
    params = jax.eval_shape(lambda: family.init(cfg, jax.random.PRNGKey(0)))
    cache = jax.eval_shape(lambda: family.init_cache(cfg, 1, prompt + 16))
    ids = jax.ShapeDtypeStruct((1, prompt), jnp.int32)
    one = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, prompt + 1), jnp.int32)

    def step(p, x, m, c):
        return family.forward(p, cfg, x, attention_mask=m, cache=c, logits_to_keep=1)

    prefill = compile_seconds(step, params, ids, jax.ShapeDtypeStruct((1, prompt), jnp.int32), cache)
    decode = compile_seconds(step, params, one, mask, cache)
    return {"prefill_lower": prefill[0], "prefill_compile": prefill[1],
            "decode_lower": decode[0], "decode_compile": decode[1]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 32])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; seconds of lower + compile "
          f"(prefill: 1 x {args.prompt} tokens; decode: 1 token)", flush=True)
    header = f"{'family':<18} {'scan':<5} {'layers':>6} {'prefill':>18} {'decode':>18}"
    print(header)
    print(f"{'':<32} {'lower+compile=tot':>18} {'lower+compile=tot':>18}")
    print("-" * len(header))
    for name in args.families:
        model_type, fields = FAMILIES[name]
        if not has_family(model_type):
            print(f"{name:<18} (no {model_type} family in this zoo; skipped)", flush=True)
            continue
        for scan in (True, False):
            for depth in args.depths:
                r = measure(model_type, fields, depth, scan, args.prompt)
                pre = f"{r['prefill_lower']:.2f}+{r['prefill_compile']:.2f}={r['prefill_lower'] + r['prefill_compile']:.2f}"
                dec = f"{r['decode_lower']:.2f}+{r['decode_compile']:.2f}={r['decode_lower'] + r['decode_compile']:.2f}"
                print(f"{name:<18} {str(scan):<5} {depth:>6} {pre:>18} {dec:>18}", flush=True)


if __name__ == "__main__":
    main()
