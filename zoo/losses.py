"""Losses with Transformers' exact semantics (shift, -100 ignored, mean over kept tokens)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def token_cross_entropy_sum(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed cross-entropy over non-ignored labels and the count of such labels (fp32)."""
    logits = logits.astype(jnp.float32)
    keep = labels != IGNORE_INDEX
    safe = jnp.where(keep, labels, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(keep, logz - picked, 0.0)), jnp.sum(keep)


def shift_labels(labels: jax.Array) -> jax.Array:
    """labels[:, 1:] padded with -100 at the end: position t predicts token t+1."""
    pad = jnp.full(labels.shape[:-1] + (1,), IGNORE_INDEX, labels.dtype)
    return jnp.concatenate([labels[..., 1:], pad], axis=-1)


def causal_lm_loss(logits: jax.Array, labels: jax.Array, num_items: jax.Array | None = None) -> jax.Array:
    """Mean next-token loss; ``num_items`` overrides the divisor (global batch under accumulation)."""
    total, count = token_cross_entropy_sum(logits, shift_labels(labels))
    denom = count if num_items is None else num_items
    return total / jnp.maximum(denom, 1)


def sequence_classification_loss(logits: jax.Array, labels: jax.Array, problem_type: str | None = None) -> jax.Array:
    """Regression (one label), single-label or multi-label classification, as Transformers infers it."""
    num_labels = logits.shape[-1]
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif jnp.issubdtype(labels.dtype, jnp.integer):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    logits = logits.astype(jnp.float32)
    if problem_type == "regression":
        if num_labels == 1:
            return jnp.mean(jnp.square(logits.squeeze(-1) - labels.astype(jnp.float32).reshape(logits.shape[:-1])))
        return jnp.mean(jnp.square(logits - labels.astype(jnp.float32)))
    if problem_type == "single_label_classification":
        total, count = token_cross_entropy_sum(logits, labels)
        return total / jnp.maximum(count, 1)
    labels = labels.astype(jnp.float32)
    return jnp.mean(jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def token_classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over every labelled position (-100 ignored): masked LM and token tagging."""
    total, count = token_cross_entropy_sum(logits, labels)
    return total / jnp.maximum(count, 1)


def question_answering_loss(start_logits: jax.Array, end_logits: jax.Array, start_positions: jax.Array,
                            end_positions: jax.Array) -> jax.Array:
    """Transformers' span loss: positions clamped to [0, seq]; seq itself (outside the input) is ignored."""
    seq = start_logits.shape[-1]

    def one(logits, positions):
        positions = jnp.clip(positions.reshape(logits.shape[:-1]), 0, seq)
        return token_classification_loss(logits, jnp.where(positions == seq, IGNORE_INDEX, positions))

    return (one(start_logits, start_positions) + one(end_logits, end_positions)) / 2
