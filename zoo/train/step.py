"""The train step: one pure function ``(state, batch) -> (state, metrics)``, jitted with the
state donated and, on a mesh, sharded by the logical-axis rules.

A loss function returns a *sum* and a *count* (tokens, or examples) instead of a mean, so
the step can divide by the count of the whole global batch: under gradient accumulation
the gradient is exactly that of Transformers' mean over every non-ignored token of the
global batch, not a mean of per-microbatch means.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from zoo.losses import IGNORE_INDEX, shift_labels, token_cross_entropy_sum
from zoo.train.state import TrainState, combine

Batch = Mapping[str, jax.Array]
# (params, batch, rng) -> (sum of per-item losses, number of items) -- both fp32 scalars
LossFn = Callable[[Any, Batch, jax.Array | None], tuple[jax.Array, jax.Array]]


# ---------------------------------------------------------------- losses
def _model_call(model: Any, params: Any, **inputs: Any) -> Any:
    return type(model)(model.config, params, getattr(model, "generation_config", None))(**inputs)


def _forward_kwargs(batch: Batch, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: batch[k] for k in keys if k in batch and batch[k] is not None}


def _unwrap_peft(model: Any, apply: Callable[..., Any] | None) -> tuple[Any, Callable[..., Any] | None]:
    """A PeftModel trains through its adapted base model, with LoRA dropout as the ``apply`` hook."""
    if hasattr(model, "peft_config") and hasattr(model, "base_model"):
        if apply is None:
            apply = model.dropout_apply
        model = model.base_model
    return model, apply


def causal_lm_loss_fn(model: Any, *, dtype: Any = None, apply: Callable[..., Any] | None = None) -> LossFn:
    """Next-token loss exactly as Transformers (labels shifted inside, -100 ignored).

    ``batch``: ``input_ids`` and optional ``labels`` (default: the ids), ``attention_mask``,
    ``position_ids``, ``segment_ids`` (packed documents). ``dtype`` overrides the compute dtype
    (e.g. "bfloat16" with fp32 master weights). ``apply(params, rng) -> params`` transforms the
    params first (e.g. LoRA dropout keys); a ``zoo.peft.PeftModel`` brings its own. A
    mixture-of-experts model whose config has ``output_router_logits`` adds
    ``router_aux_loss_coef * aux_loss``, as Transformers does."""
    model, apply = _unwrap_peft(model, apply)
    if dtype is not None:
        model = type(model)(model.config.replace(dtype=jnp.dtype(dtype).name), model.params,
                            getattr(model, "generation_config", None))

    def loss_fn(params: Any, batch: Batch, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        if apply is not None:
            params = apply(params, rng)
        out = _model_call(model, params, **_forward_kwargs(
            batch, ("input_ids", "attention_mask", "position_ids", "segment_ids")))
        labels = batch.get("labels", batch["input_ids"])
        total, count = token_cross_entropy_sum(out.logits, shift_labels(labels))
        aux = getattr(out, "aux_loss", None)  # MoE with output_router_logits: Transformers adds coef * aux
        if aux is not None:
            total = total + model.config.router_aux_loss_coef * aux * count
        return total, count

    return loss_fn


def classification_sum(logits: jax.Array, labels: jax.Array, problem_type: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Sum and count of Transformers' sequence-classification loss (regression: MSE, single label:
    CE with -100 ignored, multi label: BCE-with-logits), so means stay global."""
    logits = logits.astype(jnp.float32)
    n = logits.shape[-1]
    if problem_type is None:
        if n == 1:
            problem_type = "regression"
        elif jnp.issubdtype(labels.dtype, jnp.integer):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        target = labels.astype(jnp.float32).reshape(logits.shape)
        return jnp.sum(jnp.square(logits - target)), jnp.asarray(logits.size, jnp.float32)
    if problem_type == "single_label_classification":
        total, count = token_cross_entropy_sum(logits, labels.astype(jnp.int32))
        return total, count.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    bce = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(bce), jnp.asarray(logits.size, jnp.float32)


