"""Frozen, hashable model configs that read and write HF ``config.json``.

A config is a static argument of every jitted model function, so it must be
hashable: dict values become ``FrozenDict`` and lists become tuples. Keys we do
not model are kept verbatim in ``extra`` and written back, so a round trip through
the zoo never loses anything a checkpoint's config carried.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

C = TypeVar("C", bound="ModelConfig")

# Fields that describe how *we* run a model, not the checkpoint: never written to config.json.
RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "attn_implementation", "remat_policy", "extra")


class FrozenDict(dict):
    """A read-only dict with a hash, so configs holding dicts stay hashable."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))

    def _readonly(self, *args, **kwargs):
        raise TypeError("FrozenDict is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore


def freeze(value: Any) -> Any:
    """Recursively turn dicts into FrozenDicts and lists into tuples."""
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Inverse of :func:`freeze`, for writing JSON."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every family's config. Subclasses add HF fields with HF defaults."""

    model_type: ClassVar[str] = ""
    # HF names that map onto one of our fields under another name (old -> new).
    aliases: ClassVar[Mapping[str, str]] = {}

    # --- runtime options (not part of config.json) ---
    dtype: str = "float32"          # activations / compute dtype
    param_dtype: str | None = None  # None: same as dtype
    scan_layers: bool = True        # stacked layers + lax.scan, or per-layer arrays
    attn_implementation: str = "xla"
    remat_policy: str | None = None  # None | "full" | "dots" | "dots_no_batch" (training)
    extra: FrozenDict = dataclasses.field(default_factory=FrozenDict)

    # ---- construction ----
    @classmethod
    def hf_field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in RUNTIME_FIELDS)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], **runtime: Any) -> C:
        """Build from an HF config dict; unknown keys go to ``extra``."""
        data = dict(data)
        data = cls.normalize_hf_dict(data)
        known = set(cls.hf_field_names())
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            key = cls.aliases.get(key, key)
            if key == "model_type":
                if cls.model_type and value != cls.model_type:
                    extra["model_type"] = value  # a compatible type routed here (e.g. llama-like)
                continue
            if key in known:
                kwargs[key] = freeze(value)
            else:
                extra[key] = freeze(value)
        bad = set(runtime) - set(RUNTIME_FIELDS)
        if bad:
            raise TypeError(f"{cls.__name__}: unknown options {sorted(bad)}")
        return cls(**kwargs, extra=FrozenDict(extra), **runtime).validated()

    @classmethod
    def normalize_hf_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook for families to fold old key spellings into current ones."""
        return data

    def validated(self: C) -> C:
        """Hook for families to check and fill derived fields; returns self or a copy."""
        return self

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes).validated()

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        """The HF config.json content (runtime options excluded, unknown keys restored)."""
        out: dict[str, Any] = {}
        for name in self.hf_field_names():
            out[name] = thaw(getattr(self, name))
        out.update(thaw(self.extra))
        out.setdefault("model_type", self.model_type)
        return self.denormalize_hf_dict(out)

    def denormalize_hf_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        """Hook for families to write keys the way Transformers expects them."""
        return data

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path / "config.json", self.to_json_string())

    @property
    def compute_dtype(self):
        import jax.numpy as jnp

        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        import jax.numpy as jnp

        return jnp.dtype(self.param_dtype or self.dtype)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_config_dict(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
