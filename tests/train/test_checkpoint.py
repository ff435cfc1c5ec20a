"""Checkpoints survive what a crash of the machine, a full disk or a careless hand leaves behind: each carries a
manifest that resume checks, resume falls back to the newest whole checkpoint and then trains exactly the steps an
undamaged run trains, files are flushed before and after their rename, a full disk names the directory and the
space needed and leaves the previous checkpoint whole, and a killed writer's leftovers are cleaned up."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from xtune.errors import ConfigError
from xtune.io import DiskFullError, remove_stale_temporaries, write_atomically
from xtune.train.checkpoint import (
    MANIFEST_FILE,
    check_checkpoint,
    checkpoint_to_resume,
    list_checkpoints,
    save_checkpoint,
)
from xtune.train.metrics import RunLog
from xtune.train.recipe import FinetuneRecipe

from .conftest import read_metrics, small_config


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero_the_middle(path: Path) -> None:
    """What a power loss can leave on some filesystems: the size is right, the blocks are zeros."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated trainable.safetensors": ("trainable.safetensors", truncate, "has"),
    "zeroed trainable.safetensors": ("trainable.safetensors", zero_the_middle, "CRC-32 differs"),
    "truncated optimizer.pt": ("optimizer.pt", truncate, "has"),
    "deleted optimizer.pt": ("optimizer.pt", Path.unlink, "optimizer.pt is missing"),
    "truncated rng.safetensors": ("rng.safetensors", truncate, "has"),
    "truncated trainer_state.json": ("trainer_state.json", truncate, "has"),
    "deleted manifest": (MANIFEST_FILE, Path.unlink, "no manifest.json"),
    "truncated manifest": (MANIFEST_FILE, truncate, "manifest.json is damaged"),
}


def tiny_state(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 256)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def save(work_dir: Path, step: int, keep: int = 10) -> Path:
    return save_checkpoint(work_dir, step, *tiny_state(step), extra={}, keep=keep)


@pytest.mark.parametrize("damage", DAMAGE)
def test_check_checkpoint_names_each_kind_of_damage(tmp_path, damage):
    path = save(tmp_path, 1)
    assert check_checkpoint(path) is None
    name, spoil, reason = DAMAGE[damage]
    spoil(path / name)
    problem = check_checkpoint(path)
    assert problem is not None and reason in problem and (name in problem or name == MANIFEST_FILE), problem


def test_resume_choice(tmp_path):
    work_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"has no checkpoint; .*--resume auto"):
        checkpoint_to_resume(work_dir, True)
    assert checkpoint_to_resume(work_dir, "auto") == (None, [])
    assert checkpoint_to_resume(work_dir, None) == (None, [])
    with pytest.raises(ConfigError, match=r"--resume .*nope: no such checkpoint directory"):
        checkpoint_to_resume(work_dir, str(tmp_path / "nope"))
    assert not work_dir.exists()

    first, second = save(work_dir, 2), save(work_dir, 4)
    assert checkpoint_to_resume(work_dir, True) == (second, [])
    truncate(second / "optimizer.pt")
    path, skipped = checkpoint_to_resume(work_dir, "auto")
    assert path == first and len(skipped) == 1 and skipped[0].startswith("checkpoint-4: optimizer.pt has")
    with pytest.raises(ConfigError, match=r"cannot resume from it: optimizer.pt has"):
        checkpoint_to_resume(work_dir, str(second))
    truncate(first / "rng.safetensors")
    for resume in (True, "auto"):  # checkpoints that all fail are never a reason to start over silently
        with pytest.raises(ConfigError, match=r"none of its 2 checkpoint\(s\) is whole \(checkpoint-4: .*checkpoint-2"):
            checkpoint_to_resume(work_dir, resume)


def test_files_and_directories_are_flushed_around_the_rename(tmp_path, monkeypatch):
    flushed = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = save(tmp_path, 1)
    tmp = tmp_path / f".checkpoint-1.tmp-{os.getpid()}"
    files = ["trainable.safetensors", "optimizer.pt", "rng.safetensors", "trainer_state.json", MANIFEST_FILE]
    assert sorted(p.name for p in path.iterdir()) == sorted(files)
    # each file and the directory before the rename (under the temporary name), the parent after it
    assert sorted(flushed[:-2]) == sorted(str(tmp / name) for name in files)
    assert flushed[-2:] == [str(tmp), str(tmp_path)]


