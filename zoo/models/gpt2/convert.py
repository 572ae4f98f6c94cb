"""GPT-2 tensor names. Conv1D stores weights ``[in, out]`` (already our order), so the
kernels only reshape; the fused ``c_attn`` keeps q, k, v together as one param."""
from __future__ import annotations

from zoo.conversion import Rule, rules_for_tree
from zoo.models.gpt2.config import GPT2Config

BASE_PREFIX = "transformer."
L = "transformer.h.{i}."


def _to_2d(w):
    return w.reshape(w.shape[0], -1)


def _o_to_2d(w):  # [heads, head_dim, embed] -> [embed_in, embed_out]
    return w.reshape(-1, w.shape[-1])


RULES = (
    Rule("transformer.wte.weight", ("wte", "embedding")),
    Rule("transformer.wpe.weight", ("wpe", "embedding")),
    Rule(L + "ln_1.weight", ("layers", "ln_1", "scale")),
    Rule(L + "ln_1.bias", ("layers", "ln_1", "bias")),
    Rule(L + "attn.c_attn.weight", ("layers", "attn", "c_attn", "kernel"), from_ours=_to_2d),
    Rule(L + "attn.c_attn.bias", ("layers", "attn", "c_attn", "bias"), flat=True),
    Rule(L + "attn.c_proj.weight", ("layers", "attn", "c_proj", "kernel"), from_ours=_o_to_2d),
    Rule(L + "attn.c_proj.bias", ("layers", "attn", "c_proj", "bias")),
    Rule(L + "ln_2.weight", ("layers", "ln_2", "scale")),
    Rule(L + "ln_2.bias", ("layers", "ln_2", "bias")),
    Rule(L + "mlp.c_fc.weight", ("layers", "mlp", "c_fc", "kernel")),
    Rule(L + "mlp.c_fc.bias", ("layers", "mlp", "c_fc", "bias")),
    Rule(L + "mlp.c_proj.weight", ("layers", "mlp", "c_proj", "kernel")),
    Rule(L + "mlp.c_proj.bias", ("layers", "mlp", "c_proj", "bias")),
    Rule("transformer.ln_f.weight", ("ln_f", "scale")),
    Rule("transformer.ln_f.bias", ("ln_f", "bias")),
    Rule("lm_head.weight", ("lm_head", "kernel"), split=1),
)

# Old checkpoints carry the causal-mask buffers.
IGNORE = (".attn.bias", ".attn.masked_bias")


def rules(cfg: GPT2Config, specs) -> list[Rule]:
    return rules_for_tree(specs, RULES)
