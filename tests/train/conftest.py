"""Fixtures for training tests: small configs of the built-in tiny demo, runs of the recipe, and the environment of
`xtune` subprocesses (offline, tokenization cache in a temporary directory, one thread)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xtune_cache")


@pytest.fixture(scope="session")
def xtune_env(cache_dir) -> dict[str, str]:
    """Environment for `python -m xtune.cli` subprocesses. One thread: the tiny model gains nothing from more, and
    on a busy machine OpenMP threads spinning against other processes make runs several times slower."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", XTUNE_CACHE=str(cache_dir))
    env["HF_DATASETS_CACHE"] = str(cache_dir / "hf_datasets")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="session")
def xtune_cmd() -> list[str]:
    return [sys.executable, "-m", "xtune.cli"]

