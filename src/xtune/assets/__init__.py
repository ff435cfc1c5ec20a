"""Files shipped with xtune: the tiny demo model config and tokenizer, and the demo dataset."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
BUILTIN_PREFIX = "builtin:"


def resolve_path(path: str) -> Path:
    """`builtin:NAME` names a file under xtune/assets; anything else is a path on disk."""
    if path.startswith(BUILTIN_PREFIX):
        return ASSETS_DIR / path[len(BUILTIN_PREFIX) :]
    return Path(path).expanduser()
