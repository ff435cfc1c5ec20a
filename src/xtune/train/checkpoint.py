"""Resumable checkpoints, written atomically: a killed run resumes from its last checkpoint and loses nothing.

A checkpoint holds what a run needs to continue exactly: the trainable weights (the adapter for LoRA/QLoRA)
as safetensors, the optimizer state, the scheduler and step counters as JSON, and the RNG states.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xtune.io import write_atomically

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    work_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict,
    keep: int,
) -> Path:
    def write(tmp: Path) -> None:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_file(rng_state(), tmp / "rng.safetensors")
        state = {"step": step, "scheduler": scheduler.state_dict(), **extra}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))

    path = write_atomically(work_dir / f"checkpoint-{step}", write)
    for old in list_checkpoints(work_dir)[:-keep]:
        shutil.rmtree(old)
    return path


def list_checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not work_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in work_dir.iterdir()
        if (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_FILE).exists()
    ]
    return [p for _, p in sorted(found)]


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict:
    """Restore everything save_checkpoint wrote; returns the trainer state (step, ...)."""
    weights = load_file(path / "trainable.safetensors")
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(
            f"{path}: checkpoint does not match this model/method (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); resume with the config that wrote it"
        )
    model.load_state_dict(weights, strict=False)
    # weights_only: the optimizer file holds tensors and numbers only; never unpickle arbitrary objects.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    state = json.loads((path / STATE_FILE).read_text())
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(load_file(path / "rng.safetensors"))
    return state


# ---------------------------------------------------------------------------------------------- FSDP2, DeepSpeed
def save_sharded_checkpoint(
    work_dir: Path,
    step: int,
    write_shards: Callable[[Path], None],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict,
    keep: int,
    is_main: bool,
) -> Path:
    """Each rank writes its shards with `write_shards(directory)` (the engine's own format) into a temporary
    directory; rank 0 adds the trainer state and renames it into place once every rank is done. Resumable on the
    same world size."""
    import torch.distributed as dist

    final = work_dir / f"checkpoint-{step}"
    tmp = work_dir / f".checkpoint-{step}.tmp"
    write_shards(tmp)
    save_file(rng_state(), tmp / f"rng-rank{dist.get_rank()}.safetensors")
    dist.barrier()
    if is_main:
        state = {"step": step, "scheduler": scheduler.state_dict(), "world_size": dist.get_world_size(), **extra}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(work_dir)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load_sharded_checkpoint(
    path: Path, read_shards: Callable[[Path], None], scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict:
    import torch.distributed as dist

    state = json.loads((path / STATE_FILE).read_text())
    if state.get("world_size") != dist.get_world_size():
        raise ValueError(
            f"{path} was written by {state.get('world_size')} processes; resume it with as many "
            f"(this run has {dist.get_world_size()})"
        )
    read_shards(path)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(load_file(path / f"rng-rank{dist.get_rank()}.safetensors"))
    return state


def fsdp_options(trainable_only: bool, **options):
    """What FSDP2 checkpoints hold: LoRA/QLoRA ones skip the frozen base, which every run loads from its files."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=trainable_only, **options)


def write_fsdp_shards(
    directory: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, trainable_only: bool = False
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(module, optimizer, options=fsdp_options(trainable_only))
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory / "sharded"))


def read_fsdp_shards(
    directory: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, trainable_only: bool = False
) -> None:
    """Load what write_fsdp_shards wrote; dcp.load fails on any parameter the checkpoint lacks (another method or
    model), so loading without the frozen base (strict=False) skips nothing else."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(module, optimizer, options=fsdp_options(trainable_only))
    target = {"model": model_state, "optimizer": optim_state}
    dcp.load(target, checkpoint_id=str(directory / "sharded"))
    set_state_dict(
        module,
        optimizer,
        model_state_dict=target["model"],
        optim_state_dict=target["optimizer"],
        options=fsdp_options(trainable_only, strict=not trainable_only),
    )


def full_state_dict(module: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights (the trainable ones alone with `trainable_only`) gathered from every rank (a collective:
    call on all ranks), on CPU."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    options = fsdp_options(trainable_only, full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)
