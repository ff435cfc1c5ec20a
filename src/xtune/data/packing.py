"""Packing samples into rows of max_length, and the collator that builds batches.

Every batch carries `position_ids` that restart at each sample and no attention mask: transformers then builds
a block-diagonal causal mask (SDPA, eager) or cu_seqlens (flash-attention varlen), so packed samples never see
each other. Unpacked batches use the same path: each row is one sample followed by padding, and the padding
is a separate pseudo-sample whose labels are ignored.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from xtune.data.encode import IGNORE_INDEX, EncodedSample


@dataclass
class Row:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    # Each sample's reference log-probabilities, where an objective computed them before training (full-model DPO)
    reference_logps: list[float] = field(default_factory=list)
    desirable: list[bool] = field(default_factory=list)  # KTO: each sample's label, in order

    def add(self, sample: EncodedSample) -> None:
        self.input_ids += sample.input_ids
        self.labels += sample.labels
        for part in sample.part_slices():  # positions restart at each sequence (both of a preference pair)
            self.position_ids += range(part.stop - part.start)
        self.images += sample.images
        if sample.label is not None:
            self.desirable.append(sample.label)

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(samples: Sequence[EncodedSample], max_length: int) -> list[Row]:
    """Best-fit decreasing: longest samples first, each into the row whose free room fits it most tightly.
    Samples are never split, so no sample is cut off from its own beginning."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids), reverse=True)
    rows: list[Row] = []
    free: list[tuple[int, int]] = []  # (room left, row index), kept sorted for bisection
    for i in order:
        n = len(samples[i].input_ids)
        slot = bisect.bisect_left(free, (n, -1))
        if slot == len(free):
            rows.append(Row())
            room, row_index = max_length, len(rows) - 1
        else:
            room, row_index = free.pop(slot)
        rows[row_index].add(samples[i])
        if room - n > 0:
            bisect.insort(free, (room - n, row_index))
    return rows


def single_rows(samples: Sequence[EncodedSample]) -> list[Row]:
    rows = []
    for sample in samples:
        row = Row()
        row.add(sample)
        rows.append(row)
    return rows


def fill_ratio(rows: Sequence[Row], max_length: int) -> float:
    return sum(len(r) for r in rows) / (len(rows) * max_length) if rows else 0.0


def collate(rows: Sequence[Row], pad_token_id: int, flatten: bool = False) -> dict[str, torch.Tensor]:
    """A batch of rows padded to the longest; `flatten`: all rows end to end in one row of batch size 1, no padding.

    Flash-attention kernels need the flat form: transformers derives their varlen boundaries (cu_seqlens) from
    position_ids only for a batch of one, and would let the samples of a multi-row packed batch attend to each
    other. SDPA and eager isolate the samples in either form (a block-diagonal mask from position_ids)."""
    if flatten:
        rows = [_concatenated(rows)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        position_ids[i, :n] = torch.tensor(row.position_ids)
        position_ids[i, n:] = torch.arange(width - n)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if any(row.reference_logps for row in rows):  # in batch order, as token_logps gives the policy's
        batch["reference_logps"] = torch.tensor([x for row in rows for x in row.reference_logps])
    if any(row.desirable for row in rows):
        batch["desirable"] = torch.tensor([x for row in rows for x in row.desirable], dtype=torch.bool)
    return batch


def _concatenated(rows: Sequence[Row]) -> Row:
    flat = Row()
    for row in rows:
        flat.input_ids += row.input_ids
        flat.labels += row.labels
        flat.position_ids += row.position_ids
        flat.reference_logps += row.reference_logps
        flat.desirable += row.desirable
    return flat


def needs_flat_batches(model: torch.nn.Module) -> bool:
    """Whether the model attends with a varlen flash-attention kernel (see collate)."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return "flash" in implementation


def group_lengths(rows: Sequence[Row]) -> list[int]:
    """The lengths group_by_length sorts by. Where some rows have images, text-only rows count negative (the
    "modality length" of image-text training): sorted longest first, image rows and text rows then fall into separate
    batches."""
    if not any(r.images for r in rows):
        return [len(r) for r in rows]
    return [len(r) if r.images else -len(r) for r in rows]


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True, group_by_length: bool = False
) -> list[list[int]]:
    """Row indices of each batch of one epoch; a function of (seed, epoch) alone, so resuming mid-epoch
    replays the same order. Grouping by length sorts rows inside shuffled windows of 64 batches, then shuffles
    the batches: similar lengths share a batch (less padding) while the epoch order stays random."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist() if shuffle else list(range(len(lengths)))
    if group_by_length:
        window = batch_size * 64
        order = [
            i
            for w in range(0, len(order), window)
            for i in sorted(order[w : w + window], key=lambda i: lengths[i], reverse=True)
        ]
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    if group_by_length and shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches
