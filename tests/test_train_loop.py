"""The training loop: loss goes down, callbacks fire, a stopped-and-resumed run equals one that
never stopped; the recipe command (``zoo train`` -> ``zoo.train.main``) runs and resumes."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
RECIPES = Path(__file__).resolve().parent.parent / "configs" / "train"


class Recorder:
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        self.events.append(("begin", int(trainer.state.step)))

    def on_step(self, trainer, step, metrics):
        self.events.append(("step", step))

    def on_eval(self, trainer, step, metrics):
        self.events.append(("eval", step, round(metrics["eval_loss"], 6)))

    def on_save(self, trainer, step):
        self.events.append(("save", step))

    def on_train_end(self, trainer):
        self.events.append(("end", int(trainer.state.step)))


def test_trainer_learns_and_resume_equals_not_stopping(tmp_path):
    from zoo import AutoConfig, AutoModelForCausalLM
    from zoo.train import causal_lm_loss_fn, create_train_state, make_eval_step, make_train_step
    from zoo.train.checkpoint import CheckpointManager
    from zoo.train.data import PackedBatches, pack_documents
    from zoo.train.loop import Callback, Trainer

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **LLAMA), 0)
    rng = np.random.RandomState(0)
    docs = [(s + np.arange(n)) % 120 + 3 for s, n in zip(rng.randint(0, 120, 48), rng.randint(4, 12, 48))]
    rows = pack_documents(docs, 16)
    eval_rows = [{k: v[:4] for k, v in rows.items()}]
    opt = optax.adam(1e-2)
    step_fn = make_train_step(causal_lm_loss_fn(model), opt, max_grad_norm=1.0)  # one compile for every run
    eval_step = make_eval_step(causal_lm_loss_fn(model))

    def run(total, checkpoint=None, callbacks=()):
        data = PackedBatches(rows, 4, seed=3)
        trainer = Trainer(create_train_state(model, opt), step_fn, data, total_steps=total, eval_step=eval_step,
                          eval_data=eval_rows, eval_every=4, checkpoint=checkpoint, save_every=4,
                          callbacks=[Callback(), *callbacks])
        trainer.run()
        return trainer

    straight = run(12)
    losses = [h["loss"] for h in straight.history]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    recorder = Recorder()
    with CheckpointManager(tmp_path / "ckpt", max_to_keep=2) as ckpt:
        first = run(8, ckpt, [recorder])  # "stops" after 8 steps
    assert [h["loss"] for h in first.history] == pytest.approx(losses[:8], rel=1e-6)
    assert recorder.events[0] == ("begin", 0) and recorder.events[-1] == ("end", 8)
    assert [e for e in recorder.events if e[0] == "save"] == [("save", 4), ("save", 8)]
    assert [e[:2] for e in recorder.events if e[0] == "eval"] == [("eval", 4), ("eval", 8)]
    recorder.events.clear()
    with CheckpointManager(tmp_path / "ckpt", max_to_keep=2) as ckpt:
        resumed = run(12, ckpt, [recorder])
        assert ckpt.all_steps() == [8, 12]
    assert recorder.events[0] == ("begin", 8)
    assert [h["step"] for h in resumed.history] == [9, 10, 11, 12]
    np.testing.assert_allclose([h["loss"] for h in resumed.history], losses[8:], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(straight.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_early_stopping_on_eval_loss():
    from zoo.train.loop import EarlyStopping

    class Dummy:
        should_stop = False

    trainer, stop = Dummy(), EarlyStopping(patience=2, min_delta=0.01)
    for step, loss in enumerate([3.0, 2.5, 2.495, 2.6]):
        assert not trainer.should_stop
        stop.on_eval(trainer, step, {"eval_loss": loss})
    assert trainer.should_stop and stop.best == 2.5
    with pytest.raises(ValueError, match="mode must be"):
        EarlyStopping(mode="up")


def test_recipe_command_runs_and_resumes(tmp_path, capsys):
    from zoo.cli.main import main as zoo_main
    from zoo.train.loop import load_recipe, main

    out = tmp_path / "run"
    small = ["--set", "data.seq_len=32", "--set", "data.batch_size=4", "--set", "train.log_every=2",
             "--set", "train.save_every=2", "--set", "optimizer.warmup_steps=1", "--output-dir", str(out)]
    assert main(["--config", str(RECIPES / "tiny-llama-lora.json"), "--set", "train.steps=2",
                 "--set", "train.eval_every=2", *small]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
    # `zoo train` forwards to the same runner; it resumes from step 2.
    assert zoo_main(["train", "--config", str(RECIPES / "tiny-llama-lora.json"), "--set", "train.steps=4",
                     "--set", "train.eval_every=null", *small]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert any("eval_loss" in r for r in records)
    assert all(np.isfinite(r["loss"]) and r["tokens_per_second"] > 0 for r in records if "loss" in r)
    assert sorted(p.name for p in (out / "final").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    from zoo import AutoConfig, AutoModelForCausalLM
    from zoo.peft import PeftModel

    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("tiny-llama"), 0)
    tuned = PeftModel.from_pretrained(base, out / "final")
    assert tuned.peft_config.r == 8 and tuned.peft_config.lora_dropout == 0.05
    # Full fine-tuning preset: parses, and names what is wrong in a bad override.
    full = load_recipe(RECIPES / "tiny-llama-full.json")
    assert full["lora"] is None and Path(full["data"]["train"]).exists()
    with pytest.raises(ValueError, match="unknown sections"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"modle": {}}))
        load_recipe(bad)
