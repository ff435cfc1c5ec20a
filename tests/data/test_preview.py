"""`xtune check-dataset` and `xtune log-dataset`, run through the CLI on a small config."""

import json
import re
from pathlib import Path

import pytest
import yaml

from xtune.cli import main
from xtune.data.encode import IGNORE_INDEX

GOOD = {"instruction": "Say hi", "output": "Hi there"}


def write_config(tmp_path, records: list[dict]) -> str:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = {
        "model": {"path": "builtin:tiny-llama"},
        "data": {
            "datasets": [{"path": str(data), "format": "alpaca"}],
            "template": "qwen_chat",
            "max_length": 64,
            "cache_dir": str(tmp_path / "cache"),
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_check_dataset_reports_every_bad_record_and_fails(tmp_path, capsys):
    long = {"instruction": "x " * 200, "output": "y"}  # the reply falls beyond max_length: dropped
    config = write_config(tmp_path, [GOOD, {"instruction": "no output"}, GOOD, long, {"output": "no instruction"}])
    with pytest.raises(SystemExit) as exit_info:
        main(["check-dataset", config])
    assert exit_info.value.code != 0
    out = capsys.readouterr().out
    data = str(tmp_path / "data.jsonl")
    assert f"{data}:2: missing key 'output'" in out and f"{data}:5: missing key 'instruction'" in out
    assert re.search(r"usable samples\s+2\b", out) and re.search(r"bad records\s+2\b", out)
    assert "dropped: nothing to train within max_length" in out
    assert "token lengths:" in out


def test_check_dataset_passes_on_clean_data(tmp_path, capsys):
    main(["check-dataset", write_config(tmp_path, [GOOD, GOOD])])
    out = capsys.readouterr().out
    assert re.search(r"usable samples\s+2\b", out) and re.search(r"bad records\s+0\b", out)


def test_log_dataset_json_has_ids_labels_and_text(tmp_path, capsys):
    main(
        [
            "log-dataset",
            write_config(tmp_path, [GOOD, {"instruction": "Second", "output": "Two"}]),
            "--index",
            "1",
            "--format",
            "json",
        ]
    )
    sample = json.loads(capsys.readouterr().out)
    assert sample["index"] == 1 and "Second" in sample["text"]
    assert len(sample["input_ids"]) == len(sample["labels"])
    trained = [t for t, lab in zip(sample["input_ids"], sample["labels"], strict=True) if lab != IGNORE_INDEX]
    assert trained and all(
        lab in (IGNORE_INDEX, t) for t, lab in zip(sample["input_ids"], sample["labels"], strict=True)
    )


def test_log_dataset_shows_the_trained_span(tmp_path, capsys):
    main(["log-dataset", write_config(tmp_path, [GOOD]), "--show", "all"])
    out = capsys.readouterr().out
    assert "Hi there" in out and "labels:" in out and "input_ids:" in out and "trained" in out


def test_log_dataset_unknown_index_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["log-dataset", write_config(tmp_path, [GOOD]), "--index", "7"])
    assert exit_info.value.code == 2 and "no record with index 7" in capsys.readouterr().err


def test_log_dataset_shows_tool_calls_trained_and_results_not(tmp_path, capsys):
    call = {"type": "function", "function": {"name": "calculate", "arguments": '{"expression": "6*7"}'}}
    record = {
        "messages": [
            {"role": "user", "content": "6 times 7?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
        ]
    }
    config = write_config(tmp_path, [record])
    raw = yaml.safe_load(Path(config).read_text())
    raw["data"]["datasets"][0]["format"] = "openai"
    raw["data"]["max_length"] = 256
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    main(["log-dataset", config, "--format", "json"])
    sample = json.loads(capsys.readouterr().out)
    from transformers import AutoTokenizer

    from xtune.assets import resolve_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_path("builtin:tiny-llama"))
    trained = tokenizer.decode([t for t, lab in zip(sample["input_ids"], sample["labels"], strict=True) if lab >= 0])
    assert '<tool_call>\n{"name": "calculate", "arguments": {"expression": "6*7"}}\n</tool_call>' in trained
    assert "It is 42." in trained and "<|im_start|>tool\n42" in sample["text"] and "tool\n42" not in trained


def test_check_dataset_counts_pairs_and_the_pairs_truncation_drops(tmp_path, capsys):
    """Preference pairs: counted as pairs, with the histograms of prompts and replies; a pair whose reply max_length
    cuts away entirely is listed as skipped, never trained with an empty reply."""
    pair = {"prompt": "Hi", "chosen": "Hello there!", "rejected": "What?"}
    long = {"prompt": "x " * 100, "chosen": "yes", "rejected": "no"}
    config = write_config(tmp_path, [pair, long, pair])
    text = Path(config).read_text().replace("format: alpaca", "format: preference")
    Path(config).write_text(text + "training: {objective: dpo}\n")
    main(["check-dataset", config])
    out = capsys.readouterr().out
    assert re.search(r"usable pairs\s+2\b", out) and re.search(r"bad records\s+0\b", out)
    assert re.search(r"dropped: a reply truncated away within max_length\s+1\b", out)
    assert f"skipped: {tmp_path / 'data.jsonl'}:2: a reply truncated away within max_length" in out
    prompts = out[out.index("prompt lengths:") : out.index("reply lengths (trained):")]
    assert re.search(r"16-24\s+2 #", prompts)  # the default system prompt and "Hi": 21 tokens
