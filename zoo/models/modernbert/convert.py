"""ModernBERT tensor names <-> our tree. Task checkpoints keep the body under ``model.``;
the first layer has no attention norm (an identity in Transformers)."""
from __future__ import annotations

from typing import Any

from zoo.conversion import Rule
from zoo.models.bert.convert import task_rules

L = "layers.{i}."


def _linear(hf: str, path: tuple) -> list[Rule]:
    """Biases are optional (``attention_bias``/``mlp_bias``...): rules for absent params are dropped."""
    return [Rule(hf + ".weight", (*path, "kernel"), split=1), Rule(hf + ".bias", (*path, "bias"), flat=True)]


def _norm(hf: str, path: tuple, skip_layers: tuple[int, ...] = ()) -> list[Rule]:
    return [Rule(hf + ".weight", (*path, "scale"), skip_layers=skip_layers, fill=1.0),
            Rule(hf + ".bias", (*path, "bias"), skip_layers=skip_layers, fill=0.0)]


BODY = (
    Rule("embeddings.tok_embeddings.weight", ("embeddings", "word", "embedding")),
    *_norm("embeddings.norm", ("embeddings", "norm")),
    *_norm(L + "attn_norm", ("layers", "attn_norm"), skip_layers=(0,)),
    *_linear(L + "attn.Wqkv", ("layers", "attn", "qkv")),
    Rule(L + "attn.Wo.weight", ("layers", "attn", "o_proj", "kernel"), split=2),
    Rule(L + "attn.Wo.bias", ("layers", "attn", "o_proj", "bias")),
    *_norm(L + "mlp_norm", ("layers", "mlp_norm")),
    # Wi [2f, d] holds the (activated input, gate) halves: ours [d, 2, f]
    *_linear(L + "mlp.Wi", ("layers", "mlp", "gate_up_proj")),
    *_linear(L + "mlp.Wo", ("layers", "mlp", "down_proj")),
    *_norm("final_norm", ("final_norm",)),
)


def heads(cfg: Any) -> tuple[Rule, ...]:
    mlm_decoder = [Rule("decoder.bias", ("decoder", "bias"))]
    if not cfg.tie_word_embeddings:
        mlm_decoder.append(Rule("decoder.weight", ("decoder", "kernel"), split=1))
    return (
        *_linear("head.dense", ("head", "dense")),
        *_norm("head.norm", ("head", "norm")),
        *mlm_decoder,
        *_linear("classifier", ("classifier",)),
    )


BASE_PREFIX = "model."
HEAD_TENSORS = ("head.", "decoder.", "classifier.")
IGNORE = ("rotary_emb.",)


def rules(cfg: Any, specs: Any, task: str = "base") -> list[Rule]:
    return task_rules(specs, BODY, heads(cfg), BASE_PREFIX, task)


__all__ = ["BASE_PREFIX", "HEAD_TENSORS", "IGNORE", "rules"]
