"""A run killed with SIGKILL and resumed with `xtune train --resume` continues exactly like a run that was never
interrupted: same per-step losses, one metrics record per step, the same final adapter. The setup makes the hard
parts matter: accumulation windows of two micro-batches that straddle epochs, LoRA dropout (the RNG state must be
restored), and evaluation generations between steps."""

from __future__ import annotations

import signal
import subprocess
import time
from subprocess import DEVNULL
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from xtune.train.checkpoint import list_checkpoints

from .conftest import read_metrics

STEPS, SAVE_STEPS = 14, 3
OVERRIDES = {
    "training.max_steps": STEPS,
    "training.batch_size": 2,
    "training.gradient_accumulation": 2,
    "training.log_every": 1,
    "model.lora.r": 8,
    "model.lora.dropout": 0.3,
    "data.max_length": 64,
    # 17 rows: 9 micro-batches an epoch, the last one short; windows of two straddle epochs, the resume point
    # (checkpoint-3: micro-batch 6) is mid-epoch, and the resumed run crosses two epoch boundaries.
    "data.datasets.0.max_dataset_length": 17,
    "data.cache": "false",  # the two first runs start together: keep them off each other's cache entry
    "saving.save_steps": SAVE_STEPS,
    "saving.save_total_limit": 2,
    "evaluation.freq": 2,
    "evaluation.max_new_tokens": 3,
    "evaluation.inputs": "[请介绍一下你自己]",
}


def train_cmd(xtune_cmd, work_dir, *extra):
    sets = [a for key, value in OVERRIDES.items() for a in ("--set", f"{key}={value}")]
    return [*xtune_cmd, "train", "tiny_assistant_lora", "--work-dir", str(work_dir), *sets, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, xtune_cmd, xtune_env):
    """An uninterrupted reference run, and a run SIGKILLed after its first checkpoint, then resumed."""
    tmp_path = tmp_path_factory.mktemp("resume")
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    logs = {name: tmp_path / f"{name}.stderr" for name in ("reference", "victim", "resumed")}
    with logs["reference"].open("w") as reference_err, logs["victim"].open("w") as victim_err:
        reference = subprocess.Popen(
            train_cmd(xtune_cmd, reference_dir), env=xtune_env, stdout=DEVNULL, stderr=reference_err
        )
        victim = subprocess.Popen(train_cmd(xtune_cmd, resumed_dir), env=xtune_env, stdout=DEVNULL, stderr=victim_err)
        try:
            # Kill as soon as the first checkpoint is complete (it appears by an atomic rename): 11 steps are left.
            deadline = time.monotonic() + 120
            while not (resumed_dir / f"checkpoint-{SAVE_STEPS}").is_dir():
                assert victim.poll() is None, logs["victim"].read_text()
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.005)
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(timeout=30) == -signal.SIGKILL
        finally:
            victim.kill()
            reference.wait(timeout=300)
    assert reference.returncode == 0, logs["reference"].read_text()
    assert not (resumed_dir / "final").exists()
    killed_steps = [r["step"] for r in read_metrics(resumed_dir)]
    assert killed_steps[:SAVE_STEPS] == [1, 2, 3] and max(killed_steps) < STEPS
    start = int(list_checkpoints(resumed_dir)[-1].name.split("-")[1])
    assert start in range(SAVE_STEPS, STEPS, SAVE_STEPS)

    with logs["resumed"].open("w") as resumed_err:
        resumed = subprocess.run(
            train_cmd(xtune_cmd, resumed_dir, "--resume"),
            env=xtune_env,
            stdout=DEVNULL,
            stderr=resumed_err,
            timeout=300,
        )
    assert resumed.returncode == 0, logs["resumed"].read_text()
    return SimpleNamespace(reference=reference_dir, resumed=resumed_dir, start=start)


def test_resumed_run_equals_uninterrupted_run(runs):
    expected, got = read_metrics(runs.reference), read_metrics(runs.resumed)
    assert [r["step"] for r in expected] == list(range(1, STEPS + 1))
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # the killed run's tail was dropped, not repeated
    # Steps after runs.start were computed by the resumed process: they differ with a wrong data position,
    # optimizer state, schedule or dropout RNG state.
    for want, have in zip(expected, got, strict=True):
        for key in ("loss", "grad_norm"):
            assert abs(have[key] - want[key]) <= 1e-6, (have["step"], key, have[key], want[key])
        assert (have["lr"], have["trained_tokens"]) == (want["lr"], want["trained_tokens"])

    want_adapter = load_file(runs.reference / "final" / "adapter_model.safetensors")
    have_adapter = load_file(runs.resumed / "final" / "adapter_model.safetensors")
    assert set(want_adapter) == set(have_adapter)
    for name, tensor in want_adapter.items():
        assert (have_adapter[name] - tensor).abs().max() <= 1e-6, name


def test_train_log_records_setup_and_resume(runs):
    """train.log is the record of a run: it says what data and model were trained, and where a run resumed."""
    reference_log = (runs.reference / "train.log").read_text(encoding="utf-8")
    assert "data: 17 samples" in reference_log
    assert "model: lora, " in reference_log
    resumed_log = (runs.resumed / "train.log").read_text(encoding="utf-8")
    assert f"resumed from {runs.resumed / f'checkpoint-{runs.start}'} at step {runs.start}" in resumed_log
