"""The training state as one pytree: step, trainable params, optimizer state, and the optional
extras (frozen params, dropout key, dynamic loss scale, EMA of the params).

Trainable and frozen params are two trees of the same structure with ``None`` in each
other's places, so the optimizer only ever sees (and holds state for) the trainable leaves,
and :func:`combine` puts the model back together inside the step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LossScale:
    """Dynamic loss scaling (for float16 compute): halve on overflow, double after ``period`` good steps."""

    scale: jax.Array
    good_steps: jax.Array
    period: int = dataclasses.field(default=2000, metadata=dict(static=True))

    @classmethod
    def create(cls, initial: float = 2.0**15, period: int = 2000) -> "LossScale":
        return cls(jnp.asarray(initial, jnp.float32), jnp.zeros((), jnp.int32), period)

    def update(self, finite: jax.Array) -> "LossScale":
        grown = self.good_steps + 1 >= self.period
        scale = jnp.where(finite, jnp.where(grown, self.scale * 2, self.scale), jnp.maximum(self.scale / 2, 1.0))
        good = jnp.where(finite & ~grown, self.good_steps + 1, 0)
        return LossScale(scale, good.astype(jnp.int32), self.period)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    frozen: Any = None
    rng: jax.Array | None = None
    loss_scale: LossScale | None = None
    ema: Any = None

    def replace(self, **changes: Any) -> "TrainState":
        return dataclasses.replace(self, **changes)

    def full_params(self) -> Any:
        """Trainable and frozen params in one tree (what the model's forward takes)."""
        return combine(self.params, self.frozen)


def _is_none(x: Any) -> bool:
    return x is None


def partition(params: Any, trainable: Any) -> tuple[Any, Any]:
    """Split ``params`` by a bool tree (or a ``(path, leaf) -> bool`` function) into
    (trainable, frozen), each with ``None`` where the other has a leaf."""
    if callable(trainable):
        mask = jax.tree_util.tree_map_with_path(lambda p, x: bool(trainable(p, x)), params)
    else:
        mask = trainable
    train = jax.tree.map(lambda m, x: x if m else None, mask, params)
    frozen = jax.tree.map(lambda m, x: None if m else x, mask, params)
    return train, frozen


def combine(trainable: Any, frozen: Any) -> Any:
    """Inverse of :func:`partition`."""
    if frozen is None:
        return trainable
    return jax.tree.map(lambda a, b: b if a is None else a, trainable, frozen, is_leaf=_is_none)


def create_train_state(
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    trainable: Any = None,
    rng: jax.Array | int | None = None,
    loss_scale: LossScale | None = None,
    ema: bool = False,
    shardings: Any = None,
    opt_shardings: Any = None,
    copy: bool = True,
) -> TrainState:
    """A fresh state. ``trainable``: a bool tree or a ``(path, leaf) -> bool`` predicate (default:
    every leaf; for a ``zoo.peft.PeftModel``, its adapters). ``shardings``: a tree of shardings for ``params``; the optimizer state's
    param-shaped leaves (Adam's moments) are placed like the param they track.

    The step donates the state, so by default the params are copied first and the model they
    came from stays usable; ``copy=False`` saves that memory (the model's arrays are then consumed).

    ``opt_shardings``: place the moments by this tree instead of ``shardings`` (ZeRO, from
    ``zoo.sharding.zero_shardings``: each data-parallel device holds 1/n of them)."""
    if hasattr(params, "params") and hasattr(params, "config"):  # a model object
        if trainable is None and hasattr(params, "trainable_mask"):  # a PeftModel: only its adapters
            trainable = params.trainable_mask()
        params = params.params
    if copy:
        params = jax.tree.map(jnp.copy, params)
    if trainable is None:
        train, frozen = params, None
    else:
        train, frozen = partition(params, trainable)
    init = optimizer.init
    if opt_shardings is not None:
        shardings = opt_shardings
    if shardings is not None:
        train_shardings, _ = partition(shardings, trainable) if trainable is not None else (shardings, None)
        abstract = jax.eval_shape(optimizer.init, train)
        init = jax.jit(optimizer.init, out_shardings=opt_state_shardings(abstract, train, train_shardings))
    opt_state = init(train)
    key = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=train,
        opt_state=opt_state,
        frozen=frozen,
        rng=key,
        loss_scale=loss_scale,
        ema=jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32, copy=True), train) if ema else None,
    )


def _path_key(path: tuple) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def opt_state_shardings(abstract_opt_state: Any, params: Any, param_shardings: Any) -> Any:
    """Shard each optimizer-state leaf like the param whose path ends its own path and whose
    shape it has (Adam's mu/nu); everything else (counts, scalars) is replicated."""
    by_path: dict[tuple, tuple[tuple, Any]] = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings)):
        by_path[_path_key(path)] = (tuple(leaf.shape), sh)
    mesh = next(iter(by_path.values()))[1].mesh if by_path else None

    def pick(path, leaf):
        key = _path_key(path)
        for start in range(len(key)):
            hit = by_path.get(key[start:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def state_shardings(state: TrainState) -> Any:
    """The sharding of every leaf of a (placed) state, for ``jit`` in/out shardings."""
    return jax.tree.map(lambda x: x.sharding, state)


def count_leaves(tree: Any) -> int:
    return len(jax.tree.leaves(tree))


__all__ = ["TrainState", "LossScale", "create_train_state", "partition", "combine", "opt_state_shardings",
           "state_shardings", "count_leaves", "Callable"]
