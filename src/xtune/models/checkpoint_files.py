"""What a training checkpoint (checkpoint-N) holds that a model can be loaded from: the trainable parameters by their
names in the model (PEFT's for LoRA) in one safetensors file, and for a full fine-tune an index that makes the
checkpoint a model directory transformers loads as it is. Training writes checkpoints (xtune.train.checkpoint);
chat, merge and export read them through these names."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from xtune.config.schema import CONFIG_FILE
from xtune.templates import Template, resolve_template

STATE_FILE = "trainer_state.json"  # marks a training checkpoint
WEIGHTS_FILE = "trainable.safetensors"


def load_trainable(path: Path, model: torch.nn.Module, fix: str) -> None:
    """Load a checkpoint's trainable weights into `model`, whose trainable parameters must be exactly those saved."""
    weights = load_file(path / WEIGHTS_FILE)
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(
            f"{path}: checkpoint does not match this model/method (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); {fix}"
        )
    model.load_state_dict(weights, strict=False)


def write_weight_index(directory: Path, model: torch.nn.Module) -> None:
    """A full fine-tune's checkpoint holds every parameter in WEIGHTS_FILE: an index that names that file for each
    makes the checkpoint a model directory transformers loads as it is (with config.json), with no second copy."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, WEIGHTS_FILE)}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def trained_config(source: Path) -> dict:
    """The resolved config training wrote beside a model (final/, checkpoint-N, a merge); {} for other models."""
    return yaml.safe_load((source / CONFIG_FILE).read_text()) if (source / CONFIG_FILE).exists() else {}


def trained_template(
    source: Path, tokenizer: PreTrainedTokenizerBase, name: str | None = None, model_type: str | None = None
) -> Template:
    """The template `name`, else the one the model was trained with, else the family's (`auto`)."""
    recorded = (trained_config(source).get("data") or {}).get("template")
    return resolve_template(name or recorded or "auto", tokenizer, model_type)


def trained_system(source: Path) -> str | None:
    """The system prompt training's evaluation (or its data) used: chat's default."""
    trained = trained_config(source)
    return (trained.get("evaluation") or {}).get("system") or (trained.get("data") or {}).get("system")
