"""Merging a LoRA adapter into its base model and writing a plain Hugging Face directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import torch
import yaml

from xtune.config.schema import CONFIG_FILE
from xtune.errors import ConfigError
from xtune.io import write_atomically
from xtune.models.checkpoint_files import STATE_FILE
from xtune.models.internlm2 import is_internlm2, read_config, save_as_internlm2
from xtune.models.llava import PROCESSOR_FILES, is_projector_dir, load_projector
from xtune.models.load import (
    ARGUMENT_USE,
    adapter_base_path,
    base_reference,
    load_for_inference,
    load_tokenizer,
    resolve_model_dir,
)


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
    base_dir = resolve_model_dir(base, ARGUMENT_USE)
    original = read_config(base_dir) if save_format == "original" else None
    if original is not None and not is_internlm2(original):
        raise ConfigError(
            f"--save-format original is for InternLM2 bases; {base_dir} is a "
            f"{original.get('model_type')!r} model, whose standard layout is already its own"
        )

    adapter_dir = resolve_model_dir(adapter, ARGUMENT_USE)
    if is_projector_dir(adapter_dir):  # LLaVA stage 1: a trained projector for the base, no adapter
        merged, _, _ = load_for_inference(base, trust_remote_code=trust_remote_code, device=torch.device("cpu"))
        load_projector(merged, adapter_dir)
        tokenizer, source = load_tokenizer(adapter_dir), adapter_dir
    else:
        model, tokenizer, source = load_for_inference(
            base, adapter=adapter, trust_remote_code=trust_remote_code, device=torch.device("cpu"), dtype="auto"
        )  # dtype auto: keep the checkpoint's
        merged = model.merge_and_unload()
    multimodal = merged.config.model_type == "llava"

    def write(tmp: Path) -> None:
        if original is not None:
            save_as_internlm2(merged, tmp, original)
        else:
            merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        for name in (CONFIG_FILE, *PROCESSOR_FILES):  # a LLaVA's processor files: AutoProcessor loads OUT
            if (source / name).exists():
                shutil.copy(source / name, tmp / name)
        (tmp / "README.md").write_text(model_card(base, adapter, source, multimodal), encoding="utf-8")

    return write_atomically(Path(out), write)


def export_checkpoint(checkpoint: str, out: str | Path, trust_remote_code: bool = False) -> Path:
    """Write a training checkpoint (checkpoint-N) as the run's final/ would be at that step: the PEFT adapter (or the
    full model), the tokenizer with the chat template, the config; a directory that needs no xtune to load
    (XTuner's `convert pth_to_hf`). Its adapter names the base by an absolute path unless OUT is in the same work
    dir."""
    from peft import PeftModel

    checkpoint_dir = resolve_model_dir(checkpoint, ARGUMENT_USE)
    if not (checkpoint_dir / STATE_FILE).is_file():
        raise ConfigError(
            f"{checkpoint_dir} is not a training checkpoint (no {STATE_FILE}); name a work dir's checkpoint-N"
        )
    model, tokenizer, source = load_for_inference(
        checkpoint, trust_remote_code=trust_remote_code, device=torch.device("cpu"), dtype="auto"
    )
    out = Path(out)

    def write(tmp: Path) -> None:
        if isinstance(model, PeftModel):
            base = base_reference(adapter_base_path(checkpoint_dir), out, checkpoint_dir.parent)  # as seen from OUT
            for adapter in model.peft_config.values():
                adapter.base_model_name_or_path = base
            model.save_pretrained(tmp, save_embedding_layers=False)  # as the recipe writes final/
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in (CONFIG_FILE, *PROCESSOR_FILES):
            if (source / name).exists():
                shutil.copy(source / name, tmp / name)

    return write_atomically(out, write)


def model_card(base: str, adapter: str, source: Path, multimodal: bool = False) -> str:
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
            *(
                [
                    "from transformers import AutoProcessor, LlavaForConditionalGeneration",
                    "model = LlavaForConditionalGeneration.from_pretrained(PATH)",
                    'processor = AutoProcessor.from_pretrained(PATH)  # prompts: "<image>\\n..." in the chat template',
                ]
                if multimodal
                else [
                    "from transformers import AutoModelForCausalLM, AutoTokenizer",
                    "model = AutoModelForCausalLM.from_pretrained(PATH)",
                    "tokenizer = AutoTokenizer.from_pretrained(PATH)",
                ]
            ),
            "```",
            "",
        ]
    )
