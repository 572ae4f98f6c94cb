"""``zoo download REPO``: fetch a Hub repository into the Hugging Face cache (with progress)."""
from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", help="Hub repo id, e.g. Qwen/Qwen3-0.6B")
    parser.add_argument("--include", action="append", default=None, metavar="PATTERN",
                        help="only files matching this glob (repeatable), e.g. '*.safetensors'")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--local-dir", default=None, help="copy into this folder instead of only the cache")


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        path = snapshot_download(repo_id=args.repo, revision=args.revision, allow_patterns=args.include,
                                 local_dir=args.local_dir)
    except Exception as err:  # many huggingface_hub/httpx types; say what happened in one line
        raise OSError(explain_download_error(args.repo, err, offline)) from None
    print(path)
    return 0


def explain_download_error(repo: str, err: Exception, offline: bool) -> str:
    name = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else name
    if offline:
        return (f"cannot download '{repo}': HF_HUB_OFFLINE is set and it is not in the local cache "
                f"(unset HF_HUB_OFFLINE to fetch it)")
    if "RepositoryNotFound" in name or "404" in text:
        return f"'{repo}' was not found on the Hub (or is private: log in with `hf auth login`)"
    if "RevisionNotFound" in name:
        return f"'{repo}' has no revision '{text}'"
    if "GatedRepo" in name or "401" in text or "403" in text:
        return f"'{repo}' needs authentication or access approval: {text}"
    if any(k in name for k in ("Connect", "Timeout", "Network", "LocalEntryNotFound", "Offline")) or \
            any(k in text.lower() for k in ("connect", "resolve", "network", "timed out")):
        return (f"cannot reach the Hub to download '{repo}' (no network?); set HF_HUB_OFFLINE=1 to use "
                f"only cached files ({name})")
    return f"download of '{repo}' failed: {name}: {text}"
