"""A thin training loop with callbacks, and the recipe runner behind ``zoo train``.

:class:`Trainer` only sequences the pure pieces (train step, eval step, checkpoint manager,
data iterator); everything it does on the side — progress, metrics files, early stopping —
is a :class:`Callback`. A run resumes from the latest checkpoint in its ``checkpoint_dir``,
state *and* data position, so stopping and restarting gives the run that never stopped.

``main(argv)`` runs a recipe (one JSON file: model, tokenizer, data, optimizer, mesh, schedule,
eval, checkpointing; presets in ``configs/train/``)::

    python -m zoo.train.main --config configs/train/tiny-llama-lora.json --set train.steps=20
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import jax
import numpy as np

from zoo.train.state import TrainState


# ---------------------------------------------------------------- tensorboard
_TENSORBOARD_MISSING_WARNED = False


def open_tensorboard_writer(logdir: str | os.PathLike) -> Any:
    """A ``SummaryWriter`` on ``logdir`` from ``tensorboardX`` (light: numpy + protobuf) or else
    ``torch.utils.tensorboard`` (needs the ``tensorboard`` package); ``None``, with a warning the
    first time, when neither can be imported, so a recipe asking for TensorBoard still trains."""
    global _TENSORBOARD_MISSING_WARNED
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch missing, or torch present without the tensorboard package
            SummaryWriter = None
    if SummaryWriter is None:
        if not _TENSORBOARD_MISSING_WARNED:
            _TENSORBOARD_MISSING_WARNED = True
            warnings.warn(f"tensorboard_dir={str(logdir)!r} is set but neither tensorboardX nor "
                          "torch.utils.tensorboard (package 'tensorboard') can be imported, so no TensorBoard "
                          "events are written (metrics still go to JSONL); `pip install tensorboardX` to get them.",
                          RuntimeWarning, stacklevel=3)
        return None
    return SummaryWriter(str(logdir))


# ---------------------------------------------------------------- callbacks
class Callback:
    """Hooks the trainer calls; override the ones you need. ``trainer.should_stop = True`` ends the run."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_step(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None: ...

    def on_save(self, trainer: "Trainer", step: int) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...


