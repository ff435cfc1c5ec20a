"""Reading raw records from json, jsonl, parquet, csv files and Hugging Face `datasets` directories."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets

from xtune.errors import DataError

SUFFIX_TO_BUILDER = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
NO_RECORDS_FIX = (
    "data.datasets[].path must name a file of records (`xtune list-dataset-format` shows an example record of each "
    "format)"
)


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
    if builder in ("json", "csv"):
        _check_text(path, builder)
    if builder == "json":
        _check_json(path)
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # a schema conflict between records, an unreadable file
        raise DataError(f"{path}: cannot load: {e}") from None


def _check_text(path: Path, builder: str) -> None:
    """Find what `datasets` reports as a decoding traceback or as "corresponds to no data", with the line and
    byte offset: a byte that is not UTF-8 (binary data, a file saved as Latin-1 or GBK), or no records at all."""
    offset, content_lines = 0, 0
    try:
        with path.open("rb") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{line_no}: byte offset {offset + e.start} (0x{line[e.start]:02x}) is not UTF-8: "
                        "data files must be UTF-8 text; re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), "
                        "or fix data.datasets[].path if it names the wrong file"
                    ) from None
                content_lines += not text.isspace()
                offset += len(line)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}; check data.datasets[].path") from None
    if content_lines == 0:
        raise DataError(f"{path}: the file is {'empty' if offset == 0 else 'only whitespace'}; {NO_RECORDS_FIX}")
    if builder == "csv" and content_lines == 1:
        raise DataError(f"{path}: a header line and no records; {NO_RECORDS_FIX}")


def _check_json(path: Path) -> None:
    """Find malformed JSON ourselves: `datasets` reports it without the line number."""
    with path.open(encoding="utf-8") as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
    if head == "[":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if not records:
            raise DataError(f"{path}: an empty JSON array, no records; {NO_RECORDS_FIX}")
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
    """'file:line' for JSON Lines (the index-th non-blank line) and CSV, else 'file, record N'."""
    return record_locator(path)(index)


def record_locator(path: Path) -> Callable[[int], str]:
    """record_location for many records of one file: JSON Lines are numbered once, on the first call, rather
    than read again for each record (a file of bad records would take quadratic time)."""
    suffix = path.suffix.lower() if path.is_file() else ""
    if suffix == ".csv":
        return lambda index: f"{path}:{index + 2}"  # header is line 1
    if suffix != ".jsonl":
        return lambda index: f"{path}, record {index}"
    line_numbers: list[int] = []

    def locate(index: int) -> str:
        if not line_numbers:
            line_numbers.extend(line_no for line_no, _ in _lines(path))
        return f"{path}:{line_numbers[index]}" if index < len(line_numbers) else f"{path}, record {index}"

    return locate
