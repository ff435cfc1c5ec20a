"""Reading raw records from json, jsonl, parquet, csv files and Hugging Face `datasets` directories."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import datasets

from xtune.errors import DataError

SUFFIX_TO_BUILDER = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_records(path: Path) -> datasets.Dataset:
    """Load a data file or a saved `datasets` directory as one Dataset."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check data.datasets[].path in your config")
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises several types for a directory it cannot read
            raise DataError(f"{path}: not a dataset saved with Dataset.save_to_disk ({e})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise DataError(f"{path}: a DatasetDict without a 'train' split (has {', '.join(loaded)})")
            loaded = loaded["train"]
        return loaded
    builder = SUFFIX_TO_BUILDER.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; use .json, .jsonl, .parquet, .csv or a dataset directory"
        )
    if builder == "json":
        _check_json(path)
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # a schema conflict between records, an unreadable file
        raise DataError(f"{path}: cannot load: {e}") from None


def _check_json(path: Path) -> None:
    """Find malformed JSON ourselves: `datasets` reports it without the line number."""
    with path.open(encoding="utf-8") as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
    if head == "[":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        return
    for line_no, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no}: invalid JSON: {e.msg} (one JSON object per line expected)") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield line_no, line


def record_location(path: Path, index: int) -> str:
    """'file:line' for JSON Lines (the index-th non-blank line), else 'file, record N'."""
    if path.is_file() and path.suffix.lower() == ".jsonl":
        for i, (line_no, _) in enumerate(_lines(path)):
            if i == index:
                return f"{path}:{line_no}"
    if path.is_file() and path.suffix.lower() == ".csv":
        return f"{path}:{index + 2}"  # header is line 1
    return f"{path}, record {index}"
