"""Sequence parallelism (training.sequence_parallel: N): the ranks split into groups of N consecutive ranks; the ranks
of a group train on the same micro-batches, each holding 1/N of every row's tokens, and attention is made whole by
an exchange between them (models/ulysses.py). The groups are the data-parallel units: rank r reads the micro-batches
of data rank r // N.

The loss needs nothing of its own: each rank sums the loss over its shard's targets and counts them, and the recipe
divides the sum over all ranks by the count over all ranks, as without it. Gradients are right with the engines'
average over the whole world (hence the recipe's * world size): a rank's gradient is its part of the group's, since
the exchange's backward carries each shard's share to the rank that holds it, so the group's gradient is the sum of
its ranks', and the world's average times its size is the sum over every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from xtune.config.schema import Config
from xtune.data.encode import IGNORE_INDEX
from xtune.errors import ConfigError
from xtune.models.load import causal_lm
from xtune.models.ulysses import use_ulysses_attention
from xtune.train.distributed import World
from xtune.train.loss import next_token_targets
from xtune.train.metrics import logger
from xtune.train.objectives import SFT, Objective

_GROUPS: dict[tuple[int, int], list[dist.ProcessGroup]] = {}  # new_group is collective: once per process and size


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place: `rank` in its group of `size`, which reads the micro-batches of `data_rank` of `data_size`."""

    size: int = 1
    rank: int = 0
    data_rank: int = 0
    data_size: int = 1
    group: dist.ProcessGroup | None = None

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's 1/N of each row: input ids, position ids and the next-token targets (`shift_labels`, as
        transformers names them), shifted before the cut, so a shard's last token is trained on the first token of
        the next shard. Rows are padded to a multiple of N first: the padding continues the last sample (its
        positions go on counting), so it is seen by nothing before it and, without targets, trains nothing."""
        if self.size == 1:
            return batch
        if unknown := set(batch) - {"input_ids", "labels", "position_ids"}:
            names = ", ".join(sorted(unknown))
            raise ConfigError(f"training.sequence_parallel: batches with {names} are not supported")
        input_ids, positions = batch["input_ids"], batch["position_ids"]
        targets = next_token_targets(batch)
        pad = -input_ids.shape[1] % self.size
        if pad:
            input_ids = F.pad(input_ids, (0, pad), value=0)
            targets = F.pad(targets, (0, pad), value=IGNORE_INDEX)
            positions = torch.cat([positions, positions[:, -1:] + torch.arange(1, pad + 1)], dim=1)
        whole = {"input_ids": input_ids, "position_ids": positions, "shift_labels": targets}
        return {name: t.chunk(self.size, dim=1)[self.rank].contiguous() for name, t in whole.items()}

    def attach(self, model: torch.nn.Module, max_length: int) -> None:
        """Make the model's decoder attend across the group (rows of up to `max_length` tokens)."""
        if self.size == 1:
            return
        config = causal_lm(model).get_decoder().config
        window, layer_types = getattr(config, "sliding_window", None), getattr(config, "layer_types", None)
        sliding = "sliding_attention" in layer_types if layer_types else getattr(config, "use_sliding_window", True)
        if window and sliding and window < max_length:  # the whole-row mask is causal over the whole row
            raise ConfigError(
                f"training.sequence_parallel {self.size}: {config.model_type} attends within a sliding window of "
                f"{window} tokens, which sequence parallelism does not keep; set data.max_length <= {window} or "
                "sequence_parallel: 1"
            )
        use_ulysses_attention(config, self.group)
        logger.info(
            f"sequence parallel: {self.data_size} group(s) of {self.size} ranks; each rank holds 1/{self.size} of "
            f"every row's tokens, attention exchanges heads ({config._attn_implementation})"
        )


def sequence_parallel(cfg: Config, world: World, objective: Objective) -> SequenceParallel:
    """The groups of training.sequence_parallel (a collective: every rank calls it), or the plain data-parallel world;
    what it cannot train is refused here, before anything is loaded."""
    n = cfg.training.sequence_parallel
    if n == 1:
        return SequenceParallel(data_rank=world.rank, data_size=world.size)
    key = f"training.sequence_parallel {n}"
    if world.size % n:
        raise ConfigError(
            f"{key}: {world.size} process(es) do not split into groups of {n}; run a multiple of {n} processes "
            f"(--nproc-per-node) or set a sequence_parallel that divides {world.size}"
        )
    if cfg.model.vision is not None:
        raise ConfigError(f"{key}: LLaVA (model.vision) is not supported with sequence parallelism; set it to 1")
    if not isinstance(objective, SFT):  # preference objectives score whole samples, which shards cut apart
        raise ConfigError(f"{key}: only the sft objective is supported with sequence parallelism")
    if cfg.training.compile is True:  # `auto` does not compile here (recipe._setup_compile)
        raise ConfigError(f"{key}: not supported with training.compile; set compile: false or auto")
    if (world.size, n) not in _GROUPS:
        _GROUPS[world.size, n] = [dist.new_group(list(range(g, g + n))) for g in range(0, world.size, n)]
    group = _GROUPS[world.size, n][world.rank // n]
    return SequenceParallel(n, world.rank % n, world.rank // n, world.size // n, group)
