"""Building the training rows for a config: load, map, template, tokenize (cached), mix, pack."""

from __future__ import annotations

import hashlib
import inspect
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

import xtune
from xtune.assets import resolve_path
from xtune.config.schema import DatasetSettings, DataSettings
from xtune.data.encode import (
    EncodedSample,
    encode_batch,
    has_trained_tokens,
    joined,
    sample_segment_lists,
    with_kl_replies,
)
from xtune.data.formats import MapFn, RecordError, get_map_fn
from xtune.data.loading import load_records, record_locator
from xtune.data.packing import Row, fill_ratio, pack, single_rows
from xtune.errors import DataError
from xtune.io import user_cache_dir, write_atomically, write_text_atomically
from xtune.templates import Template, resolve_template

ENCODE_BATCH = 1024
NO_ASSISTANT_TURN = "no assistant turn"


class BadRecord(DataError):
    """A record that cannot be used, at `location` (file:line); records with the same fault share `problem`, so a
    report can group them."""

    def __init__(self, location: str, problem: str):
        super().__init__(f"{location}: {problem}")
        self.location, self.problem = location, problem


def untrained_reason(sample: EncodedSample) -> str | None:
    """Why an encoded sample trains nothing (it is skipped and counted under this reason), or None."""
    if has_trained_tokens(sample):
        return None
    if sample.parts:  # a pair whose reply was cut off entirely: never trained with an empty response
        return "a reply truncated away within max_length" if sample.truncated else "a reply with nothing to train"
    return "nothing to train within max_length" if sample.truncated else "nothing to train"


def nothing_to_train_error(path: str, dropped: Counter, data: DataSettings) -> DataError:
    """A dataset none of whose records trains anything: a mistake (the wrong format, a max_length too short),
    never a dataset worth training on."""
    reasons = ", ".join(f"{reason}: {n}" for reason, n in dropped.most_common())
    fix = "check that data.datasets[].format matches the records"
    if any("max_length" in reason for reason in dropped):
        fix += f" and that data.max_length ({data.max_length}) leaves room for the replies"
    return DataError(
        f"{path}: no record has anything to train ({reasons}); {fix} "
        "(`xtune check-dataset` lists the records with file:line)"
    )


@dataclass
class DatasetStats:
    samples: int = 0
    tokens: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    from_cache: bool = False


@dataclass
class TrainingData:
    rows: list[Row]
    stats: dict[str, DatasetStats]  # per dataset path
    max_length: int
    packed: bool
    pairs: bool = False  # preference pairs (chosen and rejected) rather than single samples
    labelled: bool = False  # KTO's labelled samples, each with its KL sequence (pairs too: two sequences each)

    @property
    def kind(self) -> str:
        """What the samples are: conversations, pairs (chosen and rejected) or labelled (KTO's)."""
        return "labelled" if self.labelled else "pairs" if self.pairs else "conversations"

    @property
    def num_samples(self) -> int:
        return sum(len([p for p in r.position_ids if p == 0]) for r in self.rows)

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.rows)

    @property
    def dropped(self) -> Counter:
        return sum((s.dropped for s in self.stats.values()), Counter())

    @property
    def truncated(self) -> int:
        return sum(s.truncated for s in self.stats.values())

    @property
    def fill(self) -> float | None:
        return fill_ratio(self.rows, self.max_length) if self.packed else None

    def summary(self) -> str:
        if self.labelled:
            samples = f"{self.num_samples // 2} labelled samples"
        else:
            samples = f"{self.num_samples // 2} pairs" if self.pairs else f"{self.num_samples} samples"
        parts = [samples, f"{self.num_tokens} tokens", f"{len(self.rows)} rows"]
        if self.fill is not None:
            parts.append(f"packing fill {self.fill:.1%}")
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        parts += [f"{n} dropped ({reason})" for reason, n in self.dropped.items()]
        cached = [Path(p).name for p, s in self.stats.items() if s.from_cache]
        if cached:
            parts.append(f"from cache: {', '.join(cached)}")
        return ", ".join(parts)


