"""The HF-style model objects: thin pytrees over (static config, params).

``AutoModelForCausalLM.from_pretrained(...)`` returns a :class:`CausalLM`. It holds
no state beyond its params: the config is static pytree metadata, the params are
the leaves, so the object itself passes through ``jax.jit``, ``jax.grad`` and
``jax.tree.map``, and a gradient comes back as the same class, which
``save_pretrained`` writes under the HF tensor names.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo.config_utils import FrozenDict, ModelConfig, freeze, read_config_dict, thaw, write_text_atomic
from zoo.conversion import Rule, iter_hf_tensors, load_params
from zoo.hub import CheckpointError, CheckpointReader, resolve_folder, save_tensors_sharded
from zoo.losses import causal_lm_loss
from zoo.models import get_family
from zoo.nn.params import abstract_params, init_params, logical_axes
from zoo.outputs import BaseModelOutput, CausalLMOutput

logger = logging.getLogger(__name__)

HF_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def config_from_dict(data: Mapping[str, Any], **runtime: Any) -> ModelConfig:
    """Route an HF config dict to its family's config class."""
    model_type = data.get("model_type")
    if model_type is None:
        raise ValueError("config.json has no 'model_type'; cannot tell which family it is")
    family = get_family(model_type)
    return family.CONFIG_CLASS.from_dict(data, **runtime)


def _check_remote_code(data: Mapping[str, Any], trust_remote_code: bool) -> None:
    if trust_remote_code:
        raise ValueError(
            "trust_remote_code=True is refused: the zoo never runs code shipped with a checkpoint. "
            "Use a model_type the zoo implements."
        )
    if data.get("auto_map") and data.get("model_type") not in _families():
        raise ValueError(
            f"this checkpoint needs custom code (auto_map={dict(data['auto_map'])}) and model_type "
            f"'{data.get('model_type')}' is not implemented by the zoo; it refuses to run remote code"
        )


def _families() -> list[str]:
    from zoo.models import FAMILIES

    return list(FAMILIES)


def _resolve_dtype(dtype: Any, data: Mapping[str, Any]) -> str:
    if dtype is None or dtype == "auto":
        name = data.get("dtype") or data.get("torch_dtype") or "float32"
        return HF_DTYPE_NAMES.get(str(name), "float32")
    return jnp.dtype(dtype).name


class PreTrainedModel:
    """Base of the task classes. Subclasses say which params they keep and how they apply."""

    # Which family params the head drops (e.g. the LM head for a base model).
    drop_params: ClassVar[tuple[str, ...]] = ()
    architecture_suffix: ClassVar[str] = "Model"

    def __init__(self, config: ModelConfig, params: Any, generation_config: Any = None):
        self.config = config
        self.params = params
        self.generation_config = generation_config

    # ---- pytree ----
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls,
            lambda m: (((jax.tree_util.GetAttrKey("params"), m.params),), (m.config, m.generation_config)),
            lambda aux, children: cls(aux[0], children[0], aux[1]),
            flatten_func=lambda m: ((m.params,), (m.config, m.generation_config)),
        )

    def __repr__(self) -> str:
        from zoo.nn.params import count_params

        return f"{type(self).__name__}({self.config.model_type}, {count_params(self.params):,} params, dtype={self.config.dtype})"

    # ---- family plumbing ----
    @property
    def family(self) -> ModuleType:
        return get_family(self.config.model_type)

    @classmethod
    def param_specs_for(cls, family: ModuleType, cfg: ModelConfig) -> dict:
        specs = dict(family.param_specs(cfg))
        for name in cls.drop_params:
            specs.pop(name, None)
        return specs

    @classmethod
    def rules_for(cls, family: ModuleType, cfg: ModelConfig, specs: Any) -> list[Rule]:
        return family.convert.rules(cfg, specs)

    def param_axes(self) -> Any:
        return logical_axes(self.param_specs_for(self.family, self.config))

    # ---- construction ----
    @classmethod
    def from_config(
        cls, config: ModelConfig, key: jax.Array | int = 0, *, mesh: Any = None, rules: Any = None
    ) -> "PreTrainedModel":
        """A randomly initialised model (params drawn from ``key``)."""
        family = get_family(config.model_type)
        key = jax.random.PRNGKey(key) if isinstance(key, int) else key
        params = {k: v for k, v in family.init(config, key).items() if k not in cls.drop_params}
        if mesh is not None:
            from zoo.sharding import shard_params

            params = shard_params(params, logical_axes(cls.param_specs_for(family, config)), mesh, rules)
        return cls(config, params)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        dtype: Any = None,
        param_dtype: Any = None,
        revision: str | None = None,
        mesh: Any = None,
        rules: Any = None,
        scan_layers: bool = True,
        attn_implementation: str = "xla",
        trust_remote_code: bool = False,
        token: str | None = None,
        config: ModelConfig | None = None,
        progress: bool = False,
        **config_overrides: Any,
    ) -> "PreTrainedModel":
        """Load a Hub repo id or local folder (config.json + safetensors).

        ``dtype`` ("auto"/None: the checkpoint's) sets compute and weight dtype;
        ``mesh``/``rules`` place each tensor straight onto its shards;
        ``scan_layers=False`` keeps per-layer arrays (faster decoding on CPU).
        """
        folder = resolve_folder(pretrained_model_name_or_path, revision=revision, token=token)
        data = read_config_dict(folder)
        _check_remote_code(data, trust_remote_code)
        runtime = dict(
            dtype=_resolve_dtype(dtype, data),
            param_dtype=None if param_dtype is None else jnp.dtype(param_dtype).name,
            scan_layers=scan_layers,
            attn_implementation=attn_implementation,
        )
        if config is None:
            data.update(config_overrides)
            config = config_from_dict(data, **runtime)
        else:
            config = config.replace(**runtime)
        from zoo.nn.attention import resolve_implementation

        resolve_implementation(config.attn_implementation)  # fail before reading any weight
        family = get_family(config.model_type)
        specs = cls.param_specs_for(family, config)
        rules_ = cls.rules_for(family, config, specs)
        place = _placer(mesh, rules)
        ignore = tuple(getattr(family.convert, "IGNORE", ())) + cls.ignore_tensors(config)
        reader = CheckpointReader(folder)
        prefixes = cls.checkpoint_prefixes(family, config)
        absent = _absent_params(reader, rules_, cls.initializable_params(config), prefixes)
        rules_ = [r for r in rules_ if r.path[0] not in absent]
        show = _progress_printer(len(rules_)) if progress else None
        params = load_params(
            reader,
            rules_,
            specs,
            num_layers=config.num_hidden_layers,
            scan_layers=config.scan_layers,
            dtype=config.weight_dtype,
            place=place,
            ignore=ignore,
            prefixes=prefixes,
            progress=show,
        )
        if absent:
            logger.warning("%s: %s not in the checkpoint; initialised at random (train before use)",
                           cls.__name__, ", ".join(absent))
            fresh = init_params({k: specs[k] for k in absent}, jax.random.PRNGKey(0), config.weight_dtype)
            params.update(fresh)
        return cls(config, params, _load_generation_config(folder))

    @classmethod
    def checkpoint_prefixes(cls, family: ModuleType, config: ModelConfig) -> tuple[str, ...]:
        """Prefixes a checkpoint may add to (or leave off) our rules' tensor names."""
        return (decoder_prefix(family),)

    @classmethod
    def initializable_params(cls, config: ModelConfig) -> tuple[str, ...]:
        """Top-level params (task heads) drawn at random when the checkpoint lacks all their
        tensors, as Transformers does when a new head goes on a pretrained backbone."""
        return ()

    @classmethod
    def ignore_tensors(cls, config: ModelConfig) -> tuple[str, ...]:
        """Checkpoint tensors this class may find and leave unused."""
        return ("lm_head.weight",) if getattr(config, "tie_word_embeddings", False) else ()

    # ---- saving ----
    def hf_architecture(self) -> str:
        # Families whose class names break the pattern (GPT2LMHeadModel) list them.
        named = getattr(self.family, "HF_ARCHITECTURES", {})
        return named.get(self.architecture_suffix, self.family.HF_PREFIX + self.architecture_suffix)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "5GB",
        dtype: Any = None,
        push_to_hub: bool = False,
        **push_kwargs: Any,
    ) -> None:
        """Write config.json, generation_config.json and (sharded) safetensors that
        PyTorch Transformers loads unchanged. ``dtype`` casts the saved weights."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        family = self.family
        specs = self.param_specs_for(family, self.config)
        rules_ = self.rules_for(family, self.config, specs)
        tensors = iter_hf_tensors(
            self.params, rules_, num_layers=self.config.num_hidden_layers, scan_layers=self.config.scan_layers,
            dtype=dtype,
        )
        cfg = self.config.to_dict()
        cfg["architectures"] = [self.hf_architecture()]
        leaf = jax.tree.leaves(self.params)[0]
        cfg["dtype"] = jnp.dtype(dtype or leaf.dtype).name
        extra = {"config.json": json.dumps(cfg, indent=2, sort_keys=True) + "\n"}
        gen = _generation_config_json(self.generation_config, self.config)
        if gen is not None:
            extra["generation_config.json"] = gen
        save_tensors_sharded(folder, tensors, max_shard_size=max_shard_size, extra_files=extra)
        if push_to_hub:
            self.push_to_hub(push_kwargs.pop("repo_id"), _folder=folder, **push_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        api: Any = None,
        private: bool | None = None,
        commit_message: str = "Upload model with zoo",
        token: str | None = None,
        revision: str | None = None,
        _folder: Path | None = None,
    ) -> Any:
        """Save to a temporary folder and upload it with huggingface_hub (``api``: an HfApi)."""
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if _folder is not None:
            return api.upload_folder(
                folder_path=str(_folder), repo_id=repo_id, commit_message=commit_message, revision=revision
            )
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return api.upload_folder(folder_path=tmp, repo_id=repo_id, commit_message=commit_message, revision=revision)

    # ---- conveniences ----
    def astype(self, dtype: Any) -> "PreTrainedModel":
        dt = jnp.dtype(dtype)
        params = jax.tree.map(lambda x: x.astype(dt), self.params)
        return type(self)(self.config.replace(dtype=dt.name, param_dtype=None), params, self.generation_config)

    def with_layout(self, scan_layers: bool) -> "PreTrainedModel":
        """Convert between stacked (scan) and per-layer (unrolled) params."""
        from zoo.nn.params import stack_layers, unstack_layers

        if scan_layers == self.config.scan_layers:
            return self
        layers, cfg = self.params["layers"], self.config
        # Families whose stacks are not one per layer (dense/MoE kinds stacked apart) convert themselves.
        if scan_layers:
            stack = getattr(self.family, "stack_layers", None)
            layers = stack(layers, cfg) if stack else stack_layers(layers)
        else:
            unstack = getattr(self.family, "unstack_layers", None)
            layers = unstack(layers, cfg) if unstack else unstack_layers(layers, cfg.num_hidden_layers)
        return type(self)(self.config.replace(scan_layers=scan_layers), {**self.params, "layers": layers},
                          self.generation_config)


def _absent_params(reader: CheckpointReader, rules: Sequence[Rule], candidates: Sequence[str],
                   prefixes: Sequence[str]) -> tuple[str, ...]:
    """The candidate top-level params none of whose tensors the checkpoint holds."""
    from zoo.conversion import _resolve_name

    def present(rule: Rule) -> bool:
        return _resolve_name(reader, rule.hf.format(i=0) if rule.per_layer else rule.hf, prefixes) is not None

    return tuple(k for k in candidates
                 if any(r.path[0] == k for r in rules) and not any(present(r) for r in rules if r.path[0] == k))


def _placer(mesh: Any, rules: Any) -> Callable[[np.ndarray, tuple], jax.Array]:
    if mesh is None:
        return lambda arr, axes: jnp.array(arr)
    from zoo.sharding import get_rules, named_sharding

    rules = get_rules(rules)

    def place(arr: np.ndarray, axes: tuple) -> jax.Array:
        sharding = named_sharding(axes, mesh, rules, arr.shape)
        # Each device receives only its own slice of the host array.
        return jax.make_array_from_callback(arr.shape, sharding, lambda idx: np.ascontiguousarray(arr[idx]))

    return place


def _progress_printer(total: int) -> Callable[[str], None]:
    state = {"n": 0}

    def show(name: str) -> None:
        state["n"] += 1
        print(f"\rloading weights {state['n']}/{total}: {name[:60]:<60}", end="" if state["n"] < total else "\n",
              flush=True)

    return show


def _load_generation_config(folder: Path) -> Any:
    path = folder / "generation_config.json"
    try:
        from zoo.generation import GenerationConfig
    except ImportError:
        return freeze(json.loads(path.read_text())) if path.exists() else None
    return GenerationConfig.from_pretrained(folder) if path.exists() else None


def _generation_config_json(gen: Any, config: ModelConfig) -> str | None:
    if gen is None:
        data = {k: thaw(getattr(config, k)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                if getattr(config, k, None) is not None}
        if not data:
            return None
    elif isinstance(gen, Mapping):
        data = thaw(gen)
    else:
        data = gen.to_dict()
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- task classes
def decoder_prefix(family: ModuleType) -> str:
    """The base-model prefix of a decoder family's tensor names ("model.", GPT-2's "transformer.")."""
    return getattr(family.convert, "BASE_PREFIX", "model.")


@functools.partial(jax.jit, static_argnames=("cfg", "logits_to_keep"))
def _causal_lm_apply(params, cfg, input_ids, attention_mask, position_ids, labels, cache, segment_ids,
                     inputs_embeds, logits_to_keep):
    family = get_family(cfg.model_type)
    logits, cache = family.forward(
        params, cfg, input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
        segment_ids=segment_ids, inputs_embeds=inputs_embeds, logits_to_keep=logits_to_keep,
    )
    loss = None
    if labels is not None:
        if attention_mask is not None and cache is None:
            pass  # Transformers does not mask labels by attention_mask; callers set -100 themselves
        loss = causal_lm_loss(logits, labels)
    return CausalLMOutput(loss=loss, logits=logits, past_key_values=cache)


class CausalLM(PreTrainedModel):
    """A decoder with its language-model head: ``model(ids).logits``, ``.generate``."""

    architecture_suffix = "ForCausalLM"

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
    ) -> CausalLMOutput:
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
        return _causal_lm_apply(
            self.params, self.config, input_ids, attention_mask,
            None if position_ids is None else jnp.asarray(position_ids, jnp.int32),
            None if labels is None else jnp.asarray(labels, jnp.int32),
            past_key_values, segment_ids, inputs_embeds, logits_to_keep,
        )

    def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> dict:
        return self.family.init_cache(self.config, batch_size, max_length, dtype)

    def generate(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        """Compiled decoding (greedy, sampling, beam, assisted); see ``zoo.generation.generate``."""
        from zoo.generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _base_apply(params, cfg, input_ids, attention_mask, position_ids, segment_ids, inputs_embeds):
    family = get_family(cfg.model_type)
    hidden, _ = family.forward_hidden(
        params, cfg, input_ids, attention_mask=attention_mask, position_ids=position_ids,
        segment_ids=segment_ids, inputs_embeds=inputs_embeds,
    )
    return BaseModelOutput(last_hidden_state=hidden)


class BaseModel(PreTrainedModel):
    """The decoder without a head: ``model(ids).last_hidden_state``."""

    drop_params = ("lm_head",)
    architecture_suffix = "Model"

    @classmethod
    def ignore_tensors(cls, config: ModelConfig) -> tuple[str, ...]:
        return ("lm_head.",)

    @classmethod
    def rules_for(cls, family, cfg, specs):
        # A bare model is saved without the "model." prefix, as Transformers' <Family>Model does.
        prefix = decoder_prefix(family)
        return [
            dataclasses.replace(r, hf=r.hf[len(prefix):] if r.hf.startswith(prefix) else r.hf)
            for r in family.convert.rules(cfg, specs)
        ]

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, *, segment_ids=None,
                 inputs_embeds=None) -> BaseModelOutput:
        return _base_apply(
            self.params, self.config, None if input_ids is None else jnp.asarray(input_ids, jnp.int32),
            None if attention_mask is None else jnp.asarray(attention_mask),
            None if position_ids is None else jnp.asarray(position_ids, jnp.int32), segment_ids, inputs_embeds,
        )


__all__ = ["PreTrainedModel", "CausalLM", "BaseModel", "config_from_dict", "CheckpointError", "FrozenDict",
           "write_text_atomic", "Sequence"]
