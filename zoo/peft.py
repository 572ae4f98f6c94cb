"""LoRA adapters in the PEFT format: ``get_peft_model(model, LoraConfig(...))`` and
``PeftModel.from_pretrained(base, adapter_dir)``.

Adapters live inside the model's param tree, beside the kernel they adapt (``lora_a``,
``lora_b``, ``lora_scale``; see ``zoo.nn.lora``), so the family's forward runs them unchanged.
On disk they are PEFT's files: ``adapter_config.json`` and ``adapter_model.safetensors`` with
PEFT's tensor names (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``, A as
[r, in] and B as [out, r]), derived from the family's HF conversion table, so adapters move
freely between the zoo and ``peft`` + Transformers.

Training: ``create_train_state(peft_model, opt)`` makes only ``lora_a``/``lora_b`` trainable (the
optimizer state holds nothing for the frozen base), and ``causal_lm_loss_fn(peft_model)`` adds
LoRA dropout when ``lora_dropout > 0``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo.conversion import Rule
from zoo.nn.lora import merged_kernel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
TRAINABLE = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """PEFT's ``LoraConfig`` fields that LoRA on projections needs (same names, same defaults)."""

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: Sequence[str] | str | None = None
    bias: str = "none"
    use_rslora: bool = False
    task_type: str | None = "CAUSAL_LM"
    base_model_name_or_path: str | None = None
    layers_to_transform: Sequence[int] | None = None
    init_lora_weights: bool = True

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.bias != "none":
            raise ValueError(f"bias='{self.bias}' is not supported; only bias='none' (PEFT's default)")
        if isinstance(self.target_modules, (list, tuple)):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_dict(self) -> dict[str, Any]:
        targets = self.target_modules
        return {
            "peft_type": "LORA",
            "task_type": self.task_type,
            "base_model_name_or_path": self.base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": sorted(targets) if isinstance(targets, tuple) else targets,
            "bias": self.bias,
            "use_rslora": self.use_rslora,
            "fan_in_fan_out": False,
            "inference_mode": True,
            "modules_to_save": None,
            "layers_to_transform": None if self.layers_to_transform is None else list(self.layers_to_transform),
            "init_lora_weights": self.init_lora_weights,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": False,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoraConfig":
        if data.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"only LoRA adapters are supported, got peft_type '{data.get('peft_type')}'")
        for key in ("rank_pattern", "alpha_pattern"):
            if data.get(key):
                raise ValueError(f"adapter_config '{key}' (per-module ranks) is not supported")
        for key in ("use_dora", "modules_to_save", "layer_replication", "trainable_token_indices",
                    "target_parameters"):
            if data.get(key):
                raise ValueError(f"adapter_config '{key}' is not supported")
        if data.get("fan_in_fan_out"):
            raise ValueError("adapter_config fan_in_fan_out=True (Conv1D models) is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if isinstance(kwargs.get("layers_to_transform"), int):
            kwargs["layers_to_transform"] = (kwargs["layers_to_transform"],)
        kwargs["init_lora_weights"] = bool(kwargs.get("init_lora_weights", True))
        return cls(**kwargs)


# ---------------------------------------------------------------- which kernels get adapters
@dataclasses.dataclass(frozen=True)
class _Target:
    rule: Rule               # the kernel's HF conversion rule (gives names and the in/out split)
    module: tuple            # path of the module dict, e.g. ("layers", "self_attn", "q_proj")
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def hf_name(self, layer: int, which: str) -> str:
        base = self.rule.hf.format(i=layer)
        return PEFT_PREFIX + base[: -len(".weight")] + f".lora_{which}.weight"


def _module_matches(hf_module: str, targets: Any) -> bool:
    """PEFT's rule: a list matches a module whose name ends with ``.<target>`` (or is it);
    a string is a regex that must match the whole module name."""
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, hf_module) is not None
    return any(hf_module == t or hf_module.endswith("." + t) for t in targets)


