"""Where a model directory that a config or an argument names is: a local directory, a builtin: asset, or a repo id
already in the local Hugging Face cache (xtune never downloads); and a clear error naming the fix where it is none.
Below the templates, which pick a family's template by the checkpoint's model_type."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from xtune.assets import resolve_path
from xtune.errors import ConfigError

# How a command's user names another model directory; `{dir}` is the directory the fetch command writes.
CONFIG_USE = "set model.path to it (--set model.path={dir})"
ARGUMENT_USE = "pass {dir} instead"


def resolve_model_dir(path: str, use: str = CONFIG_USE) -> Path:
    """A local directory, a builtin: asset, or a repo id already in the local Hugging Face cache. `use` says how
    to point the command at another directory (the config key or the argument that named this one)."""
    local = resolve_path(path)
    if local.is_dir():
        return local
    looks_like_repo_id = not path.startswith(("/", ".", "~")) and path.count("/") == 1
    if looks_like_repo_id:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(path, local_files_only=True))
        except Exception:  # not cached: fall through to the error that says what to do
            pass
    raise ConfigError(_missing_model_dir(path, local, looks_like_repo_id, use))


def _missing_model_dir(path: str, local: Path, looks_like_repo_id: bool, use: str) -> str:
    """A typo of a local directory is the likelier mistake where the folder above it exists (`./models/qwen-7b`
    for `./models/Qwen-7B`): name the nearest directory there. A repo id that is not cached: how to fetch it."""
    if local.exists():
        return f"model path {path!r} is a file; name the directory that holds config.json, the tokenizer and weights"
    parent = local.parent
    if parent.is_dir():
        siblings = [child.name for child in parent.iterdir() if child.is_dir() and not child.name.startswith(".")]
        nearest = difflib.get_close_matches(local.name, siblings, n=1, cutoff=0.6)
        if nearest:
            return f"model path {path!r}: no such directory; did you mean {str(Path(path).with_name(nearest[0]))!r}?"
    if not looks_like_repo_id:
        missing_too = "" if parent.is_dir() else f" (nor is {str(Path(path).parent)!r})"
        return f"model path {path!r}: no such directory{missing_too}"
    local_dir = f"./models/{Path(path).name}"
    return (
        f"model path {path!r} is neither a local directory nor in the local Hugging Face cache, and xtune never "
        f"downloads: fetch it first (`hf download {path} --local-dir {local_dir}`), then {use.format(dir=local_dir)}"
    )


def checkpoint_model_type(path: str) -> str | None:
    """The model_type in a checkpoint's own config.json (before any conversion): it names the family."""
    config = resolve_model_dir(path) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.exists() else None
