"""Packed samples must not see each other: per-sample logits and losses of a packed batch equal those of each
sample run alone (the reference: a plain unpacked forward)."""

import itertools
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from xtune.data.encode import IGNORE_INDEX, EncodedSample
from xtune.data.packing import collate, pack, single_rows
from xtune.models.load import causal_lm
from xtune.train.loss import loss_sum


def tiny_llama(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        max_position_embeddings=128,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config)


def random_samples(lengths: list[int]) -> list[EncodedSample]:
    generator = torch.Generator().manual_seed(1)
    samples = []
    for n in lengths:
        ids = torch.randint(0, 97, (n,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (n // 3) + ids[n // 3 :]  # a prompt part, then a trained part
        labels[0] = IGNORE_INDEX
        samples.append(EncodedSample(ids, labels))
    return samples


def hidden_logits(model, batch):
    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).last_hidden_state
    return lm.get_output_embeddings()(hidden)


@pytest.mark.parametrize("variant", ["sdpa", "eager", "gradient_checkpointing", "lora"])
def test_packed_logits_and_loss_equal_samples_run_alone(variant):
    model = tiny_llama("eager" if variant == "eager" else "sdpa")
    if variant == "gradient_checkpointing":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # checkpointing is active in training mode only; no dropout in this config
    if variant == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
        for name, p in model.named_parameters():  # make the adapter non-trivial
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    samples = random_samples([23, 17, 9, 30, 5, 12])
    rows = pack(samples, max_length=40)
    assert len(rows) < len(samples)  # something was actually packed together
    packed = collate(rows, pad_token_id=0)

    packed_logits = hidden_logits(model, packed)
    packed_loss = loss_sum(model, packed)
    reference_loss = 0.0
    checked = 0
    for row_index, row in enumerate(rows):
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        for start, end in zip(starts, [*starts[1:], len(row)], strict=True):
            ids = row.input_ids[start:end]
            alone = collate([type(row)(ids, row.labels[start:end], list(range(len(ids))))], pad_token_id=0)
            alone_logits = hidden_logits(model, alone)
            diff = (packed_logits[row_index, start:end] - alone_logits[0]).abs().max().item()
            assert diff < 1e-5, f"sample at row {row_index}[{start}:{end}] sees its neighbours ({diff})"
            reference_loss += loss_sum(model, alone).item()
            checked += 1
    assert checked == len(samples)
    assert abs(packed_loss.item() - reference_loss) < 1e-4 * max(1.0, abs(reference_loss))


def test_packing_without_restarting_positions_would_leak():
    """The isolation above comes from position_ids: the same row with continuous positions differs."""
    model = tiny_llama()
    samples = random_samples([10, 10])
    rows = pack(samples, max_length=20)
    assert len(rows) == 1 and rows[0].input_ids[10:] == samples[1].input_ids
    packed = collate(rows, pad_token_id=0)
    leaky = dict(packed, position_ids=torch.arange(20)[None])
    alone = collate(single_rows(samples[1:]), pad_token_id=0)
    good = (hidden_logits(model, packed)[0, 10:] - hidden_logits(model, alone)[0]).abs().max()
    bad = (hidden_logits(model, leaky)[0, 10:] - hidden_logits(model, alone)[0]).abs().max()
    assert good < 1e-5 < bad


def test_flat_batches_give_flash_attention_the_sample_boundaries():
    """Flash attention (GPU only) takes its varlen boundaries from position_ids, and only for a batch of one row:
    xtune flattens the batch for it. Checked here on CPU: transformers' own cu_seqlens for the flat batch are the
    sample boundaries, and the flat batch gives every sample the logits it has alone (SDPA, same position_ids)."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    from xtune.data.packing import needs_flat_batches

    samples = random_samples([23, 17, 9, 30, 5, 12])
    rows = pack(samples, max_length=40)
    flat = collate(rows, pad_token_id=0, flatten=True)
    total = sum(len(s.input_ids) for s in samples)
    assert flat["input_ids"].shape == (1, total) and (flat["labels"] != IGNORE_INDEX).sum() > 0
    assert _is_packed_sequence(flat["position_ids"], batch_size=1)
    (cu_seqlens, _), (max_length, _) = prepare_fa_kwargs_from_position_ids(flat["position_ids"])
    lengths = [len(r.input_ids[start:end]) for r in rows for start, end in _spans(r)]
    assert cu_seqlens.tolist() == [0, *itertools.accumulate(lengths)] and int(max_length) == 30
    # the multi-row batch would not be treated as packed by the flash path:
    assert not _is_packed_sequence(collate(rows, pad_token_id=0)["position_ids"], batch_size=len(rows))

    model = tiny_llama()
    flat_logits = hidden_logits(model, flat)[0]
    ids, positions = flat["input_ids"][0], flat["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0]
    for start, end in zip(starts, [*starts[1:], total], strict=True):
        alone = {"input_ids": ids[None, start:end], "position_ids": torch.arange(end - start)[None]}
        assert (flat_logits[start:end] - hidden_logits(model, alone)[0]).abs().max() < 1e-5
    unflattened = loss_sum(model, collate(rows, pad_token_id=0)).item()
    assert loss_sum(model, flat).item() == pytest.approx(unflattened, rel=1e-5)

    assert not needs_flat_batches(model)  # sdpa
    assert needs_flat_batches(SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2")))


def _spans(row) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(row.position_ids) if p == 0]
    return list(zip(starts, [*starts[1:], len(row.input_ids)], strict=True))