def _targets(model: Any, cfg: LoraConfig) -> list[_Target]:
    from zoo.nn.params import is_spec

    family, mcfg = model.family, model.config
    specs = type(model).param_specs_for(family, mcfg)
    rules = type(model).rules_for(family, mcfg, specs)
    wanted = cfg.target_modules if cfg.target_modules is not None else ("q_proj", "v_proj")
    found: list[_Target] = []
    for rule in rules:
        eligible = (rule.per_layer and rule.path[-1] == "kernel" and rule.split is not None and not rule.stack
                    and rule.to_ours is None and rule.from_ours is None and rule.only_layers is None
                    and rule.hf.endswith(".weight"))
        module_name = rule.hf.format(i=0)[: -len(".weight")]
        if not eligible or not _module_matches(module_name, wanted):
            continue
        spec = specs["layers"]
        for key in rule.path[1:]:
            spec = spec[0][key] if isinstance(spec, list) else spec[key]
        shape = spec.shape[1:] if mcfg.scan_layers else spec.shape
        assert is_spec(spec)
        found.append(_Target(rule, rule.path[:-1], tuple(shape[: rule.split]), tuple(shape[rule.split:])))
    if not found:
        raise ValueError(f"target_modules {wanted} match no adaptable projection of this {mcfg.model_type} model")
    if isinstance(wanted, (list, tuple)):
        names = {t.module[-1] for t in found}
        missing = [w for w in wanted if w.split(".")[-1] not in names]
        if missing:
            raise ValueError(f"target_modules {missing} not found in this {mcfg.model_type} model "
                             f"(adaptable: {sorted(names)})")
    return found


def _layers(cfg: LoraConfig, num_layers: int) -> tuple[int, ...]:
    return tuple(range(num_layers)) if cfg.layers_to_transform is None else tuple(cfg.layers_to_transform)


def _module(params: Any, target: _Target, layer: int, scan: bool) -> dict:
    node = params["layers"] if scan else params["layers"][layer]
    for key in target.module[1:]:
        node = node[key]
    return node


