"""Training engines: how the loss module and optimizer are wrapped, how a window's gradients become an update, and
how checkpoints and the final weights are written. The recipe picks one in setup and never asks which it has.

SingleEngine: one process, or DDP (replicas: rank 0 writes everything). FSDP2Engine: each rank holds a shard of
every weight (see distributed.wrap). DeepSpeedEngine: ZeRO partitions optimizer state, gradients or weights (see
deepspeed_engine.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from xtune.config.schema import TrainingSettings
from xtune.train import deepspeed_engine
from xtune.train.checkpoint import (
    full_state_dict,
    load_checkpoint,
    load_sharded_checkpoint,
    read_fsdp_shards,
    save_checkpoint,
    save_sharded_checkpoint,
    write_fsdp_shards,
)
from xtune.train.distributed import World, wrap

Scheduler = torch.optim.lr_scheduler.LRScheduler
WriteFiles = Callable[[Path], None]


class SingleEngine:
    """One process, or DDP. `trainable_only`: checkpoints and exports hold the trainable weights alone (adapters)."""

    shards_weights = False  # rank 0 holds every weight: it can generate and save alone
    data_parallel = "ddp"  # how distributed.wrap spreads the module over the ranks

    def __init__(self, training: TrainingSettings, world: World, trainable_only: bool):
        self.training, self.world, self.trainable_only = training, world, trainable_only

    def wrap(
        self,
        model: torch.nn.Module,
        loss_module: torch.nn.Module,
        make_optimizer: Callable[[], torch.optim.Optimizer],
        work_dir: Path,
    ) -> torch.nn.Module:
        """The module every training forward goes through; the optimizer comes after wrapping, so that it sees the
        parameters the engine trains (FSDP2 shards them in place)."""
        self.model = model
        self.module = wrap(loss_module, self.data_parallel, self.world)
        self.optimizer = make_optimizer()
        return self.module

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Clip, update and clear the gradients of the window just accumulated; the gradient norm before clipping."""
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.training.max_grad_norm or float("inf")
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)

    def save_checkpoint(
        self,
        work_dir: Path,
        step: int,
        scheduler: Scheduler,
        extra: dict,
        keep: int,
        write_files: WriteFiles,
    ) -> Path | None:
        """checkpoint-`step` (None on ranks that write nothing). `write_files`: see checkpoint.save_checkpoint."""
        if not self.world.is_main:  # DDP replicas are identical: rank 0 writes
            return None
        return save_checkpoint(
            work_dir, step, self.model, self.optimizer, scheduler, extra, keep, write_files=write_files
        )

    def load_checkpoint(self, path: Path, scheduler: Scheduler) -> dict:
        """Restore what save_checkpoint wrote; the trainer state (step, ...)."""
        return load_checkpoint(path, self.model, self.optimizer, scheduler)

    def gathered_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The weights to export, gathered from every rank (a collective: call on all ranks), keyed as the model's
        own; None where rank 0's model holds them already."""
        return None

    def close(self) -> None:
        """Release what the engine holds while the process group still exists."""


class FSDP2Engine(SingleEngine):
    """FSDP2: every rank takes part in checkpoints (its own shards) and in gathering weights for export."""

    shards_weights = True
    data_parallel = "fsdp"

    def save_checkpoint(
        self, work_dir: Path, step: int, scheduler: Scheduler, extra: dict, keep: int, write_files: WriteFiles
    ) -> Path:
        # Sharded checkpoints are for resuming only: no files that would make them usable as final/ is
        shards = partial(write_fsdp_shards, **self._shard_args())
        return save_sharded_checkpoint(work_dir, step, shards, scheduler, extra, keep, self.world.is_main)

    def load_checkpoint(self, path: Path, scheduler: Scheduler) -> dict:
        return load_sharded_checkpoint(path, partial(read_fsdp_shards, **self._shard_args()), scheduler)

    def _shard_args(self) -> dict:
        return {"module": self.module, "optimizer": self.optimizer, "trainable_only": self.trainable_only}

    def gathered_state_dict(self) -> dict[str, torch.Tensor]:
        return _model_keys(full_state_dict(self.module, trainable_only=self.trainable_only))


class DeepSpeedEngine(SingleEngine):
    """DeepSpeed ZeRO around the loss module and xtune's optimizer. Its config is read on construction, so that a
    bad one is refused before anything is loaded."""

    def __init__(self, training: TrainingSettings, world: World, trainable_only: bool):
        super().__init__(training, world, trainable_only)
        self.config = deepspeed_engine.load_deepspeed_config(training)
        self.shards_weights = deepspeed_engine.zero_stage(self.config) == 3
        self.engine = None

    def wrap(
        self,
        model: torch.nn.Module,
        loss_module: torch.nn.Module,
        make_optimizer: Callable[[], torch.optim.Optimizer],
        work_dir: Path,
    ) -> torch.nn.Module:
        self.model = model
        self.optimizer = make_optimizer()
        self.config = deepspeed_engine.with_precision(self.config, model)
        if self.world.is_main:  # what DeepSpeed ran with, for the record
            (work_dir / "deepspeed_config.json").write_text(json.dumps(self.config, indent=2))
        self.engine = self.module = deepspeed_engine.initialize(loss_module, self.optimizer, self.config)
        return self.module

    def backward(self, loss: torch.Tensor) -> None:
        # The loss is already normalised over the whole global window: no 1/accumulation from DeepSpeed. Its
        # step() counts micro-batches and updates the weights (clipping per its config) after the window's last.
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()  # it stepped in backward; None: an fp16 overflow skipped the step
        return float("nan") if norm is None else float(norm)

    def save_checkpoint(
        self, work_dir: Path, step: int, scheduler: Scheduler, extra: dict, keep: int, write_files: WriteFiles
    ) -> Path:
        shards = partial(deepspeed_engine.save_shards, self.engine, trainable_only=self.trainable_only)
        return save_sharded_checkpoint(work_dir, step, shards, scheduler, extra, keep, self.world.is_main)

    def load_checkpoint(self, path: Path, scheduler: Scheduler) -> dict:
        shards = partial(deepspeed_engine.load_shards, self.engine, trainable_only=self.trainable_only)
        return load_sharded_checkpoint(path, shards, scheduler)

    def gathered_state_dict(self) -> dict[str, torch.Tensor] | None:
        if not self.shards_weights:  # ZeRO-1/2 partition optimizer state and gradients, not weights
            return None
        gathered = deepspeed_engine.consolidated_state_dict(self.engine, trainable_only=self.trainable_only)
        return None if gathered is None else _model_keys(gathered)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.destroy()
            self.engine = self.module = None


def build_engine(training: TrainingSettings, world: World, trainable_only: bool) -> SingleEngine:
    """The engine training.engine names; FSDP2 on one process is the plain single-process engine."""
    if training.engine == "deepspeed":
        return DeepSpeedEngine(training, world, trainable_only)
    if training.engine == "fsdp" and world.distributed:
        return FSDP2Engine(training, world, trainable_only)
    return SingleEngine(training, world, trainable_only)


def _model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the loss module's state dict as the model's own (ObjectiveLoss holds the model as `model`)."""
    return {k.removeprefix("model."): v for k, v in state.items()}
