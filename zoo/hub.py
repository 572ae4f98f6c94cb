"""Hub I/O: repo id or folder -> local files; safetensors <-> param trees."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

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
