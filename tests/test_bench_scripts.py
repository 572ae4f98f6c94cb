"""Smoke test for benchmark scripts, so they keep running as the library changes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_encoder_runs_and_prints_ratio():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_encoder.py", "--batch", "2", "--seq", "16", "--reps", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ratio_lines = [line for line in proc.stdout.splitlines() if line.startswith("ratio zoo/torch:")]
    assert len(ratio_lines) == 1, proc.stdout
    assert float(ratio_lines[0].split(":")[1]) > 0
    assert "max |last_hidden_state diff|" in proc.stdout


def test_bench_generate_runs_on_a_tiny_config(tmp_path):
    import json

    config = {"model_type": "llama", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_generate.py", "--config", str(path), "--reps", "1", "--new", "4",
         "--prompt", "4", "--batch", "1", "--skip-static"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "greedy tokens identical (batch 1, 16 new): True" in proc.stdout, proc.stdout
    assert "bare XLA matrix-vector chain" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.lstrip().startswith("1 | zoo")]
    assert len(rows) == 1 and float(rows[0].split("|")[3]) > 0, proc.stdout
