"""Forward compatibility across the jax versions we support (0.10 and 0.11; see kernels/_compat.py):
a jax without Pallas' Triton backend must leave 'auto' on XLA and refuse 'pallas' on GPU clearly,
CPU interpret mode must not need Triton, and our meshes keep Auto axes whatever jax's default."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import _compat


def test_triton_backend_present_here_gives_compiler_params(monkeypatch):
    from zoo.nn import attention as attn

    params = _compat.triton_compiler_params(num_warps=4, num_stages=2)
    assert (params.num_warps, params.num_stages) == (4, 2)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attn.resolve_implementation("auto") == "pallas"


def test_without_triton_backend_auto_uses_xla_and_pallas_is_refused(monkeypatch):
    from zoo.nn import attention as attn

    monkeypatch.setattr(_compat, "pallas_triton", lambda: None)
    with pytest.raises(RuntimeError, match="no longer ships Pallas' Triton backend"):
        _compat.triton_compiler_params(num_warps=4, num_stages=2)

    # Interpret mode (CPU) never needs Triton: decode and flash still match their references.
    q, k, v = (jax.random.normal(jax.random.key(i), s, jnp.float32)
               for i, s in enumerate([(2, 1, 4, 16), (2, 24, 2, 16), (2, 24, 2, 16)]))
    lengths = jnp.array([24, 9])
    np.testing.assert_allclose(
        np.asarray(kernels.decode_attention(q, k, v, lengths, interpret=True, backend="triton")),
        np.asarray(kernels.decode_attention_reference(q, k, v, lengths)), atol=2e-5)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attn.resolve_implementation("auto") == "xla"
    assert attn.resolve_implementation("cudnn") == "cudnn"
    with pytest.raises(ValueError, match="Triton"):
        attn.resolve_implementation("pallas")


def test_meshes_have_auto_axes():
    from jax.sharding import AxisType

    from zoo.sharding import make_mesh

    mesh = make_mesh({"fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
    assert tuple(mesh.axis_types) == (AxisType.Auto, AxisType.Auto)