def test_files_get_the_umask_permissions(tmp_path):
    previous = os.umask(0o027)
    try:
        path = save(tmp_path, 1)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    assert set(modes.values()) == {0o640}, modes  # safetensors creates 0600 files, torch.save 0644


def test_stale_temporaries_of_dead_writers_are_cleaned_up(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    for name in (f".checkpoint-3.tmp-{dead_pid}", f".checkpoint-6.tmp-{os.getpid()}", f".final.old-{dead_pid}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_text("x")
    (tmp_path / f".stats.json.tmp-{dead_pid}").write_text("{")
    done = remove_stale_temporaries(tmp_path)
    assert sorted(done) == sorted(
        [
            f"removed .checkpoint-3.tmp-{dead_pid}",
            f"restored final from .final.old-{dead_pid}",
            f"removed .stats.json.tmp-{dead_pid}",
        ]
    )
    # a live writer's directory stays; the version a killed writer had moved aside is back in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".checkpoint-6.tmp-{os.getpid()}", "final"])
    assert (tmp_path / "final" / "weights").read_text() == "x"


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs: a disk that really fills, so each library's own error for it is seen."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True)
    assert result.returncode == 0, f"this test mounts a tmpfs (root): {result.stderr.decode()}"
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


# Room for trainable.safetensors (257 KiB) or not: safetensors then reports the errno, torch.save only a position.
@pytest.mark.parametrize("room", [100 << 10, 400 << 10], ids=["safetensors fails", "torch.save fails"])
def test_a_full_disk_names_the_directory_and_keeps_the_last_checkpoint(small_disk, room):
    work_dir = small_disk / "run"
    first = save(work_dir, 2)
    checkpoint_bytes = sum(p.stat().st_size for p in first.iterdir())
    filler = shutil.disk_usage(small_disk).free - room
    (small_disk / "filler").write_bytes(bytes(filler))
    with pytest.raises(DiskFullError) as caught:
        save(work_dir, 4)
    message = str(caught.value)
    assert message.startswith(f"no space left in {work_dir} while writing checkpoint-4: it needs about ")
    assert f"about {checkpoint_bytes / 2**20:.1f} MiB" in message
    assert [p.name for p in work_dir.iterdir()] == ["checkpoint-2"]  # no temporary left behind
    assert check_checkpoint(first) is None

    # a file written whole-or-not says the same
    with pytest.raises(DiskFullError, match=rf"no space left in {small_disk} while writing big: "):
        write_atomically(small_disk / "big", lambda tmp: (tmp / "data").write_bytes(bytes(1 << 20)))


def test_a_cut_off_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    records = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1.0} for s in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "metrics.jsonl").write_text(text + text.splitlines()[2][:25])  # a 4th record, cut off
    xtune_logger = logging.getLogger("xtune")  # it does not propagate to pytest's handler once training set it up
    xtune_logger.addHandler(caplog.handler)
    try:
        log = RunLog(tmp_path, total_steps=10, start_step=3, console=Console(quiet=True))
    finally:
        xtune_logger.removeHandler(caplog.handler)
    assert log.history == records
    assert read_metrics(tmp_path) == records
    assert "metrics.jsonl:4: dropped a cut-off record" in caplog.text


