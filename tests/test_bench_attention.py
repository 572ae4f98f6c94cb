"""benchmarks/bench_attention_gpu.py --dry-run: every code path of the GPU benchmark runs on CPU
(Pallas interpret mode, tiny shapes), so the script is known to work before a GPU is at hand;
--lower-only: its full-size Pallas functions lower for cuda (Triton) without a GPU."""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_dry_run_prints_all_tables(bench, monkeypatch, capsys):
    tiny = dataclasses.replace(bench.SMOKE, seq=32, decode_contexts=(64,))
    monkeypatch.setattr(bench, "SMOKE", tiny)
    bench.main(["--dry-run"])
    out = capsys.readouterr().out
    assert "interpret=True" in out
    # correctness section: our kernels agree with the reference at bf16 precision
    errors = dict(re.findall(r"^(prefill \w+|decode [\w-]+ ctx=\d+)\s+([\d.e+-]+)\s*$", out, re.M))
    assert set(errors) == {"prefill fwd", "prefill dq", "prefill dk", "prefill dv",
                           "decode pallas ctx=64", "decode pallas-paged ctx=64"}
    assert all(float(e) < 2e-2 for e in errors.values()), errors
    # timing sections: pallas and xla timed for every pass/context, cudnn reported, not fatal
    for pass_ in ("fwd", "fwd+bwd"):
        for impl in ("pallas", "xla"):
            assert re.search(rf"^{re.escape(pass_)}\s+{impl}\s+[\d.]+\s", out, re.M), (pass_, impl)
        assert re.search(rf"^{re.escape(pass_)}\s+cudnn\s", out, re.M)
    for impl in ("pallas", "pallas-paged", "xla"):
        assert re.search(rf"^64\s+{impl}\s+[\d.]+\s", out, re.M), impl
    assert "vs cudnn" in out


def test_lower_only_exports_every_pallas_function_for_cuda(bench, capsys):
    bench.main(["--lower-only"])  # exits non-zero if a Pallas function fails to lower
    out = capsys.readouterr().out
    lowered = dict(re.findall(r"^((?:prefill|decode) \S+ \S+(?: ctx=\d+)?)\s+ok\s+(\d+)", out, re.M))
    for case in ("prefill fwd pallas", "prefill fwd+bwd pallas", "decode pallas ctx=8192",
                 "decode pallas-paged ctx=131072"):
        assert int(lowered[case]) >= 1, (case, out)
    assert int(lowered["prefill fwd+bwd pallas"]) == 3  # forward, dK/dV and dQ kernels
    assert lowered["prefill fwd xla"] == "0"
