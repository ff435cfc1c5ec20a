"""Multi-process training over gloo on CPU: 2 processes reproduce the losses of 1 process with the same global
batch (the reference), and what they export loads and matches."""

import json
import subprocess
import sys

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from .conftest import DIST_OVERRIDES, free_port, load_base, logits, losses, xtune_train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_process_run):
    root = tmp_path_factory.mktemp("dist")
    xtune_train("tiny_assistant_lora", root / "lora_ddp", nproc=2)
    xtune_train("tiny_assistant_full", root / "full_fsdp", "--fsdp", nproc=2)
    return {
        "lora_single": single_process_run("tiny_assistant_lora"),
        "lora_ddp": root / "lora_ddp",
        "full_single": single_process_run("tiny_assistant_full"),
        "full_fsdp": root / "full_fsdp",
    }


def test_ddp_lora_reproduces_single_process_losses_and_adapter(runs):
    single, ddp = losses(runs["lora_single"]), losses(runs["lora_ddp"])
    assert len(ddp) == 4 and ddp == pytest.approx(single, abs=1e-4)
    assert single[0] != pytest.approx(single[-1], abs=1e-3)  # it trained
    outputs = []
    for name in ("lora_single", "lora_ddp"):
        base = load_base(runs[name] / "base_model", quantized=False)
        outputs.append(logits(PeftModel.from_pretrained(base, runs[name] / "final")))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-4


def test_fsdp_full_reproduces_single_process_losses_and_exports_a_consolidated_model(runs):
    single, fsdp = losses(runs["full_single"]), losses(runs["full_fsdp"])
    assert len(fsdp) == 4 and fsdp == pytest.approx(single, abs=1e-4)
    exported = AutoModelForCausalLM.from_pretrained(runs["full_fsdp"] / "final")
    reference = AutoModelForCausalLM.from_pretrained(runs["full_single"] / "final")
    assert (logits(exported) - logits(reference)).abs().max() < 1e-4
    checkpoint = runs["full_fsdp"] / "checkpoint-2"
    assert (checkpoint / "sharded").is_dir() and json.loads((checkpoint / "trainer_state.json").read_text())[
        "world_size"
    ] == 2


def test_fsdp_resumes_from_its_sharded_checkpoint(runs, tmp_path):
    resumed = tmp_path / "resumed"
    xtune_train("tiny_assistant_full", resumed, "--fsdp", "--resume", str(runs["full_fsdp"] / "checkpoint-2"), nproc=2)
    assert losses(resumed) == pytest.approx(losses(runs["full_fsdp"])[2:], abs=1e-5)


def test_fsdp_with_lora_is_refused_clearly(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "xtune.cli",
        "train",
        "tiny_assistant_lora",
        "--work-dir",
        str(tmp_path),
        *DIST_OVERRIDES,
        "--fsdp",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0 and "--fsdp supports method full" in result.stderr
