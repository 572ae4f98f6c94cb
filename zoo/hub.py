"""Hub I/O: repo id or folder -> local files; safetensors <-> param trees."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

# Files a checkpoint folder may need; patterns keep downloads to what we read.
DEFAULT_PATTERNS = (
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.txt",
    "*.jinja",
    "1_Pooling/*",
)


def resolve_folder(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    token: str | None = None,
) -> Path:
    """Return a local folder for a repo id or a folder path.

    A folder is used as is. Anything else is a Hub repo id fetched through
    huggingface_hub's cache (honouring HF_HUB_OFFLINE), downloading only the files
    matching ``allow_patterns``.
    """
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a checkpoint folder or a Hub repo id")
    text = str(repo_id_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"no such folder: {text}")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id=text,
            revision=revision,
            allow_patterns=list(allow_patterns or DEFAULT_PATTERNS),
            token=token,
        )
    except Exception as err:  # huggingface_hub raises several types; one clear message
        raise OSError(
            f"could not resolve '{text}' as a local folder or a Hub repo id "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {err}"
        ) from err
    return Path(local)


# ---------------------------------------------------------------- safetensors
# Our own reader/writer: lazy per-tensor reads with validated offsets, and
# bfloat16 through ml_dtypes, which safetensors' numpy API lacks.
import json
import struct

import ml_dtypes
import numpy as np

_ST_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as asked: missing, corrupt or mismatched."""


class SafetensorsFile:
    """Lazy view of one .safetensors file: the header is parsed up front, tensors read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"corrupt safetensors file {self.path}: shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(
                    f"corrupt or truncated safetensors file {self.path}: header claims {n} bytes, file has {size}"
                )
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"corrupt safetensors file {self.path}: header is not JSON ({err})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_len = size - self._data_start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                begin, end = info["data_offsets"]
                shape = tuple(info["shape"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"corrupt safetensors file {self.path}: bad entry for '{name}'") from None
            if end > data_len or end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise CheckpointError(
                    f"corrupt or truncated safetensors file {self.path}: tensor '{name}' needs bytes "
                    f"{begin}..{end} of {data_len} available"
                )
            self._entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Read one tensor (or rows [start, stop) of its first axis) into a fresh host array.

        Plain reads rather than a memory map: mapped pages stay resident (and count
        in RSS) for as long as the file is open, which would hold a second copy of
        the checkpoint while the first sits on the device. Rows of a row-major tensor
        are one contiguous byte range, so a slice of a fused tensor reads only itself.
        """
        dtype, shape, begin, end = self._entries[name]
        if rows is not None:
            start, stop = rows
            if not shape or not 0 <= start <= stop <= shape[0]:
                raise CheckpointError(f"rows {start}:{stop} out of range for tensor '{name}' of shape {shape}")
            row_bytes = (end - begin) // shape[0] if shape[0] else 0
            begin, end = begin + start * row_bytes, begin + stop * row_bytes
            shape = (stop - start, *shape[1:])
        buf = bytearray(end - begin)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._data_start + begin)
            got = f.readinto(buf)
        if got != end - begin:
            raise CheckpointError(f"truncated safetensors file {self.path}: short read of tensor '{name}'")
        return np.frombuffer(buf, dtype=dtype).reshape(shape)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write tensors to ``path`` atomically (temp name, fsync, rename)."""
    path = Path(path)
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _ST_NAMES:
            raise CheckpointError(f"cannot write tensor '{name}' of dtype {arr.dtype} to safetensors")
        header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align tensor data to 8 bytes
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointReader:
    """All tensors of a checkpoint folder (single file or sharded index), read lazily."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"corrupt index {index}: {err}") from None
            missing = sorted({f for f in weight_map.values() if not (self.folder / f).exists()})
            if missing:
                raise CheckpointError(f"sharded checkpoint {self.folder} is missing files listed in its index: {missing}")
            self._where = dict(weight_map)
        elif single.exists():
            self._files[single.name] = SafetensorsFile(single)
            self._where = {k: single.name for k in self._files[single.name].keys()}
        else:
            others = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if len(others) == 1:
                self._files[others[0]] = SafetensorsFile(self.folder / others[0])
                self._where = {k: others[0] for k in self._files[others[0]].keys()}
                return
            pickles = sorted(p.name for p in self.folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise CheckpointError(
                    f"{self.folder} has only pickle weights {pickles}; the zoo never unpickles checkpoints "
                    f"(they can run arbitrary code). Convert them to safetensors first."
                )
            raise CheckpointError(f"no safetensors weights in {self.folder}")

    def _file(self, name: str) -> SafetensorsFile:
        fname = self._where[name]
        if fname not in self._files:
            self._files[fname] = SafetensorsFile(self.folder / fname)
            absent = [k for k, f in self._where.items() if f == fname and k not in self._files[fname]._entries]
            if absent:
                raise CheckpointError(f"{self.folder / fname} lacks tensors its index lists: {absent[:5]}")
        return self._files[fname]

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        if name not in self._where:
            raise CheckpointError(f"tensor '{name}' not found in checkpoint {self.folder}")
        return self._file(name).get(name, rows)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)


def parse_size(size: int | str) -> int:
    """'5GB', '500MB', '2GiB' or an int -> bytes (decimal units like Transformers)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, mult in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * mult)
    return int(text)


def save_tensors_sharded(
    folder: str | os.PathLike,
    tensors: Iterable[tuple[str, np.ndarray]],
    *,
    max_shard_size: int | str = "5GB",
    extra_files: dict[str, str] | None = None,
) -> list[str]:
    """Write (name, array) pairs as one or several safetensors files plus an index.

    Files go into a hidden staging folder first and are renamed into place with
    the weights' entry point (model.safetensors or the index) last, so an
    interrupted save never leaves something that looks like a whole checkpoint.
    """
    import shutil
    import tempfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    stage = Path(tempfile.mkdtemp(prefix=".zoo-save-", dir=folder))
    try:
        shards: list[dict[str, np.ndarray]] = [{}]
        sizes = [0]
        names: list[str] = []

        def flush() -> None:
            write_safetensors(stage / f"shard-{len(names)}.tmp", shards[-1])
            names.append(f"shard-{len(names)}.tmp")

        for name, arr in tensors:
            if sizes[-1] and sizes[-1] + arr.nbytes > limit:
                flush()
                shards[-1] = {}
                sizes[-1] = 0
            shards[-1][name] = arr
            sizes[-1] += arr.nbytes
        flush()
        written: list[str] = []
        for fname, text in (extra_files or {}).items():
            (stage / fname).write_text(text)
        if len(names) == 1:
            os.replace(stage / names[0], stage / "model.safetensors")
            entry = "model.safetensors"
        else:
            total = len(names)
            weight_map = {}
            for i, tmp_name in enumerate(names):
                final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
                os.replace(stage / tmp_name, stage / final)
                for key in SafetensorsFile(stage / final).keys():
                    weight_map[key] = final
            total_size = sum((stage / f).stat().st_size for f in set(weight_map.values()))
            (stage / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2)
            )
            entry = "model.safetensors.index.json"
        # Remove a previous checkpoint's weights so stale shards are never mixed in.
        for old in list(folder.glob("model*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
            old.unlink()
        for p in sorted(stage.iterdir(), key=lambda p: p.name == entry):
            os.replace(p, folder / p.name)
            written.append(p.name)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)
