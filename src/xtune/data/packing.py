"""Packing samples into rows of max_length, and the collator that builds batches.

Every batch carries `position_ids` that restart at each sample and no attention mask: transformers then builds
a block-diagonal causal mask (SDPA, eager) or cu_seqlens (flash-attention varlen), so packed samples never see
each other. Unpacked batches use the same path: each row is one sample followed by padding, and the padding
is a separate pseudo-sample whose labels are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from xtune.data.encode import IGNORE_INDEX, EncodedSample


@dataclass
class Row:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)

    def add(self, sample: EncodedSample) -> None:
        self.input_ids += sample.input_ids
        self.labels += sample.labels
        self.position_ids += range(len(sample.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(samples: Sequence[EncodedSample], max_length: int) -> list[Row]:
    """First-fit decreasing: long samples placed first, each into the first row with room. Samples are never
    split, so no sample is cut off from its own beginning."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids), reverse=True)
    rows: list[Row] = []
    free: list[int] = []  # room left in each row
    for i in order:
        n = len(samples[i].input_ids)
        slot = next((r for r, room in enumerate(free) if room >= n), None)
        if slot is None:
            rows.append(Row())
            free.append(max_length)
            slot = len(rows) - 1
        rows[slot].add(samples[i])
        free[slot] -= n
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


def collate(rows: Sequence[Row], pad_token_id: int) -> dict[str, torch.Tensor]:
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
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