def sequence_classification_loss_fn(model: Any, *, dtype: Any = None,
                                    apply: Callable[..., Any] | None = None) -> LossFn:
    """Loss of a ``...ForSequenceClassification`` model (decoder or encoder) on ``batch['labels']``."""
    from zoo.tasks import problem_type

    model, apply = _unwrap_peft(model, apply)
    if dtype is not None:
        model = type(model)(model.config.replace(dtype=jnp.dtype(dtype).name), model.params)
    kind = problem_type(model.config)

    def loss_fn(params: Any, batch: Batch, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        if apply is not None:
            params = apply(params, rng)
        keys = ("input_ids", "attention_mask", "position_ids", "token_type_ids", "segment_ids")
        kw = _forward_kwargs(batch, keys)
        out = _model_call(model, params, **kw)
        return classification_sum(out.logits, batch["labels"], kind)

    return loss_fn


# ---------------------------------------------------------------- helpers
def global_norm(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _microbatches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B/n, ...], taking rows strided so each microbatch keeps the batch's
    spread over the data-parallel devices."""
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={n}")
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, dict(batch))


def _constrain(tree: Any, shardings: Any) -> Any:
    """``with_sharding_constraint`` leaf by leaf; ``None`` (frozen) places in ``tree`` stay ``None``."""
    if shardings is None:
        return tree
    return jax.tree.map(lambda s, x: x if x is None else jax.lax.with_sharding_constraint(x, s), shardings, tree)


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


# ---------------------------------------------------------------- the step
def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    grad_accum_steps: int = 1,
    max_grad_norm: float | None = None,
    compute_dtype: Any = None,
    lr_schedule: Callable[[jax.Array], jax.Array] | float | None = None,
    ema_decay: float | None = None,
    mesh: Any = None,
    rules: Any = None,
    state_sharding: Any = None,
    batch_sharding: Any = None,
    param_sharding: Any = None,
    update_sharding: Any = None,
    donate: bool = True,
    jit: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Build ``step(state, batch) -> (state, metrics)``.

    - ``grad_accum_steps``: the batch is split into that many microbatches, scanned; the loss
      and gradient are those of the whole batch (one division by its total token count).
    - ``max_grad_norm``: clip by global norm (metrics report the norm before clipping).
    - ``compute_dtype``: cast params (fp32 masters) to e.g. bfloat16 for the forward/backward;
      gradients come back in fp32 through the cast. The optimizer always works in fp32.
    - non-finite gradients (or loss) skip the update: params, optimizer state and EMA stay
      as they were; ``metrics['skipped']`` is 1 and the step counter still advances.
    - ``mesh``/``rules``: activations are constrained by the rules while tracing;
      ``state_sharding``/``batch_sharding`` fix the jit in/out shardings.
    - ``update_sharding`` (ZeRO, from ``zoo.sharding.zero_shardings``): the gradients, and the
      params the optimizer reads, are placed by this tree for the update, so each data-parallel
      device updates 1/n of the params (its optimizer state placed the same way by
      ``create_train_state(..., opt_shardings=...)``); the new params go back to
      ``param_sharding`` (default: ``state_sharding.params``). Trees match ``state.params``.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    if param_sharding is None and state_sharding is not None:
        param_sharding = state_sharding.params
    if update_sharding is not None and param_sharding is None:
        raise ValueError("update_sharding needs param_sharding (or state_sharding): where the new params go back to")

    def sum_and_grad(params, frozen, batch, rng, scale):
        def objective(p):
            full = combine(p, frozen)
            if compute_dtype is not None:
                full = _cast_floats(full, compute_dtype)
            total, count = loss_fn(full, batch, rng)
            return total.astype(jnp.float32) * scale, (total.astype(jnp.float32), count.astype(jnp.float32))

        (_, (total, count)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return total, count, grads

    def step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = None if state.rng is None else jax.random.fold_in(state.rng, state.step)
        scale = jnp.float32(1.0) if state.loss_scale is None else state.loss_scale.scale
        if grad_accum_steps == 1:
            total, count, grads = sum_and_grad(state.params, state.frozen, batch, rng, scale)
        else:
            micro = _microbatches(batch, grad_accum_steps)
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), state.params)

            def body(carry, xs):
                i, mb = xs
                t, c, g = carry
                r = None if rng is None else jax.random.fold_in(rng, i)
                t_i, c_i, g_i = sum_and_grad(state.params, state.frozen, mb, r, scale)
                g = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g, g_i)
                return (t + t_i, c + c_i, g), None

            init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
            (total, count, grads), _ = jax.lax.scan(body, init, (jnp.arange(grad_accum_steps), micro))
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32) / (denom * scale), _constrain(grads, update_sharding))
        loss = total / denom
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
        if max_grad_norm is not None:
            factor = jnp.minimum(1.0, max_grad_norm / (grad_norm + 1e-6))
            grads = jax.tree.map(lambda g: g * factor, grads)
        old_params = _constrain(state.params, update_sharding)

        def update(grads, opt_state, params):
            updates, new_opt = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            return jax.tree.map(lambda n, o: n.astype(o.dtype), new_params, params), new_opt

        # A conditional, not a select of new against old: the update then writes the donated
        # buffers in place. With a select, XLA copies every Adam moment first (old values are
        # still read after the in-place write), 2 x params floats of copies per step.
        params, opt_state = jax.lax.cond(finite, update, lambda g, o, p: (p, o), grads, state.opt_state, old_params)
        if update_sharding is not None:
            params = _constrain(params, param_sharding)
        ema = state.ema
        if ema is not None and ema_decay is not None:
            moved = jax.tree.map(lambda e, p: e * ema_decay + p.astype(jnp.float32) * (1 - ema_decay), ema, params)
            ema = _select(finite, moved, ema)
        loss_scale = None if state.loss_scale is None else state.loss_scale.update(finite)
        metrics = {
            "loss": loss,
            "tokens": count,
            "grad_norm": grad_norm,
            "skipped": (~finite).astype(jnp.int32),
        }
        if lr_schedule is not None:
            metrics["learning_rate"] = (lr_schedule(state.step) if callable(lr_schedule)
                                        else jnp.asarray(lr_schedule, jnp.float32))
        if loss_scale is not None:
            metrics["loss_scale"] = loss_scale.scale
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema,
                                  loss_scale=loss_scale)
        return new_state, metrics

    fn = step_fn
    if mesh is not None:
        from zoo.sharding import use_mesh

        def fn(state, batch):
            with use_mesh(mesh, rules):
                return step_fn(state, batch)

    if not jit:
        return fn
    kwargs: dict[str, Any] = {}
    if state_sharding is not None or batch_sharding is not None:
        kwargs["in_shardings"] = (state_sharding, batch_sharding)
        kwargs["out_shardings"] = (state_sharding, None)
    return jax.jit(fn, donate_argnums=(0,) if donate else (), **kwargs)


def make_eval_step(loss_fn: LossFn, *, mesh: Any = None, rules: Any = None,
                   compute_dtype: Any = None) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """``eval(state, batch) -> {'loss_sum', 'tokens'}`` (sums, so evaluation means are global)."""

    def fn(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        full = state.full_params()
        if compute_dtype is not None:
            full = _cast_floats(full, compute_dtype)
        if mesh is not None:
            from zoo.sharding import use_mesh

            with use_mesh(mesh, rules):
                total, count = loss_fn(full, batch, None)
        else:
            total, count = loss_fn(full, batch, None)
        return {"loss_sum": total.astype(jnp.float32), "tokens": count.astype(jnp.float32)}

    return jax.jit(fn)


def make_optimizer(
    name: str = "adamw",
    learning_rate: float = 1e-3,
    *,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    end_learning_rate: float = 0.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    """An optax optimizer and its learning-rate schedule from plain settings (the recipe's
    ``optimizer`` section). Schedules: constant, linear, cosine (each with linear warmup)."""
    if schedule == "constant":
        sched = optax.join_schedules([optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
                                      optax.constant_schedule(learning_rate)], [warmup_steps]) \
            if warmup_steps else optax.constant_schedule(learning_rate)
    elif schedule in ("linear", "cosine"):
        if not total_steps:
            raise ValueError(f"schedule '{schedule}' needs total_steps")
        if warmup_steps >= total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be less than total_steps ({total_steps})")
        if schedule == "cosine":
            sched = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps, end_learning_rate)
        else:
            sched = optax.join_schedules(
                [optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
                 optax.linear_schedule(learning_rate, end_learning_rate, max(total_steps - warmup_steps, 1))],
                [warmup_steps])
    else:
        raise ValueError(f"unknown schedule '{schedule}'; use constant, linear or cosine")
    if name == "adamw":
        opt = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    elif name == "adam":
        opt = optax.adam(sched, b1=b1, b2=b2, eps=eps)
    elif name == "sgd":
        opt = optax.sgd(sched)
    elif name == "adafactor":
        opt = optax.adafactor(sched, weight_decay_rate=weight_decay or None)
    else:
        raise ValueError(f"unknown optimizer '{name}'; use adamw, adam, sgd or adafactor")
    return opt, sched


__all__ = ["make_train_step", "make_eval_step", "make_optimizer", "causal_lm_loss_fn",
           "sequence_classification_loss_fn", "classification_sum", "global_norm", "IGNORE_INDEX", "functools"]
