"""Metrics to TensorBoard: the event files a run writes (read back here without TensorFlow, by
parsing the TFRecord framing and the Event protobuf) hold exactly the scalars of metrics.jsonl,
from the Trainer and from ``zoo train --config recipe.yaml``; with no TensorBoard writer
importable, a run still trains and warns once."""
from __future__ import annotations

import json
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
RECIPES = Path(__file__).resolve().parent.parent / "configs" / "train"


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from every event file under ``logdir``; checks each record's CRCs."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    files = sorted(logdir.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {logdir}"
    scalars: dict[str, dict[int, float]] = {}
    for f in files:
        raw, at = f.read_bytes(), 0
        while at < len(raw):
            header = raw[at:at + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", raw[at + 8:at + 12])[0] == masked_crc32c(header), f"{f}: bad length crc"
            data = raw[at + 12:at + 12 + length]
            assert struct.unpack("<I", raw[at + 12 + length:at + 16 + length])[0] == masked_crc32c(data), \
                f"{f}: bad data crc"
            at += 16 + length
            event = Event.FromString(data)
            for value in event.summary.value:
                assert value.tag not in scalars or event.step not in scalars[value.tag], \
                    f"{value.tag} written twice at step {event.step}"
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def jsonl_scalars(path: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for k, v in record.items():
            if k != "step":
                out.setdefault(k, {})[record["step"]] = v
    return out


def assert_same_scalars(tb: dict[str, dict[int, float]], js: dict[str, dict[int, float]]) -> None:
    assert sorted(tb) == sorted(js)
    for tag, by_step in js.items():
        assert sorted(tb[tag]) == sorted(by_step), tag
        for step, value in by_step.items():
            # Event files store float32.
            assert tb[tag][step] == pytest.approx(np.float32(value), rel=1e-6, abs=1e-30), (tag, step)


def test_trainer_tensorboard_scalars_equal_jsonl(tmp_path):
    from zoo import AutoConfig, AutoModelForCausalLM
    from zoo.train import causal_lm_loss_fn, create_train_state, make_eval_step, make_train_step
    from zoo.train.data import PackedBatches, pack_documents
    from zoo.train.loop import ProgressLogger, Trainer
    from zoo.train.step import make_optimizer

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **LLAMA), 0)
    rng = np.random.RandomState(0)
    docs = [(s + np.arange(n)) % 120 + 3 for s, n in zip(rng.randint(0, 120, 24), rng.randint(4, 12, 24))]
    rows = pack_documents(docs, 16)
    opt, schedule = make_optimizer("adamw", 1e-2, schedule="linear", warmup_steps=2, total_steps=4)
    step_fn = make_train_step(causal_lm_loss_fn(model), opt, max_grad_norm=1.0, lr_schedule=schedule)
    logger = ProgressLogger(1, tmp_path / "metrics.jsonl", stream=sys.stdout, tensorboard_dir=tmp_path / "tb")
    trainer = Trainer(create_train_state(model, opt), step_fn, PackedBatches(rows, 4, seed=1), total_steps=4,
                      eval_step=make_eval_step(causal_lm_loss_fn(model)), eval_data=[{k: v[:4] for k, v in rows.items()}],
                      eval_every=2, callbacks=[logger])
    trainer.run()

    js = jsonl_scalars(tmp_path / "metrics.jsonl")
    assert {"loss", "learning_rate", "tokens_per_second", "tokens", "grad_norm", "eval_loss"} <= set(js)
    assert sorted(js["loss"]) == [1, 2, 3, 4] and sorted(js["eval_loss"]) == [2, 4]
    assert len(set(js["learning_rate"].values())) > 1  # the schedule moves, so steps are not mixed up
    assert [js["loss"][s] for s in (1, 2, 3, 4)] == pytest.approx([h["loss"] for h in trainer.history])
    assert_same_scalars(read_scalars(tmp_path / "tb"), js)


def test_zoo_train_yaml_recipe_writes_tensorboard(tmp_path, capsys):
    import yaml

    from zoo.cli.main import main as zoo_main

    recipe = json.loads((RECIPES / "tiny-llama-full.json").read_text())
    recipe["data"].update(train=str(RECIPES / "tiny-corpus.txt"), eval=str(RECIPES / "tiny-corpus.txt"),
                          seq_len=32, batch_size=4)
    recipe["optimizer"].update(warmup_steps=2)
    recipe["train"].update(steps=3, log_every=1, eval_every=3, save_every=None, tensorboard_dir=str(tmp_path / "tb"))
    recipe["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    assert zoo_main(["train", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    js = jsonl_scalars(tmp_path / "run" / "metrics.jsonl")
    assert sorted(js["loss"]) == [1, 2, 3] and sorted(js["eval_loss"]) == [3]
    assert {"learning_rate", "tokens_per_second"} <= set(js)
    assert_same_scalars(read_scalars(tmp_path / "tb"), js)


def test_missing_tensorboard_warns_once_and_still_logs(tmp_path, monkeypatch):
    from zoo.train import loop

    # Neither writer importable (None in sys.modules makes `import` raise ImportError).
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(loop, "_TENSORBOARD_MISSING_WARNED", False)

    class FakeTrainer:
        total_steps = 2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for run in range(2):  # a second logger (or run) in the same process does not warn again
            logger = loop.ProgressLogger(1, tmp_path / f"m{run}.jsonl", stream=sys.stdout,
                                         tensorboard_dir=tmp_path / "tb")
            logger.on_train_begin(FakeTrainer())
            for step in (1, 2):
                logger.on_step(FakeTrainer(), step, {"loss": 1.0 / step, "tokens": 8.0})
            logger.on_eval(FakeTrainer(), 2, {"eval_loss": 0.5})
            logger.on_train_end(FakeTrainer())
    ours = [w for w in caught if "tensorboard_dir" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert "pip install tensorboardX" in str(ours[0].message)
    assert not (tmp_path / "tb").exists() or not any((tmp_path / "tb").rglob("events.out.tfevents.*"))
    for run in range(2):
        assert sorted(jsonl_scalars(tmp_path / f"m{run}.jsonl")["loss"]) == [1, 2]
