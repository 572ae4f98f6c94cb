"""The one place that knows how the Pallas API differs across the jax versions we support.

Why this exists: jax 0.11 deprecated Pallas' Triton backend (``jax.experimental.pallas.triton``,
"migrate to Mosaic GPU") and says a later release removes it. Our GPU kernels are written for the
Triton lowering, and Mosaic GPU's ``pallas_call`` route is itself deprecated there (in favour of
``plgpu.kernel``), so on jax 0.10 and 0.11 Triton is still the right backend. When a jax without
it arrives, the kernels must fail with a clear message and ``attn_implementation="auto"`` must
pick an XLA path instead of crashing; CPU interpret mode never needs Triton at all.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

import jax


@functools.cache
def pallas_triton() -> ModuleType | None:
    """``jax.experimental.pallas.triton``, or None where this jax no longer ships it."""
    try:
        return importlib.import_module("jax.experimental.pallas.triton")
    except ImportError:
        return None


def has_pallas_triton() -> bool:
    return pallas_triton() is not None


def triton_compiler_params(*, num_warps: int, num_stages: int) -> Any:
    """Triton ``CompilerParams`` (named so since jax 0.7; ``TritonCompilerParams`` is gone)."""
    triton = pallas_triton()
    if triton is None:
        raise RuntimeError(
            f"jax {jax.__version__} no longer ships Pallas' Triton backend, which the zoo's GPU attention "
            "kernels use; pick attn_implementation='xla' or 'cudnn' (or 'auto', which does)")
    return triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
