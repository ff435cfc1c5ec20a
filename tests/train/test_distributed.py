"""Multi-process training over gloo on CPU: 2 processes reproduce the losses of 1 process with the same global
batch (the reference), and what they export loads and matches."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

COMMON = [
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
        *COMMON,
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
    return [json.loads(line)["loss"] for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, 900, (1, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    xtune_train("tiny_assistant_lora", root / "lora_single")
    xtune_train("tiny_assistant_lora", root / "lora_ddp", nproc=2)
    xtune_train("tiny_assistant_full", root / "full_single")
    xtune_train("tiny_assistant_full", root / "full_fsdp", "--fsdp", nproc=2)
    return root


def test_ddp_lora_reproduces_single_process_losses_and_adapter(runs):
    single, ddp = losses(runs / "lora_single"), losses(runs / "lora_ddp")
    assert len(ddp) == 4 and ddp == pytest.approx(single, abs=1e-4)
    assert single[0] != pytest.approx(single[-1], abs=1e-3)  # it trained
    outputs = []
    for name in ("lora_single", "lora_ddp"):
        base = AutoModelForCausalLM.from_pretrained(runs / name / "base_model")
        outputs.append(logits(PeftModel.from_pretrained(base, runs / name / "final"), IDS))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-4


def test_fsdp_full_reproduces_single_process_losses_and_exports_a_consolidated_model(runs):
    single, fsdp = losses(runs / "full_single"), losses(runs / "full_fsdp")
    assert len(fsdp) == 4 and fsdp == pytest.approx(single, abs=1e-4)
    exported = AutoModelForCausalLM.from_pretrained(runs / "full_fsdp" / "final")
    reference = AutoModelForCausalLM.from_pretrained(runs / "full_single" / "final")
    assert (logits(exported, IDS) - logits(reference, IDS)).abs().max() < 1e-4
    checkpoint = runs / "full_fsdp" / "checkpoint-2"
    assert (checkpoint / "sharded").is_dir() and json.loads((checkpoint / "trainer_state.json").read_text())[
        "world_size"
    ] == 2


def test_fsdp_resumes_from_its_sharded_checkpoint(runs, tmp_path):
    resumed = tmp_path / "resumed"
    xtune_train("tiny_assistant_full", resumed, "--fsdp", "--resume", str(runs / "full_fsdp" / "checkpoint-2"), nproc=2)
    assert losses(resumed) == pytest.approx(losses(runs / "full_fsdp")[2:], abs=1e-5)


def test_fsdp_with_lora_is_refused_clearly(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "xtune.cli",
        "train",
        "tiny_assistant_lora",
        "--work-dir",
        str(tmp_path),
        *COMMON,
        "--fsdp",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0 and "--fsdp supports method full" in result.stderr
