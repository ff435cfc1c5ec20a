"""Packing samples into rows and collating rows into batches (data only; isolation in a model is tested in
test_packing_isolation.py)."""

import json
import random

import pytest
import torch

from xtune.config.schema import DatasetSettings, DataSettings
from xtune.data import build_training_data
from xtune.data.encode import IGNORE_INDEX, EncodedSample
from xtune.data.packing import Row, collate, fill_ratio, pack, single_rows


def make_samples(lengths):
    """Sample k holds ids (k, 0), (k, 1), ... encoded as k * 1000 + j, so every token says where it came from."""
    samples = []
    for k, n in enumerate(lengths):
        ids = [k * 1000 + j for j in range(n)]
        labels = [IGNORE_INDEX] + ids[1:]
        samples.append(EncodedSample(ids, labels))
    return samples


def split_row(row: Row):
    """The samples in a row, cut where position_ids restart at 0."""
    starts = [i for i, p in enumerate(row.position_ids) if p == 0]
    assert starts and starts[0] == 0
    return [(row.input_ids[a:b], row.labels[a:b]) for a, b in zip(starts, [*starts[1:], len(row)], strict=True)]


@pytest.mark.parametrize("seed", range(5))
def test_pack_keeps_every_sample_whole_once_within_max_length(seed):
    rng = random.Random(seed)
    max_length = 64
    lengths = [rng.randint(1, max_length) for _ in range(rng.randint(20, 60))]
    samples = make_samples(lengths)
    rows = pack(samples, max_length)

    assert all(0 < len(row) <= max_length for row in rows)
    found = [piece for row in rows for piece in split_row(row)]
    expected = [(s.input_ids, s.labels) for s in samples]
    assert sorted(found) == sorted(expected)  # each sample exactly once, unsplit, labels aligned with its ids
    for row in rows:
        assert len(row.labels) == len(row.position_ids) == len(row)
        for ids, _ in split_row(row):
            assert ids[0] % 1000 == 0  # a sample starts where its positions restart
        assert row.position_ids == [p for ids, _ in split_row(row) for p in range(len(ids))]
    # packing saves rows: never more than one row per sample, and at least the total size needs
    assert -(-sum(lengths) // max_length) <= len(rows) <= len(samples)


def test_pack_fills_rows_best_fit():
    rows = pack(make_samples([6, 4, 5, 5, 10, 3, 7]), max_length=10)
    assert sorted(len(r) for r in rows) == [10, 10, 10, 10]
    assert fill_ratio(rows, 10) == 1.0


def test_pack_puts_a_sample_of_max_length_alone():
    rows = pack(make_samples([8, 2, 8]), max_length=8)
    assert sorted(len(r) for r in rows) == [2, 8, 8]


def test_fill_ratio():
    rows = [Row(list(range(6)), [0] * 6, list(range(6))), Row(list(range(2)), [0] * 2, list(range(2)))]
    assert fill_ratio(rows, 10) == pytest.approx(8 / 20)
    assert fill_ratio([], 10) == 0.0


def test_single_rows_one_sample_each():
    samples = make_samples([3, 5])
    rows = single_rows(samples)
    assert [(r.input_ids, r.labels, r.position_ids) for r in rows] == [
        (s.input_ids, s.labels, list(range(len(s.input_ids)))) for s in samples
    ]


def test_collate_pads_ids_labels_and_restarts_positions():
    pad = 7
    rows = [Row([11, 12, 13, 14, 15], [-100, 12, 13, -100, 15], [0, 1, 2, 0, 1]), Row([21, 22], [-100, 22], [0, 1])]
    batch = collate(rows, pad_token_id=pad)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention mask: positions delimit samples
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["position_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[11, 12, 13, 14, 15], [21, 22, pad, pad, pad]]
    assert batch["labels"].tolist() == [[-100, 12, 13, -100, 15], [-100, 22, -100, -100, -100]]
    # the padding is its own pseudo-sample: its positions restart at 0
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]


def test_collate_uses_the_tokenizer_pad_id(tiny_tokenizer):
    rows = single_rows(make_samples([4, 1]))
    batch = collate(rows, pad_token_id=tiny_tokenizer.pad_token_id)
    assert tiny_tokenizer.convert_ids_to_tokens(batch["input_ids"][1, 1:].tolist()) == ["<|endoftext|>"] * 3


def test_build_training_data_packs_real_samples(tmp_path, tiny_tokenizer):
    records = [{"instruction": f"Question {i}" + " more" * (i % 7), "output": f"Answer {i}."} for i in range(30)]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    def build(pack_rows):
        data = DataSettings(
            datasets=[DatasetSettings(path=str(path))],
            template="qwen_chat",
            max_length=128,
            pack_to_max_length=pack_rows,
            cache=False,
        )
        return build_training_data(data, tiny_tokenizer)

    packed, unpacked = build(True), build(False)
    assert len(unpacked.rows) == 30 and unpacked.fill is None
    assert len(packed.rows) < 30 and packed.num_samples == 30
    assert all(len(row) <= 128 for row in packed.rows)
    assert packed.fill == pytest.approx(fill_ratio(packed.rows, 128)) and packed.fill > 0.5
    pieces = sorted(piece for row in packed.rows for piece in split_row(row))
    assert pieces == sorted((row.input_ids, row.labels) for row in unpacked.rows)