class ProgressLogger(Callback):
    """One progress line per ``every`` steps (step/total, loss, tokens/s, lr) and every metric as a
    JSON line in ``jsonl_path``; TensorBoard scalars too when ``tensorboard_dir`` is set and
    ``tensorboardX`` or ``torch.utils.tensorboard`` is importable."""

    def __init__(self, every: int = 10, jsonl_path: str | os.PathLike | None = None, stream: TextIO | None = None,
                 tensorboard_dir: str | os.PathLike | None = None):
        self.every, self.stream = max(1, every), stream
        self.jsonl_path = None if jsonl_path is None else Path(jsonl_path)
        self.tensorboard_dir = tensorboard_dir
        self._writer = None
        self._tokens = 0.0
        self._t0 = time.perf_counter()

    def on_train_begin(self, trainer: "Trainer") -> None:
        if self.jsonl_path is not None:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if self.tensorboard_dir is not None and jax.process_index() == 0 and self._writer is None:
            self._writer = open_tensorboard_writer(self.tensorboard_dir)
        self._t0 = time.perf_counter()

    def _record(self, record: dict[str, Any]) -> None:
        if self.jsonl_path is not None and jax.process_index() == 0:
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._writer.add_scalar(k, v, record["step"])

    def on_step(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        self._tokens += metrics.get("tokens", 0.0)
        if step % self.every and step != trainer.total_steps:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        tps = self._tokens / elapsed
        self._tokens, self._t0 = 0.0, time.perf_counter()
        record = {"step": step, **metrics, "tokens_per_second": tps}
        self._record(record)
        if jax.process_index() == 0:
            stream = self.stream or sys.stderr
            width = len(str(trainer.total_steps))
            done = int(20 * step / max(trainer.total_steps, 1))
            lr = f" lr {metrics['learning_rate']:.2e}" if "learning_rate" in metrics else ""
            print(f"[{'#' * done}{'.' * (20 - done)}] step {step:>{width}}/{trainer.total_steps} "
                  f"loss {metrics['loss']:.4f} tok/s {tps:,.0f}{lr}", file=stream, flush=True)

    def on_eval(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        self._record({"step": step, **metrics})
        if jax.process_index() == 0:
            print(f"eval @ {step}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                  file=self.stream or sys.stderr, flush=True)
        self._t0 = time.perf_counter()  # evaluation time is not training throughput

    def on_train_end(self, trainer: "Trainer") -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class EarlyStopping(Callback):
    """Stop when ``metric`` (from evaluation) has not improved by ``min_delta`` for ``patience`` evals."""

    def __init__(self, patience: int = 3, metric: str = "eval_loss", min_delta: float = 0.0, mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got '{mode}'")
        self.patience, self.metric, self.min_delta, self.mode = patience, metric, min_delta, mode
        self.best: float | None = None
        self.bad_evals = 0

    def on_eval(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            trainer.should_stop = True


# ---------------------------------------------------------------- the trainer
class Trainer:
    """Run ``step_fn`` over ``train_data`` for ``total_steps`` steps.

    ``train_data``: an iterator of host batches with ``state_dict``/``load_state_dict``
    (:class:`zoo.train.data.PackedBatches`) so resuming restores its position; ``eval_data``: a
    re-iterable of batches. ``mesh``/``rules``: batches are placed along the batch axis.
    ``checkpoint``: a :class:`zoo.train.checkpoint.CheckpointManager`; the state is saved every
    ``save_every`` steps (and at the end), and a run with checkpoints resumes from the latest.
    """

    def __init__(
        self,
        state: TrainState,
        step_fn: Callable[[TrainState, Any], tuple[TrainState, Any]],
        train_data: Any,
        *,
        total_steps: int,
        eval_step: Callable[[TrainState, Any], Any] | None = None,
        eval_data: Iterable[Any] | None = None,
        eval_every: int | None = None,
        checkpoint: Any = None,
        save_every: int | None = None,
        callbacks: Sequence[Callback] = (),
        mesh: Any = None,
        rules: Any = None,
        resume: bool = True,
    ):
        self.state, self.step_fn, self.train_data = state, step_fn, train_data
        self.total_steps = int(total_steps)
        self.eval_step, self.eval_data, self.eval_every = eval_step, eval_data, eval_every
        self.checkpoint, self.save_every = checkpoint, save_every
        self.callbacks = list(callbacks)
        self.mesh, self.rules = mesh, rules
        self.resume = resume
        self.should_stop = False
        self.history: list[dict[str, float]] = []

    def _place(self, batch: Mapping[str, Any]) -> Any:
        if self.mesh is None:
            return dict(batch)
        from zoo.sharding import shard_batch

        return shard_batch(dict(batch), self.mesh, self.rules)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def maybe_resume(self) -> int:
        """Restore the latest checkpoint (state and data position); returns the step reached."""
        if self.checkpoint is None or not self.resume or self.checkpoint.latest_step() is None:
            return int(self.state.step)
        from zoo.train.checkpoint import abstract_state

        self.state, extra = self.checkpoint.restore(abstract_state(self.state))
        data_state = extra.get("data_state")
        if data_state and hasattr(self.train_data, "load_state_dict"):
            self.train_data.load_state_dict(data_state)
        return int(self.state.step)

    def evaluate(self) -> dict[str, float]:
        if self.eval_step is None or self.eval_data is None:
            raise ValueError("evaluate() needs eval_step and eval_data")
        total = count = 0.0
        for batch in self.eval_data:
            out = self.eval_step(self.state, self._place(batch))
            total += float(out["loss_sum"])
            count += float(out["tokens"])
        loss = total / max(count, 1.0)
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": count}

    def save(self, step: int, force: bool = False) -> None:
        if self.checkpoint is None:
            return
        data_state = self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None
        if self.checkpoint.save(step, self.state, data_state=data_state, force=force):
            self._call("on_save", step)

    def run(self) -> TrainState:
        step = self.maybe_resume()
        self._call("on_train_begin")
        while step < self.total_steps and not self.should_stop:
            batch = next(self.train_data)
            self.state, metrics = self.step_fn(self.state, self._place(batch))
            step += 1
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            self.history.append({"step": step, **host})
            self._call("on_step", step, host)
            if self.eval_every and step % self.eval_every == 0 and self.eval_data is not None:
                self._call("on_eval", step, self.evaluate())
            if self.save_every and step % self.save_every == 0:
                self.save(step)
        if self.checkpoint is not None and step not in self.checkpoint.all_steps():
            self.save(step, force=True)
        if self.checkpoint is not None:
            self.checkpoint.wait_until_finished()
        self._call("on_train_end")
        return self.state


# ---------------------------------------------------------------- recipes
DEFAULTS: dict[str, Any] = {
    "model": {"name_or_path": None, "preset": None, "dtype": "float32", "scan_layers": True, "seed": 0,
              "remat_policy": None},
    "tokenizer": None,
    "lora": None,
    "data": {"train": None, "eval": None, "seq_len": 128, "batch_size": 8, "eval_batch_size": None,
             "text_field": "text", "seed": 0},
    "optimizer": {"name": "adamw", "learning_rate": 1e-3, "schedule": "constant", "warmup_steps": 0,
                  "weight_decay": 0.0},
    "train": {"steps": 100, "grad_accum_steps": 1, "max_grad_norm": 1.0, "compute_dtype": None, "seed": 0,
              "log_every": 10, "eval_every": None, "save_every": None, "keep": 3,
              "early_stopping_patience": None, "tensorboard_dir": None},
    "mesh": {"shape": None, "rules": "fsdp", "zero": False},
    "output_dir": "runs/train",
    "export": {"merge_lora": False},
}


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def _set_dotted(cfg: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ValueError(f"--set expects key.path=value, got '{assignment}'")
    key, raw = assignment.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: '{p}' is not a section")
    node[parts[-1]] = value


def load_recipe(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A recipe file merged over :data:`DEFAULTS`, then ``key.path=value`` overrides. Relative data
    paths are resolved against the recipe's folder when they exist there."""
    cfg = copy.deepcopy(DEFAULTS)
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"recipe {p} does not exist")
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text())
        else:
            data = json.loads(p.read_text())
        unknown = sorted(set(data) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"recipe {p} has unknown sections {unknown}; known: {sorted(DEFAULTS)}")
        cfg = _merge(cfg, data)
        base_dir = p.parent
    for assignment in overrides:
        _set_dotted(cfg, assignment)
    for key in ("train", "eval"):
        src = cfg["data"].get(key)
        if isinstance(src, str) and not Path(src).exists() and (base_dir / src).exists():
            cfg["data"][key] = str(base_dir / src)
    return cfg


class ByteTokenizer:
    """Bytes as tokens (id = byte + 3; 0 pad, 1 bos, 2 eos): recipes run with no tokenizer files."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    vocab_size = 259

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        del add_special_tokens
        return {"input_ids": [b + 3 for b in text.encode("utf-8")]}


def _tokenizer(name: Any, model_cfg: Mapping[str, Any]) -> Any:
    name = name or model_cfg.get("name_or_path")
    if name in (None, "bytes"):
        return ByteTokenizer()
    from zoo import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _model(cfg: Mapping[str, Any], mesh: Any, rules: Any) -> Any:
    from zoo import AutoConfig, AutoModelForCausalLM

    m = cfg["model"]
    runtime = {"dtype": m["dtype"], "scan_layers": m["scan_layers"]}
    if m.get("name_or_path"):
        model = AutoModelForCausalLM.from_pretrained(m["name_or_path"], mesh=mesh, rules=rules, **runtime)
    elif m.get("preset"):
        config = AutoConfig.from_pretrained(m["preset"], **runtime)
        model = AutoModelForCausalLM.from_config(config, m.get("seed", 0), mesh=mesh, rules=rules)
    else:
        raise ValueError("the recipe's model needs 'name_or_path' (a checkpoint) or 'preset' (random init)")
    if m.get("remat_policy"):
        model = type(model)(model.config.replace(remat_policy=m["remat_policy"]), model.params,
                            model.generation_config)
    return model


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """``jax.distributed.initialize`` from flags or the usual environment variables
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); a no-op for one process."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or (int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ
                                      else None)
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not coordinator_address or not num_processes or num_processes <= 1:
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or os.environ.get("JAX_PLATFORM_NAME") == "cpu":
        # CPU processes talk over gloo, already jax's default on the versions we support (0.10+); set it
        # only if something changed it, so a jax that retires the option is not asked for it.
        if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") != "gloo":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def train(cfg: Mapping[str, Any], *, callbacks: Sequence[Callback] = (), stream: TextIO | None = None) -> Trainer:
    """Run a recipe (a dict as :func:`load_recipe` returns); returns the finished trainer."""
    from zoo.sharding import make_mesh, param_shardings, zero_shardings
    from zoo.train.checkpoint import CheckpointManager, export_pretrained
    from zoo.train.data import PackedBatches, load_packed
    from zoo.train.state import create_train_state
    from zoo.train.step import causal_lm_loss_fn, make_eval_step, make_optimizer, make_train_step

    t, d, o = cfg["train"], cfg["data"], cfg["optimizer"]
    out = Path(cfg["output_dir"])
    mesh_cfg = cfg.get("mesh") or {}
    rules = mesh_cfg.get("rules")
    mesh = make_mesh(mesh_cfg["shape"]) if mesh_cfg.get("shape") else None
    model = _model(cfg, mesh, rules)
    if cfg.get("lora"):
        from zoo.peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**cfg["lora"]), key=cfg["model"].get("seed", 0))
    tokenizer = _tokenizer(cfg.get("tokenizer"), cfg["model"])
    if d.get("train") is None:
        raise ValueError("the recipe's data needs 'train' (text / JSONL files or a folder)")
    train_rows = load_packed(d["train"], tokenizer, d["seq_len"], text_field=d["text_field"])
    train_data = PackedBatches(train_rows, d["batch_size"], seed=d["seed"], process_index=jax.process_index(),
                               process_count=jax.process_count())
    eval_data = None
    if d.get("eval"):
        eval_rows = load_packed(d["eval"], tokenizer, d["seq_len"], text_field=d["text_field"])
        eval_data = _EvalBatches(eval_rows, d.get("eval_batch_size") or d["batch_size"])
    optimizer, schedule = make_optimizer(
        o["name"], o["learning_rate"], schedule=o.get("schedule", "constant"), warmup_steps=o.get("warmup_steps", 0),
        total_steps=t["steps"], weight_decay=o.get("weight_decay", 0.0))
    shardings = zero = None
    if mesh is not None:
        shardings = param_shardings(model.params, _axes_with_adapters(model), mesh, rules)
        if mesh_cfg.get("zero"):  # optimizer state and update split over the data-parallel axes
            zero = zero_shardings(shardings, model.params, rules)
    state = create_train_state(model, optimizer, rng=t.get("seed", 0), shardings=shardings, opt_shardings=zero)
    zero_kw = {}
    if zero is not None:
        from zoo.train.state import partition

        trainable = jax.tree.map(lambda x: x is not None, state.params, is_leaf=lambda x: x is None)
        zero_kw = {"param_sharding": partition(shardings, trainable)[0],
                   "update_sharding": partition(zero, trainable)[0]}
    loss_fn = causal_lm_loss_fn(model, dtype=t.get("compute_dtype"))
    step_fn = make_train_step(loss_fn, optimizer, grad_accum_steps=t["grad_accum_steps"],
                              max_grad_norm=t.get("max_grad_norm"), compute_dtype=t.get("compute_dtype"),
                              lr_schedule=schedule, mesh=mesh, rules=rules, **zero_kw)
    eval_step = make_eval_step(causal_lm_loss_fn(model, dtype=t.get("compute_dtype")), mesh=mesh, rules=rules,
                               compute_dtype=t.get("compute_dtype"))
    ckpt = CheckpointManager(out / "checkpoints", max_to_keep=t.get("keep", 3)) if t.get("save_every") else None
    cbs: list[Callback] = [ProgressLogger(t.get("log_every", 10), out / "metrics.jsonl", stream=stream,
                                          tensorboard_dir=t.get("tensorboard_dir"))]
    if t.get("early_stopping_patience"):
        cbs.append(EarlyStopping(t["early_stopping_patience"]))
    trainer = Trainer(state, step_fn, train_data, total_steps=t["steps"], eval_step=eval_step, eval_data=eval_data,
                      eval_every=t.get("eval_every"), checkpoint=ckpt, save_every=t.get("save_every"),
                      callbacks=[*cbs, *callbacks], mesh=mesh, rules=rules)
    try:
        final = trainer.run()
    finally:
        if ckpt is not None:
            ckpt.close()
    if jax.process_index() == 0:
        export_pretrained(model, final, out / "final", merge_lora=cfg.get("export", {}).get("merge_lora", False))
    return trainer


def _axes_with_adapters(model: Any) -> Any:
    """Logical axes for every param, adapters included (replicated: they are small)."""
    axes = model.param_axes() if not hasattr(model, "base_model") else model.base_model.param_axes()
    flat_axes = {jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_leaves_with_path(
        axes, is_leaf=lambda x: isinstance(x, tuple))}
    return jax.tree_util.tree_map_with_path(
        lambda p, x: flat_axes.get(jax.tree_util.keystr(p), (None,) * x.ndim), model.params)


class _EvalBatches:
    """The eval rows in order, in batches (the last one may be short); re-iterable."""

    def __init__(self, rows: Mapping[str, np.ndarray], batch_size: int):
        self.rows, self.batch_size = rows, batch_size
        self.n = len(next(iter(rows.values())))

    def __iter__(self):
        for i in range(0, self.n, self.batch_size):
            yield {k: v[i:i + self.batch_size] for k, v in self.rows.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo train", description="Train or fine-tune a causal LM from a recipe.")
    p.add_argument("--config", help="recipe file (JSON or YAML); presets in configs/train/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--output-dir", help="where checkpoints, metrics.jsonl and the final model go")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--coordinator-address", help="multi-process: host:port of process 0")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    cfg = load_recipe(args.config, args.set)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    if args.no_resume:
        ckpts = Path(cfg["output_dir"]) / "checkpoints"
        if ckpts.exists():
            import shutil

            shutil.rmtree(ckpts)
    trainer = train(cfg)
    last = trainer.history[-1] if trainer.history else {}
    if jax.process_index() == 0:
        print(json.dumps({"step": int(trainer.state.step), "loss": last.get("loss"),
                          "output_dir": str(cfg["output_dir"])}))
    return 0


__all__ = ["Callback", "ProgressLogger", "EarlyStopping", "Trainer", "ByteTokenizer", "DEFAULTS", "load_recipe",
           "train", "main", "initialize_distributed", "open_tensorboard_writer"]
