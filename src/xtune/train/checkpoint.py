"""Resumable checkpoints, written atomically: a killed run resumes from its last checkpoint and loses nothing.

A checkpoint holds what a run needs to continue exactly: the trainable weights (the adapter for LoRA/QLoRA)
as safetensors, the optimizer state, the scheduler and step counters as JSON, and the RNG states. Its manifest,
written last, records every file's size and CRC-32, so that resume can tell a checkpoint a crash, a full disk or a
careless hand damaged from a good one, and fall back to the newest good one.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xtune.errors import ConfigError
from xtune.io import commit_directory, remove_stale_temporaries, write_atomically
from xtune.models.checkpoint_files import STATE_FILE, WEIGHTS_FILE, load_trainable

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
SHARDED_TMP_RE = re.compile(r"^\.checkpoint-\d+\.tmp$")  # one name for every rank's writes, so no PID in it
MANIFEST_FILE = "manifest.json"


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
    write_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint-`step` in `work_dir` and keep the newest `keep`. `write_files(directory)` adds small files
    (the tokenizer, adapter_config.json, ...) that make the checkpoint usable as final/ is; the manifest covers them."""

    def write(tmp: Path) -> None:
        save_file(trainable_state(model), tmp / WEIGHTS_FILE)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_file(rng_state(), tmp / "rng.safetensors")
        state = {"step": step, "scheduler": scheduler.state_dict(), **extra}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if write_files is not None:
            write_files(tmp)
        write_manifest(tmp)

    path = write_atomically(work_dir / f"checkpoint-{step}", write, needed_bytes=_checkpoint_bytes(work_dir))
    for old in list_checkpoints(work_dir)[:-keep]:
        shutil.rmtree(old)
    return path


def list_checkpoints(work_dir: Path) -> list[Path]:
    """Checkpoint directories, oldest first, whole or damaged (see latest_resumable)."""
    if not work_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in work_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_to_resume(work_dir: Path, resume: str | bool | None) -> tuple[Path | None, list[str]]:
    """The checkpoint `--resume` means, checked (None: start from scratch), and a line for each checkpoint skipped
    and why. `resume`: True, the newest whole checkpoint in `work_dir`, which must exist; "auto", the same or
    nothing; otherwise a checkpoint directory. Raises ConfigError when it cannot be honoured."""
    if not resume:
        return None, []
    if resume is True or resume == "auto":
        path, skipped = latest_resumable(work_dir)
        if path is None and not skipped and resume == "auto":
            return None, []
        if path is None:
            found = f"none of its {len(skipped)} checkpoint(s) is whole ({'; '.join(skipped)})" if skipped else ""
            raise ConfigError(
                f"--resume: {work_dir} has {found or 'no checkpoint'}; run without --resume to start again"
                + ("" if found else ", or pass --resume auto to resume where a checkpoint exists and start otherwise")
            )
        return path, skipped
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint directory; `--resume` alone takes the newest one")
    if problem := check_checkpoint(path):
        raise ConfigError(f"--resume {resume}: cannot resume from it: {problem}")
    return path, []


# What a run writes into its work dir besides its checkpoints, as globs: `--overwrite` removes these and nothing
# else, since a work dir may be a folder the user keeps other files in. base_model/ stays: it is rebuilt from the
# config (or reused when the parts it was assembled from are the same), never trained.
RUN_OUTPUTS = (
    "final",
    "metrics.jsonl",
    "eval_outputs_step_*.txt",
    "training_curve.png",
    "tensorboard",
    "train.log",
    "xtune_config.yaml",
    "deepspeed_config.json",
)


def previous_run(work_dir: Path) -> list[str]:
    """What in `work_dir` a run trained: its checkpoints, final/ and metrics.jsonl (empty: no run to lose). A run that
    stopped before its first step (bad input, a model that would not load) left nothing worth keeping."""
    found = [p.name for p in list_checkpoints(work_dir)[-1:]]
    found += [name for name in ("final", "metrics.jsonl") if (work_dir / name).exists()]
    return found


def check_no_previous_run(work_dir: Path, resume: str | bool | None, overwrite: bool) -> None:
    """Refuse to train over an earlier run without --resume or --overwrite: training would replace its metrics,
    its checkpoints one by one and its final/ without a word."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the work dir and --overwrite replaces it; pass one of them")
    if resume or overwrite or not (found := previous_run(work_dir)):
        return
    raise ConfigError(
        f"{work_dir} already holds a run ({', '.join(found)}); pass --resume to continue it, --overwrite to replace "
        "it, or --work-dir to train somewhere else"
    )


def remove_previous_run(work_dir: Path) -> list[str]:
    """--overwrite: remove what an earlier run wrote (RUN_OUTPUTS), and nothing else; the names removed."""
    removed = []
    for path in [*list_checkpoints(work_dir), *(p for pattern in RUN_OUTPUTS for p in sorted(work_dir.glob(pattern)))]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def latest_resumable(work_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that passes check_checkpoint, and a line for each newer one skipped and why."""
    skipped = []
    for path in reversed(list_checkpoints(work_dir)):
        problem = check_checkpoint(path)
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name}: {problem}")
    return None, skipped


# ------------------------------------------------------------------------------------------------- the manifest
def write_manifest(directory: Path) -> None:
    """Record the size and CRC-32 of every file written into `directory` (all ranks' files for sharded checkpoints);
    written last, so a checkpoint without it was never finished. CRC-32 detects torn or zeroed files, which is the
    damage to guard against, at 5.9 GB/s here against SHA-256's 1.3 GB/s (a 1.8B full fine-tune's checkpoint is
    ~21 GB)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "crc32": _crc32(p)} for p in files}
    (directory / MANIFEST_FILE).write_text(json.dumps({"files": entries}, indent=1))


def check_checkpoint(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from (a missing, truncated or changed file), or None."""
    try:
        entries = json.loads((path / MANIFEST_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (an unfinished write, or a checkpoint of an older xtune)"
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is damaged"
    for name, entry in entries.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if _crc32(file) != entry["crc32"]:
            return f"{name} does not have the content it was written with (CRC-32 differs)"
    return None


def _crc32(path: Path) -> int:
    # One reused buffer: a fresh 16 MiB bytes object per read is a fresh mapping whose pages fault in each time,
    # which made the manifest cost as much as the write itself (1.1 GB: 0.9 s).
    buffer = bytearray(16 << 20)
    view, crc = memoryview(buffer), 0
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return crc


def _checkpoint_bytes(work_dir: Path) -> int | None:
    """What the next checkpoint will take on disk: what the last one took (a full disk's error names it)."""
    found = list_checkpoints(work_dir)
    if not found:
        return None
    return sum(p.stat().st_size for p in found[-1].rglob("*") if p.is_file())


def remove_stale_writes(work_dir: Path) -> list[str]:
    """Clean up after checkpoint writers that died: call once at the start of a run, before it writes anything."""
    done = remove_stale_temporaries(work_dir)
    for entry in sorted(work_dir.glob(".checkpoint-*.tmp")) if work_dir.is_dir() else []:
        if SHARDED_TMP_RE.match(entry.name):
            shutil.rmtree(entry)
            done.append(f"removed {entry.name}")
    return done


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict:
    """Restore everything save_checkpoint wrote; returns the trainer state (step, ...)."""
    load_trainable(path, model, "resume with the config that wrote it")
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
        write_manifest(tmp)
        commit_directory(tmp, final)  # flushes every rank's files: one machine's processes share its page cache
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