class _RecordEncoder:
    """Map, template and tokenize a batch of records (columns, as `datasets` hands them), in this process or in a
    `datasets.map` worker. A bad record becomes an error message in its row rather than an exception, so the
    caller reports the first one in file order, wherever it was found, with its file:line; a record the map
    function marks skippable, or a conversation without an assistant turn (nothing to train), gets its skip
    reason instead."""

    def __init__(
        self,
        dataset: DatasetSettings,
        data: DataSettings,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        map_fn: MapFn | None = None,
    ):
        self.path, self.format = resolve_path(dataset.path), dataset.format
        self.map_fn = map_fn or get_map_fn(dataset.format)
        self.template, self.tokenizer, self.max_length = template, tokenizer, data.max_length
        self.system = dataset.system if dataset.system is not None else data.system

    def __call__(self, columns: dict[str, list]) -> dict[str, list]:
        records = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        n = len(records)
        out: dict[str, list] = {"input_ids": [[]] * n, "labels": [[]] * n, "truncated": [False] * n}
        out.update(images=[[]] * n, error=[""] * n, skip=[""] * n, parts=[[]] * n, label=[None] * n)
        mapped = {row: self._guarded(out, row, record, self.map_fn, record) for row, record in enumerate(records)}
        mapped = {row: m for row, m in mapped.items() if m is not None}
        for row, sample in list(mapped.items()):
            if "messages" in sample and not any(m.get("role") == "assistant" for m in sample["messages"]):
                out["skip"][row] = NO_ASSISTANT_TURN
                del mapped[row]
        labelled = [row for row, sample in mapped.items() if "label" in sample]  # KTO: pair each with its KL sequence
        mapped.update(zip(labelled, with_kl_replies([mapped[row] for row in labelled]), strict=True))
        good = []
        for row, sample in mapped.items():
            render = sample_segment_lists
            lists = self._guarded(out, row, records[row], render, sample, self.template, self.tokenizer, self.system)
            if lists is not None:
                good.append((row, lists))
                out["images"][row], out["label"][row] = sample.get("images", []), sample.get("label")
        flat = [segments for _, lists in good for segments in lists]
        encoded = iter(encode_batch(flat, self.tokenizer, self.max_length) if flat else [])
        for row, lists in good:
            sample = joined([next(encoded) for _ in lists])
            out["input_ids"][row], out["labels"][row], out["truncated"][row] = (
                sample.input_ids,
                sample.labels,
                sample.truncated,
            )
            out["parts"][row] = sample.parts
        return out

    def _guarded(self, out: dict[str, list], row: int, record: dict, step: Callable, *args: Any) -> Any:
        """step(*args), or None where it fails on a bad record: its error message (or skip reason) goes in `out`."""
        try:
            return step(*args)
        except (RecordError, KeyError, TypeError, ValueError) as e:
            if getattr(e, "skip_reason", None):
                out["skip"][row] = e.skip_reason
                return None
            key = getattr(e, "key", None) or (e.args[0] if isinstance(e, KeyError) else None)
            detail = f"missing key {key!r}" if isinstance(e, KeyError) else str(e)
            out["error"][row] = (
                f"{detail} (format {self.format!r}, keys present: {', '.join(record) or 'none'}). Fix the record "
                "or choose the format that matches your data (`xtune list-dataset-format`)."
            )
            return None


def encode_records(
    dataset: DatasetSettings,
    data: DataSettings,
    tokenizer: PreTrainedTokenizerBase,
    template: Template | None = None,
    on_error: Callable[[BadRecord], None] | None = None,
    map_fn: MapFn | None = None,
    on_skip: Callable[[str, int], None] | None = None,
) -> Iterator[tuple[int, EncodedSample]]:
    """(record index, encoded sample) for every record of one dataset, in file order. A bad record raises a
    BadRecord naming file, line and key, or, with `on_error`, is reported there and skipped. `map_fn` replaces
    the dataset's format (formats that need settings, such as xtune.multimodal's); a record it marks skippable,
    or one with no assistant turn, is dropped and its reason and index passed to `on_skip`.

    With several workers (data.num_proc) the records are encoded by `datasets.map` in worker processes first;
    in one process they are encoded lazily, batch by batch, so a preview of the first samples stays quick."""
    template = template or resolve_template(data.template, tokenizer)
    encoder = _RecordEncoder(dataset, data, tokenizer, template, map_fn)
    records = load_records(encoder.path)
    locate = record_locator(encoder.path)
    workers = data.num_proc or 1
    if workers > 1:
        encoded = records.map(
            encoder,
            batched=True,
            batch_size=ENCODE_BATCH,
            num_proc=workers,
            remove_columns=records.column_names,
            keep_in_memory=True,  # xtune's own cache keeps the result; no second copy in ~/.cache/huggingface
            new_fingerprint=uuid.uuid4().hex,  # not a hash of the encoder: hashing the tokenizer is slow
            desc=f"tokenizing {encoder.path.name} ({workers} processes)",
        )
        batches = (encoded[start : start + ENCODE_BATCH] for start in range(0, len(encoded), ENCODE_BATCH))
    else:
        batches = (encoder(records[start : start + ENCODE_BATCH]) for start in range(0, len(records), ENCODE_BATCH))
    index = 0
    for columns in batches:
        fields = ("input_ids", "labels", "truncated", "images", "error", "skip", "parts", "label")
        for ids, labels, truncated, images, error, skip, parts, label in zip(
            *(columns[k] for k in fields), strict=True
        ):
            if skip:
                if on_skip is not None:
                    on_skip(skip, index)
            elif error:
                if on_error is None:
                    raise BadRecord(locate(index), error)
                on_error(BadRecord(locate(index), error))
            else:
                yield index, EncodedSample(ids, labels, truncated, images, parts, label)
            index += 1


