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
