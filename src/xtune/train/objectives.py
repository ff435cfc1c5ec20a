"""Training objectives: what the loss of a batch is. An objective gives, for each micro-batch, the loss summed over
what it trains and the count that sum is normalised by; the recipe divides the global window's sum by the global
count, so accumulation and the number of ranks change nothing. `sft`: next-token cross-entropy, the mean over
every trained token. Preference objectives build on token_logps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from xtune.data.encode import IGNORE_INDEX
from xtune.models.load import causal_lm
from xtune.train.loss import count_targets, head_logits, head_loss, hidden_states, loss_sum


class Objective(Protocol):
    def count(self, batch: dict[str, torch.Tensor]) -> int: ...

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def metrics(self, loss_sum: float, count: float) -> dict[str, float]: ...


class SFT:
    """Supervised fine-tuning: cross-entropy of every trained token, as one mean over the global window."""

    def __init__(self):
        self.head_loss = head_loss

    def compile(self) -> None:
        """training.compile: the head's matmul, the fp32 cast and the cross-entropy as fused kernels."""
        self.head_loss = torch.compile(head_loss)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """What the loss sum is normalised by: this micro-batch's trained tokens."""
        return count_targets(batch)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_sum(model, batch, self.head_loss)

    def metrics(self, loss_sum: float, count: float) -> dict[str, float]:
        """What to log for a window, from its loss sum and count over every rank."""
        return {"loss": loss_sum / max(count, 1), "trained_tokens": count}


OBJECTIVES: dict[str, Callable[..., Objective]] = {"sft": SFT}  # preference objectives join here


class ObjectiveLoss(torch.nn.Module):
    """The model with the objective's loss sum as its forward: data-parallel engines (DDP, FSDP2, DeepSpeed) hook a
    module's forward, so the loss is computed inside the module they wrap."""

    def __init__(self, model: torch.nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.objective.loss_sum(self.model, batch)


def token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probabilities of the trained tokens of each sample (fp32), one per sample with trained tokens,
    in batch order (row by row, left to right): what preference objectives compare. Samples packed into one row
    are told apart by their position ids, which restart at 0 for each; a sample's first token, which no token of
    its own precedes, is never scored. Padding is a pseudo-sample without trained tokens and drops out."""
    lm = causal_lm(model)
    hidden = hidden_states(lm, batch)[:, :-1]
    targets = batch["labels"][:, 1:]
    starts = batch["position_ids"] == 0
    trained = (targets != IGNORE_INDEX) & ~starts[:, 1:]
    # Every row begins a sample, so a running count of starts over the flattened rows numbers the samples.
    sample = (starts.reshape(-1).cumsum(0) - 1).reshape(starts.shape)[:, 1:][trained]
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    logits = head_logits(lm.get_output_embeddings(), hidden[trained], softcap)
    logps = -F.cross_entropy(logits, targets[trained], reduction="none")
    # Accumulated in fp64: an fp32 running sum of a long sample's terms drifts by many of its last digits.
    sums = logps.new_zeros(int(starts.sum()), dtype=torch.float64).index_add(0, sample, logps.double())
    return sums[torch.unique(sample)].float()
