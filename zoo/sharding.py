"""Meshes and logical-axis rules: parallelism is a change of rules, not of model code.

Every param and every constrained activation names its dimensions logically
("batch", "embed", "q_heads", "mlp", ...). A rules table maps those names to mesh
axes ("data", "fsdp", "tensor", "expert"). A dimension that the mesh axis does
not divide, or an axis the mesh lacks, stays replicated, so one rules preset
works on any mesh shape.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert")

Rules = Mapping[str, tuple[str, ...]]

_BATCH = {"batch": ("data", "fsdp", "expert")}
RULE_PRESETS: dict[str, Rules] = {
    "dp": {**_BATCH},
    "fsdp": {**_BATCH, "embed": ("fsdp",), "vocab": ("fsdp",)},
    "tp": {
        **_BATCH,
        "q_heads": ("tensor",),
        "kv_heads": ("tensor",),
        "mlp": ("tensor",),
        "vocab": ("tensor",),
        "act_heads": ("tensor",),
        "act_mlp": ("tensor",),
    },
    "fsdp+tp": {
        **_BATCH,
        "embed": ("fsdp",),
        "q_heads": ("tensor",),
        "kv_heads": ("tensor",),
        "mlp": ("tensor",),
        "vocab": ("tensor",),
        "act_heads": ("tensor",),
        "act_mlp": ("tensor",),
    },
    "ep": {**_BATCH, "expert": ("expert",), "embed": ("fsdp",)},
}

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar("zoo_mesh", default=None)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all). ``shape`` maps axis names to sizes; one may be -1.

    With no shape, every device goes on the ``data`` axis.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"data": -1})
    unknown = [k for k in shape if k not in MESH_AXES]
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; use {MESH_AXES}")
    fixed = math.prod(v for v in shape.values() if v != -1)
    for k, v in shape.items():
        if v == -1:
            shape[k] = len(devices) // fixed
    if math.prod(shape.values()) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape.values())} devices, have {len(devices)}")
    arr = np.array(devices).reshape(tuple(shape.values()))
    # Auto axes spelled out: our rules place tensors with NamedSharding + with_sharding_constraint
    # and let XLA propagate the rest. jax.make_mesh already defaults to Explicit axes (jax 0.8.1+);
    # naming the type keeps Mesh() meaning the same if its default follows.
    return Mesh(arr, tuple(shape.keys()), axis_types=(AxisType.Auto,) * len(shape))


def get_rules(rules: str | Rules | None) -> Rules:
    if rules is None:
        return RULE_PRESETS["fsdp"]
    if isinstance(rules, str):
        try:
            return RULE_PRESETS[rules]
        except KeyError:
            raise ValueError(f"unknown sharding rules '{rules}'; presets: {sorted(RULE_PRESETS)}") from None
    return rules


def logical_to_spec(
    axes: Sequence[str | None], rules: Rules, mesh: Mesh, shape: Sequence[int] | None = None
) -> PartitionSpec:
    """Map logical names to mesh axes, skipping axes the mesh lacks, has at size 1, or
    that do not divide the dimension, and never using a mesh axis twice."""
    used: set[str] = set()
    out: list[Any] = []
    for i, name in enumerate(axes):
        chosen: list[str] = []
        size = 1
        for mesh_axis in rules.get(name, ()) if name else ():
            n = mesh.shape.get(mesh_axis, 1)
            if mesh_axis in used or n == 1:
                continue
            if shape is not None and shape[i] % (size * n) != 0:
                continue
            chosen.append(mesh_axis)
            size *= n
        used.update(chosen)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*out)


def named_sharding(axes: Sequence[str | None], mesh: Mesh, rules: Rules, shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, shape))


def param_shardings(abstract: Any, axes_tree: Any, mesh: Mesh, rules: str | Rules | None = None) -> Any:
    """NamedSharding for every param, from its shape and logical axes."""
    rules = get_rules(rules)
    return jax.tree.map(
        lambda a, ax: named_sharding(ax, mesh, rules, a.shape),
        abstract,
        axes_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(e, (str, type(None))) for e in x),
    )


def zero_shardings(shardings: Any, abstract: Any, rules: str | Rules | None = None) -> Any:
    """ZeRO placement for the optimizer state and the update: each param's sharding with its
    largest still-unsplit dimension also split over the data-parallel mesh axes (those the
    rules put ``batch`` on) that it does not use yet. A dimension they do not divide stays whole.

    Under plain data parallelism (params replicated) every device would otherwise hold all of
    Adam's moments and run the whole update; with these each updates its 1/n of the params
    (gradients reduce-scattered, new params all-gathered once per step).
    """
    batch_axes = get_rules(rules).get("batch", ())

    def widen(sh: NamedSharding, a: Any) -> NamedSharding:
        mesh = sh.mesh
        spec = list(sh.spec) + [None] * (len(a.shape) - len(sh.spec))
        used = {ax for entry in spec if entry is not None for ax in ((entry,) if isinstance(entry, str) else entry)}
        free = [ax for ax in batch_axes if ax not in used and mesh.shape.get(ax, 1) > 1]
        n = math.prod(mesh.shape[ax] for ax in free)
        if not free:
            return sh
        for dim in sorted(range(len(a.shape)), key=lambda d: -a.shape[d]):
            if spec[dim] is None and a.shape[dim] % n == 0:
                spec[dim] = free[0] if len(free) == 1 else tuple(free)
                return NamedSharding(mesh, PartitionSpec(*spec))
        return sh

    return jax.tree.map(widen, shardings, abstract)


def shard_params(params: Any, axes_tree: Any, mesh: Mesh, rules: str | Rules | None = None) -> Any:
    shardings = param_shardings(params, axes_tree, mesh, rules)
    return jax.tree.map(jax.device_put, params, shardings)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: str | Rules | None = None) -> Iterator[Mesh]:
    """Activate a mesh + rules so ``constrain`` inside models shards activations."""
    token = _ACTIVE.set((mesh, get_rules(rules)))
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> tuple[Mesh, Rules] | None:
    return _ACTIVE.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op without an active mesh."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, named_sharding(axes, mesh, rules, x.shape))


def batch_sharding(mesh: Mesh, rules: str | Rules | None = None, ndim: int = 2,
                   batch_size: int | None = None) -> NamedSharding:
    """Sharding of a [batch, ...] input: the batch axis over the data-parallel mesh axes."""
    axes = ("batch",) + (None,) * (ndim - 1)
    shape = None if batch_size is None else (batch_size,) + (1,) * (ndim - 1)
    return NamedSharding(mesh, logical_to_spec(axes, get_rules(rules), mesh, shape))


def shard_batch(batch: Any, mesh: Mesh, rules: str | Rules | None = None) -> Any:
    """Place a batch (a tree of host arrays) on the mesh, split along the batch axis.

    With several processes each passes its own rows (its share of the global batch) and gets
    back global arrays, as ``jax.make_array_from_process_local_data`` builds them.
    """
    def place(x):
        x = np.asarray(x)
        if jax.process_count() > 1:
            sharding = batch_sharding(mesh, rules, x.ndim, x.shape[0] * jax.process_count())
            return jax.make_array_from_process_local_data(sharding, x)
        return jax.device_put(x, batch_sharding(mesh, rules, x.ndim, x.shape[0]))

    return jax.tree.map(place, batch)
