"""ZeRO from a recipe: ``mesh.zero`` splits the optimizer state and update over the data-parallel
devices, and the run's losses equal the single-device run's (full fine-tuning and LoRA)."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "train"


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("recipe", ["tiny-llama-full.json", "tiny-llama-lora.json"])
def test_zero_recipe_equals_single_device(tmp_path, recipe):
    from zoo.train.loop import load_recipe, train

    small = ["data.seq_len=16", "data.batch_size=8", "train.steps=3", "train.log_every=1", "train.eval_every=null",
             "train.save_every=null", "optimizer.warmup_steps=1", "lora.lora_dropout=0.0"]
    if recipe.endswith("full.json"):
        small.remove("lora.lora_dropout=0.0")
    single = load_recipe(RECIPES / recipe, small)
    single["output_dir"] = str(tmp_path / "single")
    train(single)
    zero = load_recipe(RECIPES / recipe, [*small, 'mesh.shape={"data": -1}', "mesh.rules=dp", "mesh.zero=true"])
    zero["output_dir"] = str(tmp_path / "zero")
    trainer = train(zero)
    a, b = losses(tmp_path / "single"), losses(tmp_path / "zero")
    assert len(a) == len(b) == 3 and a[0] > a[-1]
    np.testing.assert_allclose(b, a, rtol=2e-5)
    # The Adam moments really are split over the 8 data devices; the params are not.
    mu = [x for x in jax.tree.leaves(trainer.state.opt_state) if x.ndim >= 2]
    params = [x for x in jax.tree.leaves(trainer.state.params) if x.ndim >= 2]
    assert mu and all(not x.sharding.is_fully_replicated for x in mu)
    assert params and all(x.sharding.is_fully_replicated for x in params)
