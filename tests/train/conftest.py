"""Fixtures for training tests: small configs of the built-in tiny demo, runs of the recipe, and multi-process runs
under torchrun compared with their one-process reference (the subprocess environment is in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

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


# ---------------------------------------------------------------------------------------------- multi-process runs
DIST_OVERRIDES = [
    "--set",
    "training.max_steps=4",
    "--set",
    "training.batch_size=2",
    "--set",
    "model.lora.dropout=0",
    "--set",
    "evaluation.inputs=[]",
    "--set",
    "training.mixed_precision=fp32",
    "--set",
    "saving.save_steps=2",
    "--set",
    "data.datasets.0.max_dataset_length=40",
]
IDS = torch.randint(0, 900, (1, 24), generator=torch.Generator().manual_seed(0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def xtune_train(preset: str, work_dir: Path, *extra: str, nproc: int = 1) -> None:
    accumulation = 2 // nproc  # the same global batch: 2 micro-batches per step
    cmd = [
        sys.executable,
        "-m",
        "xtune.cli",
        "train",
        preset,
        "--work-dir",
        str(work_dir),
        *DIST_OVERRIDES,
        "--set",
        f"training.gradient_accumulation={accumulation}",
        *extra,
    ]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc), "--master-port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(work_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(work_dir)]


def logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def load_base(base_dir: Path, quantized: bool) -> torch.nn.Module:
    """A base model as training loaded it: fp32, or 4-bit NF4 for QLoRA."""
    if not quantized:
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, quantization_config=quant, device_map={"": "cpu"}
    )
    # Compute with the kernel training uses: bitsandbytes would otherwise repack the weights on the first eval-mode
    # forward for a CPU inference kernel (AVX512-BF16) whose results differ by ~1e-2.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


@pytest.fixture(scope="session")
def single_process_run(tmp_path_factory):
    """The one-process reference for a preset, with the global batch of the 2-process runs; trained once per session
    for all the engines compared with it."""
    root = tmp_path_factory.mktemp("single")

    def run(preset: str) -> Path:
        work_dir = root / preset
        if not (work_dir / "final").exists():
            xtune_train(preset, work_dir)
        return work_dir

    return run