def _replicated_like(x: jax.Array, like: jax.Array) -> jax.Array:
    sharding = getattr(like, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.device_put(x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    return x


def _copy_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_copy_tree(v) for v in tree]
    return tree


def _insert_adapters(model: Any, cfg: LoraConfig, weights: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
                     targets: list[_Target]) -> Any:
    """A copy of the params tree with ``weights[(target, layer)] = (A, B)`` (our layouts) added.
    Adapters are kept in float32 whatever the base dtype (as PEFT's autocast_adapter_dtype)."""
    mcfg = model.config
    params = _copy_tree(model.params)
    layers = _layers(cfg, mcfg.num_hidden_layers)
    if mcfg.scan_layers and layers != tuple(range(mcfg.num_hidden_layers)):
        raise ValueError("layers_to_transform needs the base model loaded with scan_layers=False "
                         "(stacked layers share one structure)")

    def add(node: dict, a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> None:
        for name, value in (("lora_a", a), ("lora_b", b), ("lora_scale", scale)):
            node[name] = _replicated_like(jnp.asarray(value, jnp.float32), node["kernel"])

    for t_idx, target in enumerate(targets):
        if mcfg.scan_layers:
            add(_module(params, target, 0, True),
                np.stack([weights[(t_idx, i)][0] for i in layers]),
                np.stack([weights[(t_idx, i)][1] for i in layers]),
                np.full((len(layers),), cfg.scaling, np.float32))
        else:
            for i in layers:
                add(_module(params, target, i, False), *weights[(t_idx, i)], np.float32(cfg.scaling))
    return params


def _init_weights(cfg: LoraConfig, targets: list[_Target], num_layers: int, key: jax.Array):
    """PEFT's default init: A ~ kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0."""
    weights = {}
    for t_idx, target in enumerate(targets):
        fan_in = math.prod(target.in_shape)
        for i in _layers(cfg, num_layers):
            k = jax.random.fold_in(jax.random.fold_in(key, t_idx), i)
            bound = 1.0 / math.sqrt(fan_in)
            a = np.asarray(jax.random.uniform(k, (*target.in_shape, cfg.r), jnp.float32, -bound, bound))
            if not cfg.init_lora_weights:  # PEFT: init_lora_weights=False leaves B random too (not a no-op)
                b = np.asarray(jax.random.uniform(jax.random.fold_in(k, 1), (cfg.r, *target.out_shape),
                                                  jnp.float32, -bound, bound))
            else:
                b = np.zeros((cfg.r, *target.out_shape), np.float32)
            weights[(t_idx, i)] = (a, b)
    return weights


def _is_trainable(path: tuple, leaf: Any) -> bool:
    del leaf
    last = path[-1]
    return getattr(last, "key", None) in TRAINABLE


# ---------------------------------------------------------------- the model
class PeftModel:
    """A causal LM whose projections carry LoRA adapters. Calls, ``generate`` and the train
    step work as on the base model (``base_model`` holds the adapted params)."""

    def __init__(self, base_model: Any, peft_config: LoraConfig, targets: list[_Target]):
        self.base_model = base_model
        self.peft_config = peft_config
        self._targets = targets

    # the HF-style surface: the adapted model behaves like the base model
    @property
    def config(self) -> Any:
        return self.base_model.config

    @property
    def params(self) -> Any:
        return self.base_model.params

    @property
    def family(self) -> Any:
        return self.base_model.family

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)

    def with_params(self, params: Any) -> "PeftModel":
        """The same adapters layout over new params (e.g. ``state.full_params()`` after training)."""
        base = type(self.base_model)(self.base_model.config, params, self.base_model.generation_config)
        return PeftModel(base, self.peft_config, self._targets)

    # training
    def trainable_mask(self) -> Any:
        """True on ``lora_a``/``lora_b`` leaves, False elsewhere (``create_train_state(trainable=)``)."""
        return jax.tree_util.tree_map_with_path(_is_trainable, self.params)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = total = 0
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.params):
            name = getattr(path[-1], "key", None)
            if name in ("lora_scale", "lora_dropout", "lora_dropout_key"):
                continue
            total += leaf.size
            trainable += leaf.size if name in TRAINABLE else 0
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    def dropout_apply(self, params: Any, rng: jax.Array | None) -> Any:
        """Add LoRA-dropout keys to every adapted module (the train step's ``apply`` hook); with
        ``lora_dropout == 0`` or no key, the params are returned as they are."""
        rate = self.peft_config.lora_dropout
        if rate == 0.0 or rng is None:
            return params
        params = _copy_tree(params)
        scan = self.config.scan_layers
        layers = _layers(self.peft_config, self.config.num_hidden_layers)
        for t_idx, target in enumerate(self._targets):
            key = jax.random.fold_in(rng, t_idx)
            if scan:
                node = _module(params, target, 0, True)
                node["lora_dropout_key"] = jax.random.split(key, len(layers))
                node["lora_dropout"] = jnp.full((len(layers),), rate, jnp.float32)
            else:
                for i in layers:
                    node = _module(params, target, i, False)
                    node["lora_dropout_key"] = jax.random.fold_in(key, i)
                    node["lora_dropout"] = jnp.float32(rate)
        return params

    # saving / merging
    def adapter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(PEFT tensor name, PyTorch-layout array) for every adapter weight."""
        scan = self.config.scan_layers
        layers = _layers(self.peft_config, self.config.num_hidden_layers)
        for target in self._targets:
            split = len(target.in_shape)
            a_rule = dataclasses.replace(target.rule, split=split)
            b_rule = dataclasses.replace(target.rule, split=1)
            for pos, i in enumerate(layers):
                node = _module(self.params, target, i, scan)
                a, b = np.asarray(node["lora_a"]), np.asarray(node["lora_b"])
                if scan:
                    a, b = a[pos], b[pos]
                yield target.hf_name(i, "A"), np.ascontiguousarray(a_rule.save(a))
                yield target.hf_name(i, "B"), np.ascontiguousarray(b_rule.save(b))

    def save_pretrained(self, save_directory: str | os.PathLike, *, dtype: Any = None) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT does."""
        from safetensors.numpy import save_file

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v if dtype is None else v.astype(jnp.dtype(dtype))) for k, v in self.adapter_tensors()}
        save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (folder / ADAPTER_CONFIG).write_text(json.dumps(self.peft_config.to_dict(), indent=2, sort_keys=True) + "\n")

    def merge_and_unload(self) -> Any:
        """The base model with ``W + scale * A B`` folded into each adapted kernel (no adapters left)."""
        params = _copy_tree(self.params)
        scan = self.config.scan_layers
        for target in self._targets:
            for i in (None,) if scan else _layers(self.peft_config, self.config.num_hidden_layers):
                node = _module(params, target, i, scan)
                node["kernel"] = merged_kernel(node)
                for k in ("lora_a", "lora_b", "lora_scale", "lora_dropout", "lora_dropout_key"):
                    node.pop(k, None)
        return type(self.base_model)(self.config, params, self.base_model.generation_config)

    def unload(self) -> Any:
        """The base model without the adapters (unmerged)."""
        params = _copy_tree(self.params)
        scan = self.config.scan_layers
        for target in self._targets:
            for i in (None,) if scan else _layers(self.peft_config, self.config.num_hidden_layers):
                node = _module(params, target, i, scan)
                for k in ("lora_a", "lora_b", "lora_scale", "lora_dropout", "lora_dropout_key"):
                    node.pop(k, None)
        return type(self.base_model)(self.config, params, self.base_model.generation_config)

    get_base_model = unload

    @classmethod
    def from_pretrained(cls, model: Any, model_id: str | os.PathLike, *, revision: str | None = None,
                        token: str | None = None) -> "PeftModel":
        """Load adapters (a folder or Hub repo written by ``peft`` or by us) onto ``model``."""
        from safetensors.numpy import load_file

        from zoo.hub import resolve_folder

        folder = Path(resolve_folder(model_id, revision=revision, token=token))
        if not (folder / ADAPTER_CONFIG).exists():
            raise FileNotFoundError(f"{folder} has no {ADAPTER_CONFIG}: not a PEFT adapter folder")
        cfg = LoraConfig.from_dict(json.loads((folder / ADAPTER_CONFIG).read_text()))
        if (folder / ADAPTER_WEIGHTS).exists():
            tensors = load_file(str(folder / ADAPTER_WEIGHTS))
        elif (folder / "adapter_model.bin").exists():
            import torch

            tensors = {k: v.float().numpy() for k, v in
                       torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True).items()}
        else:
            raise FileNotFoundError(f"{folder} has no {ADAPTER_WEIGHTS}")
        tensors = {_strip_adapter_name(k): v for k, v in tensors.items()}
        targets = _targets(model, cfg)
        weights: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        used: set[str] = set()
        for t_idx, target in enumerate(targets):
            split = len(target.in_shape)
            a_rule = dataclasses.replace(target.rule, split=split)
            b_rule = dataclasses.replace(target.rule, split=1)
            for i in _layers(cfg, model.config.num_hidden_layers):
                names = target.hf_name(i, "A"), target.hf_name(i, "B")
                missing = [n for n in names if n not in tensors]
                if missing:
                    raise ValueError(f"adapter {folder} is missing {missing[0]}")
                a, b = (np.asarray(tensors[n], np.float32) for n in names)
                want_a, want_b = (cfg.r, math.prod(target.in_shape)), (math.prod(target.out_shape), cfg.r)
                if a.shape != want_a or b.shape != want_b:
                    raise ValueError(f"adapter tensors {names} have shapes {a.shape}, {b.shape}; "
                                     f"the model and r={cfg.r} imply {want_a}, {want_b}")
                weights[(t_idx, i)] = (a_rule.load(a, (*target.in_shape, cfg.r)),
                                       b_rule.load(b, (cfg.r, *target.out_shape)))
                used.update(names)
        extra = sorted(set(tensors) - used)
        if extra:
            raise ValueError(f"adapter {folder} has tensors this model does not use: {extra[:4]}")
        params = _insert_adapters(model, cfg, weights, targets)
        base = type(model)(model.config, params, getattr(model, "generation_config", None))
        return cls(base, cfg, targets)


