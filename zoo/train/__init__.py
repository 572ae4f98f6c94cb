"""Training as pure pieces a script composes: a TrainState pytree, a jitted train step,
data packing, orbax checkpoints, and a thin loop with callbacks.

``zoo.train.main(argv)`` runs a recipe (``zoo train --config configs/train/<recipe>.json``).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainState": "zoo.train.state",
    "LossScale": "zoo.train.state",
    "create_train_state": "zoo.train.state",
    "partition": "zoo.train.state",
    "combine": "zoo.train.state",
    "state_shardings": "zoo.train.state",
    "make_train_step": "zoo.train.step",
    "make_eval_step": "zoo.train.step",
    "make_optimizer": "zoo.train.step",
    "causal_lm_loss_fn": "zoo.train.step",
    "sequence_classification_loss_fn": "zoo.train.step",
    "pack_documents": "zoo.train.data",
    "TokenDataset": "zoo.train.data",
    "PackedBatches": "zoo.train.data",
    "CheckpointManager": "zoo.train.checkpoint",
    "abstract_state": "zoo.train.checkpoint",
    "export_pretrained": "zoo.train.checkpoint",
    "ProgressLogger": "zoo.train.loop",
    "EarlyStopping": "zoo.train.loop",
    "load_recipe": "zoo.train.loop",
    "Trainer": "zoo.train.loop",
    "Callback": "zoo.train.loop",
    "train": "zoo.train.loop",
    "main": "zoo.train.loop",
    "initialize_distributed": "zoo.train.loop",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo.train' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
