"""Describe each param once (shape, logical axes, initializer); derive the rest.

A family writes one tree of :class:`ParamSpec`. From it come real random params
(``init_params``), abstract shapes for loading and checks (``abstract_params``),
and the logical-axis tree that ``zoo.sharding`` maps onto a mesh
(``logical_axes``). Layer stacking for ``lax.scan`` is a transformation of the
spec tree too, so scanned and unrolled layouts can never disagree.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Init = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def normal(std: float) -> Init:
    return lambda key, shape, dtype: (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def zeros(key, shape, dtype):  # noqa: ARG001 - same signature as every initializer
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype):  # noqa: ARG001
    return jnp.ones(shape, dtype)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: Init = zeros

    def __post_init__(self):
        if len(self.shape) != len(self.axes):
            raise ValueError(f"ParamSpec shape {self.shape} and axes {self.axes} differ in rank")


def is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def stack_specs(layer_spec: Any, num_layers: int) -> Any:
    """Add a leading ``layers`` axis to every spec (the scanned layout)."""
    return jax.tree.map(
        lambda s: ParamSpec((num_layers, *s.shape), ("layers", *s.axes), s.init), layer_spec, is_leaf=is_spec
    )


def layers_spec(layer_spec: Any, num_layers: int, scan_layers: bool) -> Any:
    return stack_specs(layer_spec, num_layers) if scan_layers else [layer_spec] * num_layers


def decoder_param_specs(cfg: Any, layers: Any, final_norm: Any, *, embed: str = "embed_tokens",
                        norm: str = "norm", head: str = "lm_head", **extra: Any) -> dict[str, Any]:
    """What every decoder LM holds around its layers: a token embedding, the layer stack, a final
    norm and (unless tied) an output head; ``extra`` adds entries such as learned positions.
    ``embed``/``norm``/``head`` keep each family's checkpoint names."""
    w = normal(cfg.initializer_range)
    specs = {embed: {"embedding": ParamSpec((cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), w)},
             **extra, "layers": layers, norm: final_norm}
    if not cfg.tie_word_embeddings:
        specs[head] = {"kernel": ParamSpec((cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), w)}
    return specs


def init_params(specs: Any, key: jax.Array, dtype: Any) -> Any:
    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [s.init(k, s.shape, dtype) for s, k in zip(leaves, keys)])


def abstract_params(specs: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype)), specs, is_leaf=is_spec)


def logical_axes(specs: Any) -> Any:
    return jax.tree.map(lambda s: s.axes, specs, is_leaf=is_spec)


def stack_layers(layers: Sequence[Any]) -> Any:
    """Per-layer list -> one tree of stacked arrays (unrolled -> scanned)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)


def unstack_layers(stacked: Any, num_layers: int) -> list[Any]:
    """Stacked tree -> per-layer list (scanned -> unrolled)."""
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)]


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
