"""Merging a LoRA adapter into its base model and writing a plain Hugging Face directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import torch
import yaml

from xtune.errors import ConfigError
from xtune.io import write_atomically
from xtune.models.internlm2 import is_internlm2, read_config, save_as_internlm2
from xtune.models.load import load_for_inference, resolve_model_dir

CONFIG_FILE = "xtune_config.yaml"


def merge_adapter(
    base: str,
    adapter: str,
    out: str | Path,
    trust_remote_code: bool = False,
    max_shard_size: str = "5GB",
    save_format: Literal["hf", "original"] = "hf",
) -> Path:
    """Fold the adapter's low-rank updates into the base weights; `transformers` alone then loads OUT.
    `save_format="original"` writes InternLM2 bases back in their own layout (for LMDeploy and friends)."""
    base_dir = resolve_model_dir(base)
    original = read_config(base_dir) if save_format == "original" else None
    if original is not None and not is_internlm2(original):
        raise ConfigError(
            f"--save-format original is for InternLM2 bases; {base_dir} is a "
            f"{original.get('model_type')!r} model, whose standard layout is already its own"
        )
    model, tokenizer, source = load_for_inference(
        base, adapter=adapter, trust_remote_code=trust_remote_code, device=torch.device("cpu"), dtype="auto"
    )  # dtype auto: keep the checkpoint's
    merged = model.merge_and_unload()

    def write(tmp: Path) -> None:
        if original is not None:
            save_as_internlm2(merged, tmp, original)
        else:
            merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        if (source / CONFIG_FILE).exists():
            shutil.copy(source / CONFIG_FILE, tmp / CONFIG_FILE)
        (tmp / "README.md").write_text(model_card(base, adapter, source), encoding="utf-8")

    return write_atomically(Path(out), write)


def model_card(base: str, adapter: str, source: Path) -> str:
    """A short README.md for an exported model: where it came from and how it was trained."""
    trained = yaml.safe_load((source / CONFIG_FILE).read_text()) if (source / CONFIG_FILE).exists() else {}
    model, data = trained.get("model") or {}, trained.get("data") or {}
    datasets = ", ".join(f"`{d['path']}` ({d.get('format')})" for d in data.get("datasets") or []) or "unknown"
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "tags: [xtune]",
            "---",
            "",
            "# Fine-tuned with xtune",
            "",
            f"- Base model: `{base}`",
            f"- Adapter merged: `{adapter}`",
            f"- Method: {model.get('method', 'unknown')}"
            + (f" (LoRA r={model['lora']['r']}, alpha={model['lora']['alpha']})" if model.get("lora") else ""),
            f"- Data: {datasets}",
            f"- Chat template: `{data.get('template', 'unknown')}` (also saved as the tokenizer's `chat_template`)",
            "",
            "Load it with plain transformers:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(PATH)",
            "tokenizer = AutoTokenizer.from_pretrained(PATH)",
            "```",
            "",
        ]
    )
