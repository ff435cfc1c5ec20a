"""The training loss. This is where the loss is computed.

Only positions with a label are pushed through the output head: prompts, system text and padding never cost an
lm_head matmul, and full-vocabulary fp32 logits are never materialised for the whole batch. Chunks of trained
positions are checkpointed, so peak logits memory is one chunk's whatever the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from xtune.data.encode import IGNORE_INDEX

CHUNK_TOKENS = 2048
POSITIONS_MULTIPLE = 256


def causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers CausalLM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def count_trained_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropy over every trained position of the batch (fp32)."""
    lm = causal_lm(model)
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if batch.get("pixel_values") is not None:  # LLaVA: the image features take the image tokens' places
        hidden = lm.model(pixel_values=batch["pixel_values"], **inputs).last_hidden_state
    else:
        hidden = lm.get_decoder()(**inputs).last_hidden_state
    targets = batch["labels"][:, 1:].reshape(-1)
    positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    n_trained = positions.numel()
    # Round the number of positions up (the extra ones get ignored targets): logits of a few sizes rather than
    # a new size every step keep the allocator from fragmenting (peak RSS grew by GiBs over a run on CPU).
    padded = -(-n_trained // POSITIONS_MULTIPLE) * POSITIONS_MULTIPLE
    positions = F.pad(positions, (0, padded - n_trained))
    targets = targets[positions]
    targets[n_trained:] = IGNORE_INDEX
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])[positions]
    head = lm.get_output_embeddings()
    softcap = getattr(lm.config, "final_logit_softcapping", None)

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return F.cross_entropy(logits, t, reduction="sum")

    if hidden.shape[0] <= CHUNK_TOKENS:
        return chunk_loss(hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], CHUNK_TOKENS):
        end = start + CHUNK_TOKENS
        total = total + checkpoint(chunk_loss, hidden[start:end], targets[start:end], use_reentrant=False)
    return total


class CausalLMLoss(torch.nn.Module):
    """The model with `loss_sum` as its forward: data-parallel engines (DDP, FSDP2) hook a module's forward,
    so the loss is computed inside the module they wrap."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "pixel_values": pixel_values}
        return loss_sum(self.model, batch)
