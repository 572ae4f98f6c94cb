"""HF tensor names <-> our param tree, driven by one table of rules per family.

A :class:`Rule` names an HF tensor (``{i}`` for the layer index), the path of the
matching param in our tree, and how the layouts differ: PyTorch stores linear
weights ``[out, in]``; we store ``[in..., out...]`` with heads split out. Loading
and saving run the same table in opposite directions, so they cannot drift.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo.hub import CheckpointError, CheckpointReader
from zoo.nn.params import ParamSpec, is_spec

Path_ = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor <-> one param.

    ``split``: None copies (reshaping to our shape); an int k transposes, our first
    k dims being PyTorch's input dim. ``to_ours``/``from_ours`` override both for
    layouts a transpose cannot express (fused projections, offsets).
    """

    hf: str
    path: Path_
    split: int | None = None
    flat: bool = False  # HF stores it 1-D (e.g. a q bias [heads * head_dim])
    to_ours: Callable[[np.ndarray, tuple[int, ...]], np.ndarray] | None = None
    from_ours: Callable[[np.ndarray], np.ndarray] | None = None
    # Layers that have no such tensor (e.g. ModernBERT's first layer has no attention norm):
    # loading fills them with ``fill`` (so stacked layers keep one shape), saving leaves them out.
    skip_layers: tuple[int, ...] = ()
    fill: float = 0.0
    # Mixture-of-experts weights: ``{e}`` in ``hf`` names ``stack`` tensors (one per expert)
    # that become one param with a leading ``expert`` dim (after ``layers`` when stacked).
    stack: int = 0
    # Only these layers have the tensor (e.g. MoE vs dense MLP layers): the stacked param
    # holds just them, in order. None: every layer.
    only_layers: tuple[int, ...] | None = None
    # One slice of a fused HF tensor (Phi-3's qkv_proj, gate_up_proj): rows [start, stop) of
    # its first axis, which has ``total`` rows. Loading splits; saving concatenates the rules
    # that name the same tensor, in row order, so the checkpoint stays fused.
    rows: tuple[int, int, int] | None = None

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf

    def layer_ids(self, num_layers: int) -> tuple[int, ...]:
        return tuple(range(num_layers)) if self.only_layers is None else self.only_layers

    def names(self, layer: int | None = None) -> list[str]:
        """The HF tensor name(s) of one layer: one, or one per expert when stacked."""
        fmt = {} if layer is None else {"i": layer}
        if self.stack:
            return [self.hf.format(e=e, **fmt) for e in range(self.stack)]
        return [self.hf.format(**fmt) if fmt else self.hf]

    def load(self, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.to_ours is not None:
            return self.to_ours(w, shape)
        if self.split is None:
            return w.reshape(shape)
        return w.T.reshape(shape) if w.ndim == 2 else w.reshape(-1, math.prod(shape[: self.split])).T.reshape(shape)

    def save(self, w: np.ndarray) -> np.ndarray:
        if self.from_ours is not None:
            return self.from_ours(w)
        if self.split is None:
            return w.reshape(-1) if self.flat else w
        return w.reshape(math.prod(w.shape[: self.split]), -1).T

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The HF shape that corresponds to our shape (no memory: a zero-stride view)."""
        return self.save(np.broadcast_to(np.zeros((), np.float32), shape)).shape


def _get(tree: Any, path: Path_) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: Path_, value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _layer_spec(specs: Any, path: Path_, layer: int, scan: bool) -> ParamSpec:
    if scan:
        s = _get(specs, path)
        return ParamSpec(s.shape[1:], s.axes[1:], s.init)
    return _get(specs["layers"][layer], path[1:])


def _resolve_name(reader: CheckpointReader, name: str, prefixes: Sequence[str]) -> str | None:
    if name in reader:
        return name
    for prefix in prefixes:  # base-model checkpoints omit "model.", task heads add it
        if name.startswith(prefix) and name[len(prefix):] in reader:
            return name[len(prefix):]
        if prefix + name in reader:
            return prefix + name
    return None


def load_params(
    reader: CheckpointReader,
    rules: Sequence[Rule],
    specs: Any,
    *,
    num_layers: int,
    scan_layers: bool,
    dtype: Any,
    place: Callable[[np.ndarray, tuple[str | None, ...]], jax.Array] | None = None,
    ignore: Sequence[str] = (),
    prefixes: Sequence[str] = ("model.",),
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Read every rule's tensor(s), convert, cast, check shapes and place on device.

    One param (stacked over layers when scanned) is materialised on the host at a
    time, so peak host memory stays near the largest param, not the model.
    """
    np_dtype = jnp.dtype(dtype)
    place = place or (lambda arr, axes: jnp.asarray(arr))
    used: set[str] = set()
    missing: list[str] = []
    params: dict = {}
    layers_list: list[dict] = [dict() for _ in range(num_layers)] if not scan_layers else []

    def fetch(name: str, spec: ParamSpec, rule: Rule, layer: int | None = None) -> np.ndarray | None:
        if layer is not None and layer in rule.skip_layers:
            return np.full(spec.shape, rule.fill, np_dtype)
        if rule.stack:
            one = ParamSpec(spec.shape[1:], spec.axes[1:], spec.init)
            parts = [fetch_one(n, one, rule) for n in rule.names(layer)]
            return None if any(p is None for p in parts) else np.stack(parts)
        return fetch_one(name, spec, rule)

    def fetch_one(name: str, spec: ParamSpec, rule: Rule) -> np.ndarray | None:
        real = _resolve_name(reader, name, prefixes)
        if real is None:
            missing.append(name)
            return None
        used.add(real)
        if rule.rows is None:
            w = reader.get(real)
        else:  # read just this slice of the fused tensor
            start, stop, total = rule.rows
            rows = reader.shape(real)[0]
            if rows != total:
                raise CheckpointError(f"fused tensor '{real}' has {rows} rows but the config implies {total}")
            w = reader.get(real, (start, stop))
        want = rule.hf_shape(spec.shape)
        if tuple(w.shape) != tuple(want):
            raise CheckpointError(
                f"tensor '{real}' has shape {tuple(w.shape)} but the config implies {tuple(want)}"
            )
        return np.asarray(rule.load(w, spec.shape), dtype=np_dtype)

    for rule in rules:
        if progress:
            progress(rule.hf)
        if not rule.per_layer:
            spec = _get(specs, rule.path)
            arr = fetch(rule.names()[0], spec, rule)
            if arr is not None:
                _set(params, rule.path, place(arr, spec.axes))
            continue
        if scan_layers:
            full = _get(specs, rule.path)
            parts = [fetch(rule.names(i)[0], _layer_spec(specs, rule.path, i, True), rule, i)
                     for i in rule.layer_ids(num_layers)]
            if any(p is None for p in parts):
                continue
            stacked = np.stack(parts)
            del parts
            _set(params, rule.path, place(stacked, full.axes))
        else:
            for i in rule.layer_ids(num_layers):
                spec = _layer_spec(specs, rule.path, i, False)
                arr = fetch(rule.names(i)[0], spec, rule, i)
                if arr is not None:
                    _set(layers_list[i], rule.path[1:], place(arr, spec.axes))
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise CheckpointError(f"checkpoint {reader.folder} is missing tensors: {shown}")
    extra = [k for k in reader.keys() if k not in used and not any(pat in k for pat in ignore)]
    if extra:
        shown = ", ".join(sorted(extra)[:8]) + (f" ... ({len(extra)} in all)" if len(extra) > 8 else "")
        raise CheckpointError(f"checkpoint {reader.folder} has tensors this model does not use: {shown}")
    if not scan_layers:
        params["layers"] = layers_list
    return params


def iter_hf_tensors(
    params: Any, rules: Sequence[Rule], *, num_layers: int, scan_layers: bool, dtype: Any = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, numpy array) for every param, one device transfer per param; the
    slices of a fused tensor (``Rule.rows``) are concatenated back into one."""
    for group in _fused_groups(rules):
        streams = [_rule_tensors(params, r, num_layers=num_layers, scan_layers=scan_layers) for r in group]
        for parts in zip(*streams):
            name = parts[0][0]
            arr = parts[0][1] if len(parts) == 1 else np.concatenate([a for _, a in parts], axis=0)
            yield name, _cast(arr, dtype)


def _fused_groups(rules: Sequence[Rule]) -> list[list[Rule]]:
    """Rules grouped by HF name (first-seen order); a fused group is sorted by row and must
    cover its tensor exactly."""
    groups: dict[str, list[Rule]] = {}
    for rule in rules:
        groups.setdefault(rule.hf if rule.rows is not None else f"\0{id(rule)}", []).append(rule)
    out = []
    for group in groups.values():
        if group[0].rows is not None:
            group = sorted(group, key=lambda r: r.rows[0])
            bounds = [0] + [b for r in group for b in r.rows[:2]] + [group[0].rows[2]]
            if any(bounds[j] != bounds[j + 1] for j in range(0, len(bounds), 2)):
                raise ValueError(f"the rules for fused tensor '{group[0].hf}' do not cover it exactly: "
                                 f"{[r.rows for r in group]}")
        out.append(group)
    return out


def _rule_tensors(params: Any, rule: Rule, *, num_layers: int, scan_layers: bool
                  ) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, HF-layout array) for one rule: once, or per layer, or per expert."""
    if not rule.per_layer:
        yield from _save_one(rule, None, np.asarray(jax.device_get(_get(params, rule.path))))
        return
    ids = rule.layer_ids(num_layers)
    if scan_layers:
        stacked = np.asarray(jax.device_get(_get(params, rule.path)))
        for j, i in enumerate(ids):
            if i not in rule.skip_layers:
                yield from _save_one(rule, i, stacked[j])
    else:
        for i in [i for i in ids if i not in rule.skip_layers]:
            yield from _save_one(rule, i, np.asarray(jax.device_get(_get(params["layers"][i], rule.path[1:]))))


def _save_one(rule: Rule, layer: int | None, arr: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    names = rule.names(layer)
    if not rule.stack:
        yield names[0], rule.save(arr)
        return
    for e, name in enumerate(names):
        yield name, rule.save(arr[e])


def _cast(arr: np.ndarray, dtype: Any) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    return arr if dtype is None else arr.astype(jnp.dtype(dtype))


def rules_for_tree(specs: Any, rules: Sequence[Rule]) -> list[Rule]:
    """Keep the rules whose param exists in this config's tree (optional biases, norms)."""
    kept = []
    for r in rules:
        try:
            if r.per_layer:
                layer = specs["layers"] if isinstance(specs["layers"], dict) else specs["layers"][0]
                _get(layer, r.path[1:])
            else:
                _get(specs, r.path)
        except (KeyError, IndexError, TypeError):
            continue
        kept.append(r)
    return kept


__all__ = ["Rule", "load_params", "iter_hf_tensors", "rules_for_tree", "is_spec"]
