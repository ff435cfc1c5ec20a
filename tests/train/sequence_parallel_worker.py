"""Run by test_sequence_parallel.py under torchrun with 2 processes (and imported by it for the configs): each config
of CASES trained for 5 steps with sequence_parallel 2, one recipe after another in the same processes."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from xtune.config.presets import get_preset, merge
from xtune.config.schema import Config, validate_config
from xtune.train.distributed import shutdown
from xtune.train.recipe import FinetuneRecipe

# name: (method, packed, engine, gradient checkpointing): full and LoRA each packed and padded, on every engine
CASES = {
    "full_padded_ddp": ("full", False, "ddp", False),
    "full_packed_fsdp": ("full", True, "fsdp", True),
    "lora_padded_zero3": ("lora", False, "deepspeed", False),
    "lora_packed_ddp": ("lora", True, "ddp", True),
}


def case_config(name: str, sequence_parallel: int, cache_dir: Path) -> Config:
    method, packed, engine, checkpointing = CASES[name]
    update = {
        "model": {"gradient_checkpointing": checkpointing, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "data": {"max_length": 96, "pack_to_max_length": packed, "cache_dir": str(cache_dir)},
        # one data rank either way: the same global batch of 2 x 2 rows in one process or one group of 2
        "training": {"max_steps": 5, "batch_size": 2, "gradient_accumulation": 2, "log_every": 1},
        "evaluation": {"inputs": []},
        "saving": {"save_steps": 100},
    }
    if sequence_parallel == 1:  # the one-process reference: every engine computes the same there
        engine = "ddp"
    update["training"] |= {"engine": engine, "sequence_parallel": sequence_parallel, "mixed_precision": "fp32"}
    if engine == "deepspeed":
        update["training"]["deepspeed"] = "zero3"
    return validate_config(merge(get_preset(f"tiny_assistant_{method}"), update))


def train(cfg: Config, work_dir: Path) -> None:
    recipe = FinetuneRecipe(cfg, work_dir, device=torch.device("cpu"))
    recipe.setup()
    recipe.train()
    recipe.close()


if __name__ == "__main__":
    root, cache_dir = Path(sys.argv[1]), Path(sys.argv[2])
    for name in CASES:
        train(case_config(name, 2, cache_dir), root / name)
    shutdown()