# ----------------------------------------------------------------------------------- resume with the real recipe
STEPS = 8
SECTIONS = {
    "model": {"lora": {"dropout": 0.3}},  # the RNG state has to be restored
    "training": {"max_steps": STEPS, "batch_size": 2, "gradient_accumulation": 2},
    "saving": {"save_steps": 2, "save_total_limit": 10},
    "evaluation": {"inputs": []},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """An uninterrupted run with checkpoints at steps 2, 4 and 6."""
    work_dir = tmp_path_factory.mktemp("reference")
    recipe = FinetuneRecipe(small_config("lora", cache_dir, **SECTIONS), work_dir, device=torch.device("cpu"))
    recipe.setup()
    recipe.train()
    assert [p.name for p in list_checkpoints(work_dir)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    return work_dir


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_falls_back_to_the_newest_whole_checkpoint(reference, tmp_path, cache_dir, damage):
    """Checkpoint 6 is damaged, and the run died during step 7 after a half-written checkpoint: resume trains from
    checkpoint 4 and gives the uninterrupted run's losses for every step after it."""
    work_dir = tmp_path / "run"
    shutil.copytree(reference, work_dir, ignore=shutil.ignore_patterns("final"))
    name, spoil, reason = DAMAGE[damage]
    spoil(work_dir / "checkpoint-6" / name)
    metrics = (work_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (work_dir / "metrics.jsonl").write_text("".join(metrics[:6]) + metrics[6][:20])  # died writing step 7's line
    stale = work_dir / ".checkpoint-8.tmp-999999999"  # a pid no process has
    stale.mkdir()

    recipe = FinetuneRecipe(small_config("lora", cache_dir, **SECTIONS), work_dir, device=torch.device("cpu"))
    recipe.setup(resume=True)
    assert recipe.step == 4
    recipe.train()
    log = (work_dir / "train.log").read_text()
    assert f"--resume: skipping checkpoint-6: {'' if name == MANIFEST_FILE else name}" in log and reason in log
    assert "dropped a cut-off record" in log and "removed .checkpoint-8.tmp-999999999" in log
    assert not stale.exists()
    want, got = read_metrics(reference), read_metrics(work_dir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for expected, have in zip(want, got, strict=True):
        assert abs(have["loss"] - expected["loss"]) <= 1e-6, (have["step"], have["loss"], expected["loss"])
        assert abs(have["grad_norm"] - expected["grad_norm"]) <= 1e-6
    assert check_checkpoint(work_dir / "checkpoint-6") is None  # trained again and written whole


def test_resume_without_a_checkpoint_stops_before_writing_anything(tmp_path, cache_dir):
    work_dir = tmp_path / "fresh"
    recipe = FinetuneRecipe(small_config("lora", cache_dir, **SECTIONS), work_dir, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="has no checkpoint"):
        recipe.setup(resume=True)
    assert not work_dir.exists()


def test_overwrite_removes_the_earlier_runs_outputs_and_nothing_else(tmp_path, cache_dir):
    work_dir = tmp_path / "run"
    earlier = ["checkpoint-2/manifest.json", "final/adapter_config.json", "metrics.jsonl", "eval_outputs_step_0.txt"]
    earlier += ["training_curve.png", "tensorboard/events.out", "train.log", "xtune_config.yaml"]
    kept = ["notes.txt", "checkpoint-notes/plan.md"]  # the user's own files
    for name in [*earlier, *kept]:
        (work_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (work_dir / name).write_text("from before")
    recipe = FinetuneRecipe(small_config("lora", cache_dir, **SECTIONS), work_dir, device=torch.device("cpu"))
    recipe.setup(overwrite=True)
    assert not list_checkpoints(work_dir)
    for name in ("final", "metrics.jsonl", "eval_outputs_step_0.txt", "training_curve.png", "tensorboard"):
        assert not (work_dir / name).exists(), name
    assert all((work_dir / name).read_text() == "from before" for name in kept)
    log = (work_dir / "train.log").read_text()
    assert "from before" not in log and "--overwrite: removed the earlier run's checkpoint-2, final, " in log
    assert (work_dir / "xtune_config.yaml").read_text() != "from before"  # this run's


def test_a_run_that_stopped_before_training_is_not_a_run_to_protect(tmp_path, cache_dir):
    """A run refused while loading (a bad model path, say) left train.log and the config: training again just works."""
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    (work_dir / "train.log").write_text("an earlier attempt")
    (work_dir / "xtune_config.yaml").write_text("model: {}")
    recipe = FinetuneRecipe(small_config("lora", cache_dir, **SECTIONS), work_dir, device=torch.device("cpu"))
    recipe.setup()
    assert recipe.step == 0
    (work_dir / "metrics.jsonl").write_text("")  # now it has trained (or started to)
    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.jsonl\); pass --resume"):
        FinetuneRecipe(small_config("lora", cache_dir, **SECTIONS), work_dir, device=torch.device("cpu")).setup()
