"""Two processes on localhost (JAX's multi-controller runtime, gloo CPU collectives) take the
same train step as one process: each feeds its half of the global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optax

ROOT = Path(__file__).resolve().parent.parent
LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)

WORKER = r"""
import json, sys
import numpy as np, optax
from zoo.train.loop import initialize_distributed
initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
import jax
from zoo import AutoConfig, AutoModelForCausalLM
from zoo.sharding import make_mesh, shard_batch
from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step
from zoo.train.data import PackedBatches
llama, rows = json.loads(sys.argv[3]), {"input_ids": np.asarray(json.loads(sys.argv[4]), np.int32)}
model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **llama), 0)
mesh = make_mesh({"data": jax.device_count()})
opt = optax.sgd(0.1)
state = create_train_state(model, opt)
step = make_train_step(causal_lm_loss_fn(model), opt, mesh=mesh, rules="dp")
data = PackedBatches(rows, 4, seed=0, process_index=jax.process_index(), process_count=jax.process_count())
losses = []
for _ in range(2):
    state, m = step(state, shard_batch(next(data), mesh, "dp"))
    losses.append(float(m["loss"]))
print("RESULT", jax.process_count(), jax.device_count(), json.dumps(losses), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one():
    from zoo import AutoConfig, AutoModelForCausalLM
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step
    from zoo.train.data import PackedBatches

    rows = np.random.RandomState(0).randint(3, 64, (8, 12)).tolist()
    address = f"localhost:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i), json.dumps(LLAMA), json.dumps(rows)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        results.append(line.split(maxsplit=3))
    assert all(r[1] == "2" and r[2] == "2" for r in results), "2 processes, 1 device each"

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **LLAMA), 0)
    opt = optax.sgd(0.1)
    state = create_train_state(model, opt)
    step = make_train_step(causal_lm_loss_fn(model), opt)
    data = PackedBatches({"input_ids": np.asarray(rows, np.int32)}, 4, seed=0)
    expected = []
    for _ in range(2):
        state, m = step(state, next(data))
        expected.append(float(m["loss"]))
    for r in results:
        np.testing.assert_allclose(json.loads(r[3]), expected, rtol=1e-5)
