"""zoo.generation: the model-independent half of ``generate``.

``GenerationConfig`` (generation_config.json <-> a hashable static config), logits
processors composed into one jittable step function, next-token choice, and stopping
criteria. Decoding loops and KV caches build on these.
"""

from zoo.generation.config import DEFAULT_MAX_NEW_TOKENS, GENERATION_CONFIG_NAME, GenerationConfig
from zoo.generation.logits_process import (
    LogitsProcessorFn,
    apply_temperature,
    bad_words,
    begin_suppress_tokens,
    build_logits_processor,
    epsilon_filter,
    eta_filter,
    force_bos,
    force_eos,
    greedy_next_token,
    logits_processor_steps,
    mask_eos_before_min_length,
    mask_eos_before_min_new_tokens,
    min_p_filter,
    no_repeat_ngram,
    renormalize,
    repetition_penalty,
    sample_next_token,
    sequence_bias,
    suppress_tokens,
    top_k_filter,
    top_p_filter,
    typical_p_filter,
)
from zoo.generation.stopping_criteria import (
    StopStringMatch,
    StopStringMatcher,
    is_eos,
    max_length_reached,
    pad_finished_rows,
    should_continue,
    update_finished,
)

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS", "GENERATION_CONFIG_NAME", "GenerationConfig",
    "LogitsProcessorFn", "apply_temperature", "bad_words", "begin_suppress_tokens", "build_logits_processor",
    "epsilon_filter", "eta_filter", "force_bos", "force_eos", "greedy_next_token", "logits_processor_steps",
    "mask_eos_before_min_length", "mask_eos_before_min_new_tokens", "min_p_filter", "no_repeat_ngram",
    "renormalize", "repetition_penalty", "sample_next_token", "sequence_bias", "suppress_tokens",
    "top_k_filter", "top_p_filter", "typical_p_filter",
    "StopStringMatch", "StopStringMatcher", "is_eos", "max_length_reached", "pad_finished_rows",
    "should_continue", "update_finished",
]

from zoo.generation.decode import GenerateOutput, generate  # noqa: E402  (loops build on the pieces above)

__all__ += ["GenerateOutput", "generate"]

from zoo.generation.streamers import (  # noqa: E402
    AsyncTextIteratorStreamer,
    BaseStreamer,
    TextIteratorStreamer,
    TextStreamer,
)

__all__ += ["AsyncTextIteratorStreamer", "BaseStreamer", "TextIteratorStreamer", "TextStreamer"]
