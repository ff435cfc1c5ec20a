"""Objectives: token_logps, what preference objectives compare, gives each sample of a packed or padded batch the
summed log-probabilities it has when run alone; sft's count and metrics are the recipe's token mean."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from xtune.data.encode import IGNORE_INDEX, EncodedSample
from xtune.data.packing import collate, pack, single_rows
from xtune.train.objectives import SFT, ObjectiveLoss, token_logps

from ..data.test_packing_isolation import tiny_llama


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama().eval()


def samples() -> list[EncodedSample]:
    """A prompt part then a trained part; every other sample trains its first token too, which only a neighbour
    in a packed row precedes, so it must not be scored."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for i, n in enumerate([23, 17, 9, 30, 5, 12]):
        ids = torch.randint(0, 97, (n,), generator=generator).tolist()
        labels = (
            ids[:1] + [IGNORE_INDEX] * (n // 3 - 1) + ids[n // 3 :]
            if i % 2
            else [IGNORE_INDEX] * (n // 3) + ids[n // 3 :]
        )
        out.append(EncodedSample(ids, labels))
    return out


def alone(model: LlamaForCausalLM, ids: list[int], labels: list[int]) -> float:
    """The reference: the sample in a forward of its own, scored from transformers' full logits."""
    with torch.no_grad():
        logps = model(input_ids=torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    targets = torch.tensor(labels[1:])
    trained = targets != IGNORE_INDEX
    return logps[trained].gather(1, targets[trained, None]).double().sum().item()


@pytest.mark.parametrize("layout", ["packed", "packed_flat", "padded"])
def test_token_logps_equal_each_sample_run_alone(model, layout):
    rows = single_rows(samples()) if layout == "padded" else pack(samples(), max_length=40)
    assert layout == "padded" or len(rows) < len(samples())  # something was packed together
    batch = collate(rows, pad_token_id=0, flatten=layout == "packed_flat")
    with torch.no_grad():
        have = token_logps(model, batch)
    want = []
    for row in rows:  # batch order: row by row, samples left to right
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        for start, end in zip(starts, [*starts[1:], len(row)], strict=True):
            want.append(alone(model, row.input_ids[start:end], row.labels[start:end]))
    assert have.dtype == torch.float32 and have.shape == (len(samples()),)
    assert (have - torch.tensor(want)).abs().max().item() < 1e-5


def test_sft_loss_module_sums_over_the_trained_tokens_it_counts(model):
    batch = collate(pack(samples(), max_length=40), pad_token_id=0)
    sft = SFT()
    with torch.no_grad():
        total = ObjectiveLoss(model, sft)(**batch).item()
        # no cache: with one, transformers does not derive the packed samples' mask from position_ids
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    targets = batch["labels"][:, 1:]
    n = sft.count(batch)
    assert n == int((targets != IGNORE_INDEX).sum())
    mean = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=-100)
    assert sft.metrics(total, n) == {"loss": pytest.approx(mean.item(), rel=1e-5), "trained_tokens": n}
