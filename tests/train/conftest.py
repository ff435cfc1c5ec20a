"""Helpers for training tests: small configs of the built-in tiny demo and their metrics."""

from __future__ import annotations

import json
from pathlib import Path

from xtune.config.presets import get_preset, merge
from xtune.config.schema import Config, validate_config


def small_config(method: str, cache_dir: Path, **sections: dict) -> Config:
    """The tiny_assistant preset for `method`, shrunk to seconds: rank-8 LoRA, 4-row batches, short generations."""
    raw = merge(
        get_preset(f"tiny_assistant_{method}"),
        {
            "model": {"lora": {"r": 8, "alpha": 16}} if method != "full" else {},
            "data": {"max_length": 64, "cache_dir": str(cache_dir)},
            "training": {"max_steps": 22, "batch_size": 4, "log_every": 1},
            "saving": {"save_steps": 3, "save_total_limit": 2},
            "evaluation": {"inputs": ["请介绍一下你自己"], "freq": 5, "max_new_tokens": 4},
        },
        sections,
    )
    return validate_config(raw)


def read_metrics(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
