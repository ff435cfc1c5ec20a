"""`xtune check-dataset` and `xtune log-dataset`: see what the model will be trained on before training."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import groupby, islice

from rich.console import Console
from rich.table import Table
from rich.text import Text
from transformers import PreTrainedTokenizerBase

from xtune.assets import resolve_path
from xtune.config.schema import Config, DatasetSettings
from xtune.data.dataset import BadRecord, encode_records, nothing_to_train_error, untrained_reason
from xtune.data.encode import IGNORE_INDEX, EncodedSample
from xtune.data.formats import MapFn
from xtune.data.loading import record_locator
from xtune.errors import DataError
from xtune.templates import config_template

HISTOGRAM_BINS = 8
SHOWN_PER_PROBLEM = 10  # records listed for each distinct problem; the rest are counted


class GroupedProblems:
    """Problems grouped by their text, in the order they first appear: the first few records of each are listed
    with file:line and the rest counted, so that 1,000 records with one fault read as one fault, not 1,000 lines."""

    def __init__(self, shown: int = SHOWN_PER_PROBLEM):
        self.shown = shown
        self.locations: dict[str, list[str]] = {}  # problem -> its first shown + 1 locations, in file order
        self.counts: Counter = Counter()

    def add(self, record: BadRecord) -> None:
        locations = self.locations.setdefault(record.problem, [])
        if len(locations) <= self.shown:  # one more than shown: where the unlisted ones start
            locations.append(record.location)
        self.counts[record.problem] += 1

    def __len__(self) -> int:
        return self.counts.total()

    def print(self, console: Console, label: str) -> None:
        for problem, locations in self.locations.items():
            lines = [f"{label}: {location}: {problem}" for location in locations[: self.shown]]
            if self.counts[problem] > self.shown:
                more = self.counts[problem] - self.shown
                lines.append(f"{label}: ... and {more} more like it; first at {locations[self.shown]}")
            for line in lines:
                console.print(line, highlight=False, markup=False, soft_wrap=True)


def check_dataset(
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    console: Console,
    map_fn_of: Callable[[DatasetSettings], MapFn | None] | None = None,
) -> int:
    """Read every record of every dataset; report counts, lengths, truncation, every bad record and every record
    training would skip, with file:line (grouped when many share one problem). Returns the number of problems
    that stop training: bad records, and datasets none of whose records trains anything (the command's exit
    status is non-zero when there are any)."""
    total_errors = 0
    template = config_template(cfg, tokenizer)
    map_fn_of = map_fn_of or (lambda dataset: None)  # each format's own; a task may need its settings in them
    for dataset in cfg.data.datasets:
        errors, skipped = GroupedProblems(), GroupedProblems()
        lengths, truncated, dropped = [], 0, Counter()
        prompt_lengths, reply_lengths = [], []  # preference pairs: the shared prompt, and each reply
        labels = Counter()  # KTO's samples: desirable (True) or not
        locate = record_locator(resolve_path(dataset.path))

        def count_skipped(reason: str, index: int, dropped: Counter = dropped, skipped=skipped, locate=locate) -> None:
            dropped[reason] += 1
            skipped.add(BadRecord(locate(index), f"{reason}; training skips this record"))

        records = encode_records(
            dataset, cfg.data, tokenizer, template, errors.add, map_fn_of(dataset), on_skip=count_skipped
        )
        for index, sample in records:
            reason = untrained_reason(sample)
            if reason:
                count_skipped(reason, index)
                continue
            truncated += sample.truncated
            lengths.append(len(sample.input_ids))
            if sample.parts:
                replies = [[label != IGNORE_INDEX for label in sample.labels[part]] for part in sample.part_slices()]
                if sample.label is not None:  # KTO: its own reply (the second sequence is its KL sequence)
                    labels[sample.label] += 1
                    replies = replies[:1]
                prompt_lengths.append(replies[0].index(True))
                reply_lengths += [sum(reply) for reply in replies]
        console.print(f"[bold]{dataset.path}[/] (format {dataset.format})", soft_wrap=True)
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_row("records", str(len(lengths) + sum(dropped.values()) + len(errors)))
        table.add_row("usable pairs" if prompt_lengths and not labels else "usable samples", str(len(lengths)))
        if labels:
            table.add_row("desirable / undesirable", f"{labels[True]} / {labels[False]}")
        table.add_row("tokens", str(sum(lengths)))
        table.add_row(f"truncated to {cfg.data.max_length}", str(truncated))
        for reason, count in dropped.items():
            table.add_row(f"dropped: {reason}", str(count))
        table.add_row("bad records", f"[red]{len(errors)}[/]" if errors else "0")
        console.print(table)
        if lengths:
            console.print(length_histogram(lengths, cfg.data.max_length))
        if prompt_lengths:
            console.print(length_histogram(prompt_lengths, cfg.data.max_length, title="prompt lengths"))
            console.print(length_histogram(reply_lengths, cfg.data.max_length, title="reply lengths (trained)"))
        errors.print(console, "error")
        skipped.print(console, "skipped")
        total_errors += len(errors)
        if not lengths and dropped:  # training refuses such a dataset
            refusal = nothing_to_train_error(dataset.path, dropped, cfg.data)
            console.print(f"error: {refusal}", highlight=False, markup=False, soft_wrap=True)
            total_errors += 1
    return total_errors


def length_histogram(
    lengths: list[int], max_length: int, bins: int = HISTOGRAM_BINS, width: int = 40, title: str = "token lengths"
) -> str:
    step = max(1, -(-max_length // bins))
    counts = Counter(min(n // step, bins - 1) for n in lengths)
    peak = max(counts.values())
    lines = [f"{title}:"]
    for b in range(bins):
        bar = "#" * round(width * counts.get(b, 0) / peak)
        lines.append(f"  {b * step:>6}-{min((b + 1) * step, max_length):<6} {counts.get(b, 0):>7} {bar}")
    return "\n".join(lines)


def log_dataset(
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    console: Console,
    show: str = "masked",
    index: int | None = None,
    count: int = 1,
    as_json: bool = False,
    map_fn_of: Callable[[DatasetSettings], MapFn | None] | None = None,
    describe: Callable[[Sequence[int], PreTrainedTokenizerBase], str] | None = None,
) -> None:
    """Print encoded samples: text, the text with trained spans highlighted, ids and/or labels. `map_fn_of` and
    `describe` come from the task (xtune.train.task): a dataset's map function, and a line about a sample's
    non-text inputs (where its images go)."""
    dataset = cfg.data.datasets[0]
    map_fn = map_fn_of(dataset) if map_fn_of else None
    skipped: dict[int, str] = {}  # record index -> why training skips it: there is nothing to show
    samples = encode_records(
        dataset,
        cfg.data,
        tokenizer,
        config_template(cfg, tokenizer),
        map_fn=map_fn,
        on_skip=lambda reason, i: skipped.setdefault(i, reason),
    )
    chosen = islice(((i, s) for i, s in samples if index is None or i == index), count)
    found = False
    for record_index, sample in chosen:
        found = True
        if as_json:
            print(
                json.dumps(
                    {
                        "index": record_index,
                        "text": tokenizer.decode(sample.input_ids),
                        "input_ids": sample.input_ids,
                        "labels": sample.labels,
                        **({"images": sample.images} if sample.images else {}),
                    },
                    ensure_ascii=False,
                )
            )
            continue
        console.rule(
            f"{dataset.path} record {record_index}: {len(sample.input_ids)} tokens, "
            f"{sum(label != IGNORE_INDEX for label in sample.labels)} trained"
        )
        if sample.images and describe is not None:
            where = describe(sample.input_ids, tokenizer)
            console.print(f"images: {', '.join(sample.images)}; {where}", highlight=False, soft_wrap=True)
        if show in ("text", "all"):
            console.print(Text(tokenizer.decode(sample.input_ids)))
        if show in ("masked", "all"):
            console.print(masked_text(sample, tokenizer))
            console.print(Text("green: trained (labels = ids); dim: masked (-100)", style="italic"))
        if show in ("ids", "all"):
            console.print(f"input_ids: {sample.input_ids}", highlight=False)
        if show in ("labels", "all"):
            console.print(f"labels: {sample.labels}", highlight=False)
    if not found:
        if index in skipped:
            location = record_locator(resolve_path(dataset.path))(index)
            raise DataError(f"{location}: record {index} is skipped in training ({skipped[index]}); nothing to show")
        raise DataError(
            f"{dataset.path}: no record with index {index}" if index is not None else f"{dataset.path}: no records"
        )


def masked_text(sample: EncodedSample, tokenizer: PreTrainedTokenizerBase) -> Text:
    text = Text()
    pairs = zip(sample.input_ids, sample.labels, strict=True)
    for trained, group in groupby(pairs, key=lambda p: p[1] != IGNORE_INDEX):
        ids = [token for token, _ in group]
        decoded = tokenizer.decode(ids)
        if sample.images:  # a run of hundreds of image tokens, shown as one marker with its count
            decoded = IMAGE_RUN.sub(lambda m: f"<image>x{len(m.group(0)) // len('<image>')}", decoded)
        text.append(decoded, style="bold green" if trained else "dim")
    return text


IMAGE_RUN = re.compile(r"(?:<image>)+")
