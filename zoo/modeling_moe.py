"""The causal-LM class of mixture-of-experts families: ``CausalLM`` plus Transformers'
``output_router_logits`` and router load-balancing loss.

``model(ids, labels=..., output_router_logits=True)`` returns ``aux_loss`` and
``router_logits`` ([moe_layers, batch*seq, experts]); with labels the loss is the
token loss plus ``router_aux_loss_coef * aux_loss``, exactly as Transformers adds it.
``output_router_logits`` defaults to the config's value, as there.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from zoo.losses import causal_lm_loss
from zoo.modeling import CausalLM
from zoo.models import get_family
from zoo.nn.moe import load_balancing_loss
from zoo.outputs import CausalLMOutput


@functools.partial(jax.jit, static_argnames=("cfg", "logits_to_keep", "output_router_logits"))
def _moe_causal_lm_apply(params, cfg, input_ids, attention_mask, position_ids, labels, cache, segment_ids,
                         inputs_embeds, logits_to_keep, output_router_logits):
    family = get_family(cfg.model_type)
    logits, cache, router_logits = family.forward_with_router_logits(
        params, cfg, input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
        segment_ids=segment_ids, inputs_embeds=inputs_embeds, logits_to_keep=logits_to_keep,
    )
    loss = None if labels is None else causal_lm_loss(logits, labels)
    aux_loss = None
    if output_router_logits and router_logits is not None:
        t = router_logits.shape[1] // logits.shape[0]
        mask = attention_mask if attention_mask is not None and attention_mask.shape[-1] == t else None
        aux_loss = load_balancing_loss(router_logits, cfg.num_experts, cfg.num_experts_per_tok, mask)
        if loss is not None:
            loss = loss + cfg.router_aux_loss_coef * aux_loss
    return CausalLMOutput(loss=loss, logits=logits, past_key_values=cache, aux_loss=aux_loss,
                          router_logits=router_logits if output_router_logits else None)


class MoeCausalLM(CausalLM):
    """A mixture-of-experts decoder with its LM head (Mixtral, Qwen3-MoE)."""

    def __call__(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        position_ids: Any = None,
        labels: Any = None,
        *,
        past_key_values: Any = None,
        segment_ids: Any = None,
        inputs_embeds: Any = None,
        logits_to_keep: int = 0,
        output_router_logits: bool | None = None,
    ) -> CausalLMOutput:
        # The input checks of CausalLM.__call__, which would run the plain forward.
        input_ids = None if input_ids is None else jnp.asarray(input_ids, jnp.int32)
        if input_ids is None and inputs_embeds is None:
            raise ValueError("pass input_ids or inputs_embeds")
        if input_ids is not None and (input_ids.ndim != 2 or input_ids.shape[1] == 0):
            raise ValueError(f"input_ids must be [batch, seq] with seq >= 1, got shape {input_ids.shape}")
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask)
            if input_ids is not None and past_key_values is None and attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {attention_mask.shape} does not match input_ids {input_ids.shape}"
                )
        if output_router_logits is None:
            output_router_logits = bool(self.config.output_router_logits)
        return _moe_causal_lm_apply(
            self.params, self.config, input_ids, attention_mask,
            None if position_ids is None else jnp.asarray(position_ids, jnp.int32),
            None if labels is None else jnp.asarray(labels, jnp.int32),
            past_key_values, segment_ids, inputs_embeds, logits_to_keep, output_router_logits,
        )


__all__ = ["MoeCausalLM"]
