"""Multi-process training on torch.distributed: process groups, data-parallel engines, launch.

Engines are driven directly (no accelerate): `ddp` wraps the loss module in DistributedDataParallel, `fsdp`
shards each decoder layer and the root with FSDP2's `fully_shard` (`deepspeed`: see deepspeed_engine.py). All run
over gloo on CPU (tested here with `torchrun --nproc_per_node 2`) and nccl on GPUs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world() -> World:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a single process gets World()."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    world = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)
    if world.size != size:
        raise RuntimeError(f"WORLD_SIZE={size} but the process group has {world.size} ranks")
    return world


def device_for(world: World) -> torch.device:
    return torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def all_reduce_sum(value: float, world: World) -> float:
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item())


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group (torchrun's, or the one-rank group DeepSpeed needs on one process) after the caller
    dropped its model and optimizer: gloo can hang at exit when DDP/FSDP/DeepSpeed state is freed late, so collect
    first."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, engine: str, world: World) -> torch.nn.Module:
    """The module each rank runs forward through, so the engine's hooks see every call."""
    if not world.distributed:
        return module
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [world.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(module, device_ids=device_ids)
    if engine == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # fully_shard keeps each rank's own slice of every tensor and, unlike DDP, broadcasts nothing: weights that
        # differ by rank would train as a patchwork of them. They do differ: rank 0 alone draws a random_init base
        # before LoRA's A matrices are drawn from the same RNG.
        broadcast_from_rank0(module)
        for layer in decoder_layers(module):
            fully_shard(layer)
        fully_shard(module)
        return module
    raise ValueError(f"unknown engine {engine!r}")


def broadcast_from_rank0(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers, as DDP does when it wraps a module."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks: the ModuleList holding the most modules of one class."""
    best: list[torch.nn.Module] = []
    for child in module.modules():
        is_stack = isinstance(child, torch.nn.ModuleList) and len({type(m) for m in child}) == 1
        if is_stack and len(child) > len(best):
            best = list(child)
    return best


def launch_command(
    nproc_per_node: int, nnodes: int, node_rank: int, master_addr: str, master_port: int, argv: list[str]
) -> list[str]:
    """torchrun re-running this same `xtune train` command in N processes per node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc_per_node}",
        f"--nnodes={nnodes}",
        f"--node_rank={node_rank}",
        f"--master_addr={master_addr}",
        f"--master_port={master_port}",
        "-m",
        "xtune.cli",
        *argv,
    ]


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first (filling caches, writing files); the others run it once it is done."""
    if not world.is_main:
        barrier(world)
    try:
        yield
    finally:
        if world.is_main:
            barrier(world)
