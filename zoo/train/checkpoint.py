"""Orbax checkpoints of the sharded TrainState: async saves, keep-N, restore onto any mesh.

The state is saved as a flat dict of its leaves (named by their tree paths), so optax's
named tuples, ``None`` fields and our dataclasses need no orbax registration; restoring
takes a *template* state (a real one, or ``jax.eval_shape`` of one) whose shapes, dtypes and
shardings say where every leaf goes, so a checkpoint written on one mesh restores onto
another. The data iterator's position and any small JSON metadata travel alongside.

Orbax writes each step into a temporary directory and renames it only when complete, so a
save interrupted half-way leaves the previous checkpoints untouched and is never picked up
as the latest one (``latest_step`` only sees finalized steps).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def _leaf_name(path: tuple) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return ".".join(parts) or "root"


def flatten_state(state: Any) -> dict[str, Any]:
    """{path name: leaf}; paths are unique within one tree, so names are too."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    out = {f"{i:05d}.{_leaf_name(p)}": x for i, (p, x) in enumerate(leaves)}
    return out


def _abstract(x: Any) -> Any:
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


class CheckpointManager:
    """``save(step, state, data_state=...)`` every ``save_interval_steps``; ``restore(template)``.

    ``max_to_keep``: older steps are deleted once a newer one is committed. ``async_save``:
    ``save`` returns once the arrays are copied off the devices; the write continues in the
    background (``wait_until_finished`` blocks; the next ``save`` and ``close`` wait too).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
                 async_save: bool = True):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save, create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # ---- queries
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    # ---- save
    def save(self, step: int, state: Any, *, data_state: Mapping[str, Any] | None = None,
             metadata: Mapping[str, Any] | None = None, force: bool = False) -> bool:
        """Save (asynchronously) if ``step`` is due (or ``force``); returns whether it saves."""
        ocp = _ocp()
        items = {"state": ocp.args.StandardSave(flatten_state(state)),
                 "extra": ocp.args.JsonSave({"data_state": dict(data_state or {}), "metadata": dict(metadata or {}),
                                             "step": int(step)})}
        return bool(self._manager.save(int(step), args=ocp.args.Composite(**items), force=force))

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    # ---- restore
    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """(state, extra) at ``step`` (default: the latest finalized one). ``template``: a state of
        the same structure whose leaves (arrays or ShapeDtypeStructs) carry the target shardings;
        ``extra`` holds ``data_state`` and ``metadata``."""
        ocp = _ocp()
        self.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        flat_template = flatten_state(template)
        abstract = {k: _abstract(v) for k, v in flat_template.items()}
        mesh = next((v.sharding.mesh for v in abstract.values()
                     if isinstance(v.sharding, jax.sharding.NamedSharding)), None)
        if mesh is not None:
            # Restored arrays are committed to their devices: unsharded leaves (the step counter,
            # keys) go replicated on the template's mesh, or jit would refuse to mix them.
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            abstract = {k: v if isinstance(v.sharding, jax.sharding.NamedSharding)
                        else jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated) for k, v in abstract.items()}
        restored = self._manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
        flat = restored["state"]
        if set(flat) != set(abstract):
            missing = sorted(set(abstract) - set(flat))[:3]
            raise ValueError(f"checkpoint step {step} does not match the template state (e.g. {missing})")
        treedef = jax.tree.structure(template)
        state = jax.tree.unflatten(treedef, [flat[k] for k in flat_template])
        return state, dict(restored["extra"] or {})

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def abstract_state(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a state: a restore template that allocates nothing."""
    return jax.tree.map(_abstract, state)


def export_pretrained(model: Any, state: Any, directory: str | os.PathLike, *, merge_lora: bool = False,
                      dtype: Any = None) -> None:
    """Write the trained params as a Hub folder: ``model.save_pretrained`` with ``state``'s params
    (a ``zoo.peft.PeftModel`` writes its adapters, or the merged model with ``merge_lora``)."""
    params = state.full_params() if hasattr(state, "full_params") else state
    if hasattr(model, "peft_config"):
        trained = model.with_params(params)
        if merge_lora:
            trained.merge_and_unload().save_pretrained(directory, dtype=dtype)
        else:
            trained.save_pretrained(directory, dtype=dtype)
        return
    params = jax.tree.map(lambda x: np.asarray(x) if x is not None else None, params)
    type(model)(model.config, params, getattr(model, "generation_config", None)).save_pretrained(directory, dtype=dtype)


__all__ = ["CheckpointManager", "abstract_state", "export_pretrained", "flatten_state"]
