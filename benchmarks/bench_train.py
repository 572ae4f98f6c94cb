"""Train-step throughput: the zoo's jitted AdamW step vs a PyTorch Transformers AdamW step on
the same Llama-shaped model, in one process; model FLOP/s as a fraction of a large matmul's.

    python benchmarks/bench_train.py --layers 6 --batch 2 --seq 128 --steps 3
    python benchmarks/bench_train.py --two-devices   # also the step time on a 2-device mesh

Model FLOPs per step are counted as 6 x params x tokens (the usual estimate; attention's own
FLOPs are left out, so short sequences are not flattered).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama-120m", help="configs/models preset for the shape")
    p.add_argument("--layers", type=int, default=6, help="override num_hidden_layers (6 -> ~87M params)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--matmul", type=int, default=2048, help="size of the square fp32 matmul for the peak")
    p.add_argument("--unrolled", action="store_true", help="per-layer params (scan_layers=False) for the zoo")
    p.add_argument("--two-devices", action="store_true", help="also time the step on a 2-device data mesh")
    return p.parse_args()


def timed(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> int:
    args = parse()
    if args.two_devices and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    import transformers

    from zoo import AutoConfig, AutoModelForCausalLM
    from zoo.auto import load_preset
    from zoo.nn.params import count_params
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    shape = dict(load_preset(args.preset))
    shape["num_hidden_layers"] = args.layers
    shape.pop("model_type")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).train()
    n_params = sum(p.numel() for p in hf.parameters())
    tokens = args.batch * args.seq
    flops_per_step = 6 * n_params * tokens
    rng = np.random.RandomState(0)
    ids = rng.randint(3, shape["vocab_size"], (args.batch, args.seq)).astype(np.int32)
    print(f"model: {args.preset} with {args.layers} layers, {n_params / 1e6:.1f}M params; batch {args.batch} x "
          f"seq {args.seq} = {tokens} tokens/step; {jax.device_count()} JAX device(s), "
          f"torch threads {torch.get_num_threads()}", flush=True)

    # ---- peak: a large fp32 matmul, in both frameworks
    a = jax.random.normal(jax.random.PRNGKey(0), (args.matmul, args.matmul), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax_mm = timed(lambda: mm(a).block_until_ready(), 3)
    ta = torch.randn(args.matmul, args.matmul)
    torch_mm = timed(lambda: ta @ ta, 3)
    mm_flops = 2 * args.matmul**3
    peak = max(mm_flops / jax_mm, mm_flops / torch_mm)
    print(f"matmul {args.matmul}^3 fp32: jax {mm_flops / jax_mm / 1e9:.1f} GFLOP/s, "
          f"torch {mm_flops / torch_mm / 1e9:.1f} GFLOP/s (peak used: {peak / 1e9:.1f})", flush=True)

    # ---- PyTorch Transformers: AdamW, fp32
    topt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    tids = torch.tensor(ids, dtype=torch.long)

    def torch_step():
        out = hf(input_ids=tids, labels=tids)
        out.loss.backward()
        topt.step()
        topt.zero_grad(set_to_none=True)
        return out.loss.item()

    torch_t = timed(torch_step, args.steps)
    print(f"torch step: {torch_t * 1e3:.0f} ms, {tokens / torch_t:,.0f} tokens/s, "
          f"{flops_per_step / torch_t / peak:.1%} of matmul peak", flush=True)

    # ---- the zoo: same weights, jitted donated AdamW step
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        del topt
        model = AutoModelForCausalLM.from_pretrained(tmp, scan_layers=not args.unrolled)
    assert count_params(model.params) == n_params, (count_params(model.params), n_params)
    del hf
    opt = optax.adamw(1e-4)
    batch = {"input_ids": jnp.asarray(ids)}
    holder = {"state": create_train_state(model, opt, copy=False)}
    step = make_train_step(causal_lm_loss_fn(model), opt)

    def zoo_step(step=step, holder=holder, batch=batch):
        holder["state"], m = step(holder["state"], batch)
        return float(m["loss"])

    t0 = time.perf_counter()
    zoo_step()
    print(f"zoo first step (compile + run): {time.perf_counter() - t0:.1f} s", flush=True)
    zoo_t = timed(zoo_step, args.steps, warmup=1)
    print(f"zoo step:   {zoo_t * 1e3:.0f} ms, {tokens / zoo_t:,.0f} tokens/s, "
          f"{flops_per_step / zoo_t / peak:.1%} of matmul peak", flush=True)
    print(f"RATIO zoo/torch tokens/s: {torch_t / zoo_t:.2f}x", flush=True)

    if args.two_devices and jax.device_count() >= 2:
        from zoo.sharding import make_mesh, param_shardings, shard_batch

        mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
        params = holder.pop("state").params
        shardings = param_shardings(params, model.param_axes(), mesh, "dp")
        sharded = type(model)(model.config, jax.device_put(params, shardings))
        holder["state"] = create_train_state(sharded, opt, copy=False, shardings=shardings)
        step2 = make_train_step(causal_lm_loss_fn(sharded), opt, mesh=mesh, rules="dp")
        batch2 = shard_batch({"input_ids": ids}, mesh, "dp")
        two_t = timed(lambda: zoo_step(step2, holder, batch2), args.steps, warmup=2)
        print(f"zoo step on a 2-device mesh: {two_t * 1e3:.0f} ms ({zoo_t / two_t:.2f}x the 1-device speed)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