def tokenized_dataset(
    dataset: DatasetSettings,
    data: DataSettings,
    tokenizer: PreTrainedTokenizerBase,
    template: Template | None = None,
    map_fn: MapFn | None = None,
) -> tuple[list[EncodedSample], DatasetStats]:
    """The encoded samples of one dataset that have something to train on, from the on-disk cache when the
    data, tokenizer, template and options are unchanged."""
    template = template or resolve_template(data.template, tokenizer)
    cache = _cache_path(dataset, data, tokenizer, template, map_fn) if data.cache else None
    if cache is not None and (cache / "stats.json").exists():
        stats_raw = json.loads((cache / "stats.json").read_text())
        columns = datasets.load_from_disk(str(cache / "samples")).to_dict()
        images = columns.get("images") or [[] for _ in columns["input_ids"]]
        parts = columns.get("parts") or [[] for _ in columns["input_ids"]]
        kto_labels = columns.get("label") or [None for _ in columns["input_ids"]]
        rows = zip(
            columns["input_ids"], columns["labels"], columns["truncated"], images, parts, kto_labels, strict=True
        )
        samples = [EncodedSample(i, lab, t, list(im), list(p), k) for i, lab, t, im, p, k in rows]
        stats = DatasetStats(
            stats_raw["samples"],
            stats_raw["tokens"],
            stats_raw["truncated"],
            Counter(stats_raw["dropped"]),
            from_cache=True,
        )
        return samples, stats

    samples, stats = [], DatasetStats()

    def count_skipped(reason: str, index: int) -> None:
        stats.dropped[reason] += 1

    for _, sample in encode_records(dataset, data, tokenizer, template, map_fn=map_fn, on_skip=count_skipped):
        reason = untrained_reason(sample)
        if reason:
            stats.dropped[reason] += 1
            continue
        stats.truncated += sample.truncated
        stats.tokens += len(sample.input_ids)
        samples.append(sample)
    stats.samples = len(samples)
    if not samples and stats.dropped:  # before the cache, so that a refused dataset leaves nothing behind
        raise nothing_to_train_error(dataset.path, stats.dropped, data)
    if cache is not None:  # written only after every record encoded: a failed run caches nothing

        def write(tmp: Path) -> None:
            columns = {
                "input_ids": [s.input_ids for s in samples],
                "labels": [s.labels for s in samples],
                "truncated": [s.truncated for s in samples],
            }
            if any(s.images for s in samples):
                columns["images"] = [s.images for s in samples]
            if any(s.parts for s in samples):
                columns["parts"] = [s.parts for s in samples]
            if any(s.label is not None for s in samples):
                columns["label"] = [s.label for s in samples]
            datasets.Dataset.from_dict(columns).save_to_disk(str(tmp / "samples"))
            stats_raw = {
                "samples": stats.samples,
                "tokens": stats.tokens,
                "truncated": stats.truncated,
                "dropped": dict(stats.dropped),
            }
            write_text_atomically(tmp / "stats.json", json.dumps(stats_raw))

        try:
            write_atomically(cache, write)
        except OSError:  # another process (a parallel run) wrote the same entry first: theirs is as good
            if not (cache / "stats.json").exists():
                raise
    return samples, stats


