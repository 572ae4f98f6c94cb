"""Load + forward benchmark: zoo vs PyTorch Transformers on a ~500 MB checkpoint.

Builds a random Llama-shaped checkpoint (configs/models/llama-120m.json, fp32,
about 500 MB) once, then measures, each in a fresh subprocess so peak RSS is
the loader's own: load time, peak RSS, and forward latency (batch 1 x 128 tokens,
after one warm-up call). Prints a side-by-side table.

    python benchmarks/bench_load.py [--folder /tmp/zoo-bench-120m] [--seq 128]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_checkpoint(folder: Path) -> None:
    if (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists():
        return
    import torch
    import transformers

    cfg = json.loads((ROOT / "configs/models/llama-120m.json").read_text())
    cfg.pop("model_type")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    model.save_pretrained(folder)
    print(f"built {folder} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params)", flush=True)


CHILD = r"""
import json, resource, sys, time
import numpy as np
which, folder, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = np.random.RandomState(0).randint(0, 32000, (1, seq))
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if which == "zoo":
    import jax, jax.numpy as jnp
    from zoo import AutoModelForCausalLM
    jnp.zeros(1).block_until_ready()
else:
    import torch, transformers
base = rss_mb()
t0 = time.perf_counter()
if which == "zoo":
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    jax.block_until_ready(model.params)
    load = time.perf_counter() - t0
    run = lambda: jax.block_until_ready(model(ids).logits)
else:
    torch.set_grad_enabled(False)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    load = time.perf_counter() - t0
    tids = torch.tensor(ids)
    run = lambda: model(tids).logits
t1 = time.perf_counter(); run(); first = time.perf_counter() - t1
times = []
for _ in range(5):
    t1 = time.perf_counter(); run(); times.append(time.perf_counter() - t1)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(load_s=load, first_s=first, forward_ms=1000 * sorted(times)[2], peak_rss_mb=rss, load_rss_mb=rss - base)))
"""


def measure(which: str, folder: Path, seq: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(folder), str(seq)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    if out.returncode:
        raise SystemExit(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="/tmp/zoo-bench-120m")
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    folder = Path(args.folder)
    build_checkpoint(folder)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6
    zoo, hf = measure("zoo", folder, args.seq), measure("transformers", folder, args.seq)
    print(f"\ncheckpoint {size:.0f} MB, forward batch 1 x {args.seq}")
    print(f"{'':22}{'zoo':>12}{'transformers':>14}{'ratio':>8}")
    for key, label in [("load_s", "load (s)"), ("peak_rss_mb", "peak RSS (MB)"),
                       ("load_rss_mb", "peak - runtime (MB)"), ("first_s", "first call (s)"),
                       ("forward_ms", "forward (ms)")]:
        print(f"{label:22}{zoo[key]:12.2f}{hf[key]:14.2f}{zoo[key] / hf[key]:8.2f}")


if __name__ == "__main__":
    main()
