"""Merging a LoRA adapter into its base model and writing a plain Hugging Face directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from xtune.io import write_atomically
from xtune.models.load import load_for_inference

CARRIED_FILES = ("xtune_config.yaml",)


def merge_adapter(
    base: str, adapter: str, out: str | Path, trust_remote_code: bool = False, max_shard_size: str = "5GB"
) -> Path:
    """Fold the adapter's low-rank updates into the base weights; `transformers` alone then loads OUT."""
    model, tokenizer, source = load_for_inference(
        base, adapter=adapter, trust_remote_code=trust_remote_code, device=torch.device("cpu"), dtype="auto"
    )  # keep the checkpoint's dtype
    merged = model.merge_and_unload()

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        for name in CARRIED_FILES:
            if (source / name).exists():
                shutil.copy(source / name, tmp / name)

    return write_atomically(Path(out), write)