def build_training_data(
    data: DataSettings,
    tokenizer: PreTrainedTokenizerBase,
    template: Template | None = None,
    seed: int = 0,
    map_fn_of: Callable[[DatasetSettings], MapFn] | None = None,
) -> TrainingData:
    """`template` is the resolved data.template (see xtune.templates.resolve_template); resolved here if None.
    `map_fn_of` gives each dataset's map function when the formats need settings (xtune.multimodal)."""
    rng = random.Random(seed)
    parts, all_stats = [], {}
    for dataset in data.datasets:
        map_fn = map_fn_of(dataset) if map_fn_of else None
        samples, stats = tokenized_dataset(dataset, data, tokenizer, template, map_fn)
        if dataset.max_dataset_length is not None and len(samples) > dataset.max_dataset_length:
            samples = rng.sample(samples, dataset.max_dataset_length)
        parts.append(samples)
        all_stats[dataset.path] = stats
    factors = mixture_factors(data.datasets, [len(p) for p in parts])
    samples = [s for part, factor in zip(parts, factors, strict=True) for s in repeat_samples(part, factor, rng)]
    if not samples:
        dropped = sum((s.dropped for s in all_stats.values()), Counter())
        raise DataError(
            "no sample has anything to train on: check the datasets' format and data.max_length "
            f"({data.max_length}); dropped: {dict(dropped)}"
        )
    kinds = {(bool(s.parts), s.label is not None) for s in samples}
    if len(kinds) > 1:
        raise DataError(
            "the datasets mix preference pairs, KTO's labelled conversations and single conversations; train them in "
            "separate runs (SFT first, then a preference objective)"
        )
    rows = pack(samples, data.max_length) if data.pack_to_max_length else single_rows(samples)
    (pairs, labelled) = kinds.pop()
    return TrainingData(rows, all_stats, data.max_length, data.pack_to_max_length, pairs=pairs, labelled=labelled)


def mixture_factors(datasets_: list[DatasetSettings], sizes: list[int]) -> list[float]:
    """How many times each dataset's samples are used. With weights, dataset i makes up weight_i / sum of
    weights of a mixture as large as all datasets together; otherwise `repeat` (default 1)."""
    if not any(d.weight is not None for d in datasets_):
        return [d.repeat if d.repeat is not None else 1.0 for d in datasets_]
    weights = [d.weight if d.weight is not None else 1.0 for d in datasets_]
    total = sum(sizes)
    return [(w / sum(weights)) * total / n if n else 0.0 for w, n in zip(weights, sizes, strict=True)]


def repeat_samples(samples: list, factor: float, rng: random.Random) -> list:
    """Whole copies for the integer part of `factor`, a seeded sample without replacement for the rest."""
    whole, fraction = divmod(factor, 1.0)
    return samples * int(whole) + rng.sample(samples, round(fraction * len(samples)))


def cache_root(data: DataSettings) -> Path:
    return (Path(data.cache_dir) if data.cache_dir else user_cache_dir()) / "tokenized"


def _cache_path(
    dataset: DatasetSettings,
    data: DataSettings,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    map_fn: MapFn | None = None,
) -> Path:
    """The cache entry for this exact input: data bytes, map function, template, tokenizer and options."""
    digest = hashlib.sha256()
    path = resolve_path(dataset.path)
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            digest.update(file.name.encode())
            with file.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    if map_fn is not None:  # a configured map function (a dataclass): its code and its settings
        map_source = inspect.getsource(type(map_fn)) + repr(map_fn)
    else:
        map_fn = get_map_fn(dataset.format)
        try:
            map_source = inspect.getsource(map_fn)
        except (OSError, TypeError):
            map_source = f"{map_fn.__module__}.{map_fn.__qualname__}"
    options = {
        "version": xtune.__version__,
        "format": dataset.format,
        "map_source": map_source,
        "template": repr(template) if not hasattr(template, "jinja") else template.jinja,
        "system": dataset.system if dataset.system is not None else data.system,
        "max_length": data.max_length,
    }
    digest.update(json.dumps(options, sort_keys=True).encode())
    digest.update(_tokenizer_fingerprint(tokenizer).encode())
    return cache_root(data) / digest.hexdigest()[:32]


def _tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = json.dumps({k: str(v) for k, v in tokenizer.special_tokens_map.items()}, sort_keys=True)
    return hashlib.sha256((body + specials).encode()).hexdigest()
