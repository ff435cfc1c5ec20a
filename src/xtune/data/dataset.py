"""Building the training rows for a config: load, map, template, tokenize, drop empty samples, pack."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from xtune.assets import resolve_path
from xtune.config.schema import DatasetSettings, DataSettings
from xtune.data.encode import EncodedSample, encode_batch, has_trained_tokens, sample_segments
from xtune.data.formats import RecordError, get_map_fn
from xtune.data.loading import load_records, record_location
from xtune.data.packing import Row, fill_ratio, pack, single_rows
from xtune.errors import DataError
from xtune.templates import get_template

ENCODE_BATCH = 512


@dataclass
class TrainingData:
    rows: list[Row]
    num_samples: int
    num_tokens: int
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0
    fill: float | None = None  # packed rows only

    def summary(self) -> str:
        parts = [f"{self.num_samples} samples", f"{self.num_tokens} tokens", f"{len(self.rows)} rows"]
        if self.fill is not None:
            parts.append(f"packing fill {self.fill:.1%}")
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        parts += [f"{n} dropped ({reason})" for reason, n in self.dropped.items()]
        return ", ".join(parts)


def iter_encoded(
    dataset: DatasetSettings, data: DataSettings, tokenizer: PreTrainedTokenizerBase
) -> Iterator[tuple[str, EncodedSample]]:
    """(location, encoded sample) for every record of one dataset, in file order."""
    path = resolve_path(dataset.path)
    map_fn = get_map_fn(dataset.format)
    template = get_template(data.template)
    records = load_records(path)
    batch: list[tuple[int, list]] = []

    def flush() -> Iterator[tuple[str, EncodedSample]]:
        encoded = encode_batch([segments for _, segments in batch], tokenizer, data.max_length)
        for (index, _), sample in zip(batch, encoded, strict=True):
            yield f"{path}#{index}", sample
        batch.clear()

    for index, record in enumerate(records):
        try:
            sample = map_fn(record)
            segments = sample_segments(sample, template, tokenizer, data.system)
        except (RecordError, KeyError, TypeError, ValueError) as e:
            key = getattr(e, "key", None) or (e.args[0] if isinstance(e, KeyError) else None)
            detail = f"missing key {key!r}" if isinstance(e, KeyError) else str(e)
            raise DataError(
                f"{record_location(path, index)}: {detail} (format {dataset.format!r}, "
                f"keys present: {', '.join(record) or 'none'}). Fix the record or choose the "
                "format that matches your data (`xtune list-dataset-format`)."
            ) from None
        batch.append((index, segments))
        if len(batch) >= ENCODE_BATCH:
            yield from flush()
    if batch:
        yield from flush()


def build_training_data(data: DataSettings, tokenizer: PreTrainedTokenizerBase) -> TrainingData:
    samples: list[EncodedSample] = []
    dropped: Counter = Counter()
    truncated = 0
    for dataset in data.datasets:
        for _, sample in iter_encoded(dataset, data, tokenizer):
            if not has_trained_tokens(sample):
                dropped["nothing to train within max_length" if sample.truncated else "nothing to train"] += 1
                continue
            truncated += sample.truncated
            samples.append(sample)
    if not samples:
        raise DataError(
            "no sample has anything to train on: check the datasets' format and data.max_length "
            f"({data.max_length}); dropped: {dict(dropped)}"
        )
    rows = pack(samples, data.max_length) if data.pack_to_max_length else single_rows(samples)
    return TrainingData(
        rows=rows,
        num_samples=len(samples),
        num_tokens=sum(len(s.input_ids) for s in samples),
        dropped=dropped,
        truncated=truncated,
        fill=fill_ratio(rows, data.max_length) if data.pack_to_max_length else None,
    )
