"""DeepSpeed ZeRO as a training engine: its config, the engine around xtune's loss module, checkpoints and export.

xtune keeps what decides the numbers: the loss (summed over trained tokens, divided by the global count), the
optimizer (torch's AdamW, handed to DeepSpeed as a client optimizer: no compiled op, the same numerics as DDP) and
the learning-rate schedule. DeepSpeed partitions optimizer states (ZeRO-1), gradients (ZeRO-2) and weights
(ZeRO-3) over the ranks, optionally offloads them to CPU memory, and clips gradients. Runs over nccl on GPUs and
over gloo on CPU (DS_ACCELERATOR=cpu; tested with `torchrun --nproc_per_node 2`).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from xtune.config.schema import DEEPSPEED_PRESETS, TrainingSettings
from xtune.errors import ConfigError

# Keys xtune derives from the training section: a JSON may leave them out or write "auto", as with HF's Trainer.
OWNED_KEYS = {
    "train_micro_batch_size_per_gpu": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation",
    "gradient_clipping": "max_grad_norm",
}


def load_deepspeed_config(training: TrainingSettings) -> dict[str, Any]:
    """The DeepSpeed config training.deepspeed names (built-in or a JSON file) with the keys xtune owns filled in."""
    choice = training.deepspeed
    if choice in DEEPSPEED_PRESETS:
        source = f"built-in {choice}"
        text = resources.files("xtune.config").joinpath("deepspeed", f"{choice}.json").read_text(encoding="utf-8")
    else:
        source = choice
        try:
            text = Path(choice).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"training.deepspeed: cannot read {choice}: {e.strerror}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"training.deepspeed: {source} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"training.deepspeed: {source} must hold a JSON object (a DeepSpeed config)")
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ConfigError(
                f"training.deepspeed: remove '{key}' from {source}; xtune sets the optimizer (AdamW with "
                "training.lr and training.weight_decay) and the schedule (training.lr_schedule, training.warmup_ratio)"
            )
    owned = {
        "train_micro_batch_size_per_gpu": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation,
        "gradient_clipping": training.max_grad_norm or 0.0,  # 0: DeepSpeed does not clip
    }
    for key, value in owned.items():
        if config.get(key, "auto") not in ("auto", value):
            raise ConfigError(
                f"training.deepspeed: {source} sets '{key}' to {config[key]!r}, but xtune takes it from "
                f'training.{OWNED_KEYS[key]} ({value}); remove it from the JSON or write "auto"'
            )
    if config.get("train_batch_size") == "auto":
        del config["train_batch_size"]  # DeepSpeed derives it: micro-batch x accumulation x world size
    config.update(owned)
    # DeepSpeed refuses ZeRO-Offload with a client optimizer unless told otherwise; xtune's AdamW is that optimizer.
    config.setdefault("zero_force_ds_cpu_optimizer", False)
    return config


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


INSTALL = "pip install 'xtune[deepspeed]'"


def check_installed(source: str) -> None:
    """Refuse the engine where DeepSpeed is not installed, without importing it (seconds): `source` is what asked
    for it (the flag or the config key)."""
    if find_spec("deepspeed") is None:
        raise ConfigError(f"{source} needs DeepSpeed, which is not installed: {INSTALL}")


def import_deepspeed():
    """deepspeed, set up for this machine; a clear message where it is not installed."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # gloo and CPU tensors; no GPU probing
    try:
        import deepspeed
        import deepspeed.ops
    except ImportError as e:
        raise ConfigError(f"--deepspeed needs DeepSpeed: {INSTALL} ({e})") from None
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce when it creates its communication
        # backend (35 s here, and it needs a C++ toolchain), used only by inference tensor parallelism: ZeRO's
        # collectives go through torch.distributed. Declare it unavailable, as DeepSpeed does off Linux.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def with_precision(config: dict[str, Any], module: torch.nn.Module) -> dict[str, Any]:
    """16-bit weights train as DeepSpeed's mixed precision (fp32 master weights in the partitioned optimizer) unless
    the JSON says otherwise; fp32 weights train in fp32, with xtune's autocast where training.mixed_precision asks."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    if dtype == torch.bfloat16:
        return {"bf16": {"enabled": True}, **config}
    if dtype == torch.float16:
        return {"fp16": {"enabled": True}, **config}
    return config


def initialize(module: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]):
    """The DeepSpeed engine around `module` (every training forward goes through it) with xtune's optimizer."""
    import torch.distributed as dist

    deepspeed = import_deepspeed()
    if not dist.is_initialized():
        # One process: DeepSpeed still wants a process group (ZeRO-Offload on a single GPU is a real use).
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(key, value)  # what torchrun would set, and DeepSpeed reads
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine


def save_shards(engine, directory: Path, trainable_only: bool) -> None:
    """DeepSpeed's own checkpoint (a collective: every rank writes its partition); `directory` also gets its
    `latest` file and zero_to_fp32.py, so DeepSpeed's tools work on it as on any DeepSpeed checkpoint."""
    engine.save_checkpoint(str(directory), tag="deepspeed", exclude_frozen_parameters=trainable_only)


def load_shards(engine, directory: Path, trainable_only: bool) -> None:
    # Frozen weights are not in a LoRA checkpoint: they come from the base model, as when the run started.
    path, _ = engine.load_checkpoint(str(directory), tag="deepspeed", load_module_strict=not trainable_only)
    if path is None:
        raise ConfigError(f"{directory}: no DeepSpeed checkpoint in it; resume with the engine that wrote it")


def consolidated_state_dict(engine, trainable_only: bool) -> dict[str, torch.Tensor] | None:
    """ZeRO-3's partitioned weights gathered layer by layer onto rank 0's CPU (a collective: call on every rank);
    None on the other ranks. Keys are those of the module the engine wraps."""
    # The helper HF's Trainer and Accelerate export with: it gathers one module at a time (peak memory of one layer
    # beyond the shards) and keeps tied weights tied.
    return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=trainable_only)
