"""The training loss. This is where the loss is computed.

Only positions with a label are pushed through the output head: prompts, system text and padding never cost an
lm_head matmul, and full-vocabulary fp32 logits are never materialised for the whole batch. Chunks of trained
positions are checkpointed, so peak logits memory is one chunk's whatever the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from xtune.data.encode import IGNORE_INDEX
from xtune.errors import ConfigError
from xtune.models.load import causal_lm

CHUNK_TOKENS = 2048
POSITIONS_MULTIPLE = 256


def next_token_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, length): each position's target, the label of the token after it (IGNORE_INDEX after the last). A
    sequence-parallel shard brings its own (`shift_labels`, transformers' name), shifted before the row was cut."""
    if "shift_labels" in batch:
        return batch["shift_labels"]
    return F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """The positions a batch trains (what its loss sum is normalised by), sequence-parallel shards included."""
    return int((next_token_targets(batch) != IGNORE_INDEX).sum())


def count_trained_tokens(labels: torch.Tensor) -> int:
    return count_targets({"labels": labels})


def hidden_states(lm: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last hidden states of the CausalLM's base model (all but the head) on every input of `batch` but its
    labels: inputs a task adds (images, ...) reach the model as they are; the caller runs the head where it needs."""
    inputs = {name: value for name, value in batch.items() if name not in ("labels", "shift_labels")}
    return lm.base_model(**inputs, use_cache=False).last_hidden_state


def head_loss(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    """Summed cross-entropy of the output head on some positions' hidden states (logits in fp32)."""
    return F.cross_entropy(head_logits(head, hidden, softcap), targets, reduction="sum")


def head_logits(head: torch.nn.Module, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """The output head's logits in fp32, soft-capped where the model caps them (Gemma 2)."""
    logits = head(hidden).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def loss_sum(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], head_loss_fn: Callable[..., torch.Tensor] = head_loss
) -> torch.Tensor:
    """Sum of next-token cross-entropy over every trained position of the batch (fp32). `head_loss_fn`: head_loss
    or its compiled twin (training.compile)."""
    lm = causal_lm(model)
    hidden = hidden_states(lm, batch)
    targets = next_token_targets(batch).reshape(-1)
    positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    n_trained = positions.numel()
    # Round the number of positions up (the extra ones get ignored targets): logits of a few sizes rather than
    # a new size every step keep the allocator from fragmenting (peak RSS grew by GiBs over a run on CPU) and
    # a compiled head_loss from recompiling.
    padded = -(-n_trained // POSITIONS_MULTIPLE) * POSITIONS_MULTIPLE
    positions = F.pad(positions, (0, padded - n_trained))
    targets = targets[positions]
    targets[n_trained:] = IGNORE_INDEX
    hidden = hidden.reshape(-1, hidden.shape[-1])[positions]
    head = lm.get_output_embeddings()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if hidden.shape[0] <= CHUNK_TOKENS:
        return head_loss_fn(head, hidden, targets, softcap)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], CHUNK_TOKENS):
        end = start + CHUNK_TOKENS
        chunk = (head, hidden[start:end], targets[start:end], softcap)
        total = total + checkpoint(head_loss_fn, *chunk, use_reentrant=False)
    return total


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The decoder's list of layers, which training.compile compiles one by one; None where it has none."""
    layers = getattr(causal_lm(model).get_decoder(), "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def compile_decoder_layers(model: torch.nn.Module) -> None:
    """torch.compile each decoder layer in place (training.compile), as torchtune does: every layer has the same
    graph, so one compilation serves all, and the FSDP2 and DDP hooks around layers keep working. Norms, rotary
    embeddings, the MLP's activation and the LoRA branches fuse into a few kernels (1.7x per step on CPU for the
    small benchmark model with the compiled head_loss, benchmarks.md)."""
    layers = decoder_layers(model)
    if layers is None:
        decoder = type(causal_lm(model).get_decoder()).__name__
        raise ConfigError(f"training.compile: {decoder} has no `layers` list to compile; set training.compile: false")
    for layer in layers:
        layer.compile()
