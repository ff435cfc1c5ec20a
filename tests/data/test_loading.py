"""Reading records from every supported source, and errors that name file, line and key."""

import json

import datasets
import pytest

from xtune.config.schema import DatasetSettings, DataSettings
from xtune.data import build_training_data
from xtune.data.loading import load_records, record_location
from xtune.errors import ConfigError, DataError

RECORDS = [
    {"instruction": "Say hi", "input": "", "output": "Hi!"},
    {"instruction": "Add", "input": "2+2", "output": "4"},
    {"instruction": "Name a colour", "input": "", "output": "Blue"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def as_rows(dataset):
    return [{k: dataset[i][k] for k in ("instruction", "input", "output")} for i in range(len(dataset))]


def test_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    assert as_rows(load_records(path)) == RECORDS


def test_jsonl(tmp_path):
    assert as_rows(load_records(write_jsonl(tmp_path / "d.jsonl", RECORDS))) == RECORDS


def test_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,input,output\nSay hi,,Hi!\nAdd,2+2,4\n"Name a colour",,Blue\n', encoding="utf-8")
    loaded = load_records(path)
    assert len(loaded) == 3
    assert [r["output"] for r in loaded] == ["Hi!", "4", "Blue"]
    assert loaded[1]["input"] == "2+2"
    assert loaded[0]["input"] in ("", None)  # an empty cell; the alpaca map treats both as "no input"


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(RECORDS).to_parquet(str(path))
    assert as_rows(load_records(path)) == RECORDS


def test_saved_dataset_directory(tmp_path):
    path = tmp_path / "saved"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(path))
    assert as_rows(load_records(path)) == RECORDS


def test_saved_dataset_dict_uses_train_split(tmp_path):
    path = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(RECORDS), "test": datasets.Dataset.from_list(RECORDS[:1])}
    ).save_to_disk(str(path))
    assert as_rows(load_records(path)) == RECORDS

    no_train = tmp_path / "no_train"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(no_train))
    with pytest.raises(DataError, match="without a 'train' split"):
        load_records(no_train)


def test_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="save_to_disk") as info:
        load_records(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="does not exist") as info:
        load_records(missing)
    assert str(missing) in str(info.value)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_records(path)


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(RECORDS[0]),
        "",
        json.dumps(RECORDS[1]),
        '{"instruction": "x", "output": ',
        json.dumps(RECORDS[2]),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_records(path)
    assert f"{path}:4: invalid JSON" in str(info.value)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: expected a JSON object, got list"):
        load_records(path)


def test_malformed_json_array_line_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(DataError) as info:
        load_records(path)
    assert f"{path}:3: invalid JSON" in str(info.value)


def test_record_location(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(["{}", "", "  ", "{}", "{}"]) + "\n", encoding="utf-8")  # blank lines are skipped
    assert [record_location(path, i) for i in range(3)] == [f"{path}:1", f"{path}:4", f"{path}:5"]
    csv = tmp_path / "d.csv"
    csv.write_text("a\n1\n2\n", encoding="utf-8")
    assert record_location(csv, 1) == f"{csv}:3"  # after the header
    assert record_location(tmp_path / "d.parquet", 7) == f"{tmp_path / 'd.parquet'}, record 7"


# --- errors through the whole pipeline ----------------------------------------------------------------------------


def data_settings(path, fmt="alpaca", **kwargs):
    return DataSettings(
        datasets=[DatasetSettings(path=str(path), format=fmt)], template="qwen_chat", cache=False, **kwargs
    )


def test_record_missing_key_names_file_line_and_key(tmp_path, tiny_tokenizer):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [RECORDS[0], RECORDS[1], {"instruction": "No answer", "input": ""}, RECORDS[2]])
    with pytest.raises(DataError) as info:
        build_training_data(data_settings(path), tiny_tokenizer)
    message = str(info.value)
    assert f"{path}:3:" in message
    assert "'output'" in message
    assert "alpaca" in message  # the format used, to check against the data


def test_record_error_line_counts_blank_lines(tmp_path, tiny_tokenizer):
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(RECORDS[0]), "", json.dumps(RECORDS[1]), "", json.dumps({"instruction": "x", "input": ""})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:5: missing key 'output'"):
        build_training_data(data_settings(path), tiny_tokenizer)


def test_record_error_in_csv_names_the_row_line(tmp_path, tiny_tokenizer):
    path = tmp_path / "train.csv"
    path.write_text("prompt,response\nhi,hello\nbye,\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: missing key 'response'"):
        build_training_data(data_settings(path, "prompt_response"), tiny_tokenizer)


def test_wrong_format_for_the_data_names_the_keys_present(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError) as info:
        build_training_data(data_settings(path, "alpaca"), tiny_tokenizer)
    message = str(info.value)
    assert f"{path}:1:" in message and "'instruction'" in message and "keys present: messages" in message


def test_pipeline_missing_data_file(tmp_path, tiny_tokenizer):
    with pytest.raises(DataError, match="does not exist"):
        build_training_data(data_settings(tmp_path / "missing.jsonl"), tiny_tokenizer)


def test_pipeline_unknown_format(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(ConfigError, match="unknown dataset format 'alpacaa'"):
        build_training_data(data_settings(path, "alpacaa"), tiny_tokenizer)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet", "dir"])
def test_every_source_trains_the_same_samples(tmp_path, tiny_tokenizer, suffix):
    """The source format does not change what is trained."""
    reference = build_training_data(data_settings(write_jsonl(tmp_path / "ref.jsonl", RECORDS)), tiny_tokenizer)
    dataset = datasets.Dataset.from_list(RECORDS)
    path = tmp_path / f"d{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(RECORDS), encoding="utf-8")
    elif suffix == ".jsonl":
        write_jsonl(path, RECORDS)
    elif suffix == ".csv":
        dataset.to_csv(str(path), index=False)
    elif suffix == ".parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))
    got = build_training_data(data_settings(path), tiny_tokenizer)
    assert sorted(r.input_ids for r in got.rows) == sorted(r.input_ids for r in reference.rows)
    assert sorted(r.labels for r in got.rows) == sorted(r.labels for r in reference.rows)
    assert got.num_samples == len(RECORDS)