# A PeftModel is a pytree like the models it wraps (its params are the leaves), so it can go
# through jax.jit / jax.tree.map.
jax.tree_util.register_pytree_node(
    PeftModel,
    lambda m: ((m.base_model,), (m.peft_config, tuple(m._targets))),
    lambda aux, children: PeftModel(children[0], aux[0], list(aux[1])),
)


def _strip_adapter_name(name: str) -> str:
    # PEFT drops the adapter name when saving; some tools keep ".default".
    return name.replace(".lora_A.default.weight", ".lora_A.weight").replace(".lora_B.default.weight", ".lora_B.weight")


def get_peft_model(model: Any, peft_config: LoraConfig, *, key: jax.Array | int = 0) -> PeftModel:
    """Add fresh LoRA adapters (PEFT's init: B = 0, so the model's outputs do not change yet)."""
    if isinstance(model, PeftModel):
        raise ValueError("the model already has adapters; merge_and_unload() it first")
    if not isinstance(peft_config, LoraConfig):
        raise TypeError(f"peft_config must be a zoo.peft.LoraConfig, got {type(peft_config).__name__}")
    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    targets = _targets(model, peft_config)
    weights = _init_weights(peft_config, targets, model.config.num_hidden_layers, key)
    params = _insert_adapters(model, peft_config, weights, targets)
    base = type(model)(model.config, params, getattr(model, "generation_config", None))
    return PeftModel(base, peft_config, targets)


__all__ = ["LoraConfig", "PeftModel", "get_peft_model", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS"]
