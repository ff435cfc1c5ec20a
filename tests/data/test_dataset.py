"""build_training_data: the tokenization cache and dataset mixing."""

import json
import random

import pytest

from xtune.config.schema import DatasetSettings, DataSettings
from xtune.data import build_training_data
from xtune.data.dataset import mixture_factors, repeat_samples
from xtune.errors import DataError


def write_alpaca(path, n, tag):
    path.write_text(
        "".join(
            json.dumps({"instruction": f"{tag} question {i}", "output": f"{tag} answer {i}"}) + "\n" for i in range(n)
        ),
        encoding="utf-8",
    )
    return path


def rows_key(td):
    return sorted((r.input_ids, r.labels) for r in td.rows)


def test_cache_is_reused_and_invalidated(tmp_path, tiny_tokenizer):
    path = write_alpaca(tmp_path / "a.jsonl", 5, "a")
    cache_dir = tmp_path / "cache"

    def build(**kwargs):
        settings = {"template": "qwen_chat", "max_length": 256, "cache_dir": str(cache_dir), **kwargs}
        return build_training_data(DataSettings(datasets=[DatasetSettings(path=str(path))], **settings), tiny_tokenizer)

    first = build()
    assert not first.stats[str(path)].from_cache
    second = build()
    assert second.stats[str(path)].from_cache
    assert rows_key(second) == rows_key(first)
    assert build(cache=False).stats[str(path)].from_cache is False

    # a different template, or edited data, is a different cache entry
    other_template = build(template="internlm2_chat")
    assert not other_template.stats[str(path)].from_cache and rows_key(other_template) != rows_key(first)
    write_alpaca(path, 6, "b")
    edited = build()
    assert not edited.stats[str(path)].from_cache and edited.num_samples == 6


def test_repeat_and_max_dataset_length(tmp_path, tiny_tokenizer):
    a = write_alpaca(tmp_path / "a.jsonl", 4, "a")
    b = write_alpaca(tmp_path / "b.jsonl", 10, "b")
    data = DataSettings(
        datasets=[DatasetSettings(path=str(a), repeat=2.5), DatasetSettings(path=str(b), max_dataset_length=3)],
        template="qwen_chat",
        cache=False,
    )
    td = build_training_data(data, tiny_tokenizer)
    texts = [tiny_tokenizer.decode(r.input_ids) for r in td.rows]
    assert sum("a question" in t for t in texts) == 10  # 2 whole copies of 4, plus half of them
    assert sum("b question" in t for t in texts) == 3
    assert len({t for t in texts if "b question" in t}) == 3  # a sample of distinct records


def test_mixture_factors_with_weights():
    datasets_ = [DatasetSettings(path="a", weight=3), DatasetSettings(path="b", weight=1)]
    factors = mixture_factors(datasets_, [100, 300])
    # 400 samples in all: a makes up 3/4 (300 = 3 x 100), b 1/4 (100 = 1/3 x 300)
    assert factors == pytest.approx([3.0, 1 / 3])
    assert mixture_factors([DatasetSettings(path="a"), DatasetSettings(path="b", repeat=2)], [5, 5]) == [1.0, 2.0]


def test_repeat_samples():
    samples = list(range(10))
    out = repeat_samples(samples, 2.3, random.Random(0))
    assert len(out) == 23 and out[:20] == samples * 2
    assert len(set(out[20:])) == 3 and set(out[20:]) <= set(samples)


def test_a_failed_run_caches_nothing(tmp_path, tiny_tokenizer):
    path = write_alpaca(tmp_path / "a.jsonl", 3, "a")
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"instruction": "no output here"}) + "\n")
    cache_dir = tmp_path / "cache"
    settings = DataSettings(datasets=[DatasetSettings(path=str(path))], template="qwen_chat", cache_dir=str(cache_dir))
    with pytest.raises(DataError, match=r"a.jsonl:4: missing key 'output'"):
        build_training_data(settings, tiny_tokenizer)
    leftovers = list(cache_dir.rglob("*")) if cache_dir.exists() else []
    assert not [p for p in leftovers if p.is_file()]


def test_tool_use_records_load_through_arrow_unchanged(tmp_path, tiny_tokenizer):
    """Records whose tool schemas and call arguments differ share one Arrow schema when loaded; the nulls it pads
    them with must not reach the prompt, and only the replies and calls are trained."""

    def tool(name, params):
        properties = {p: {"type": "string"} for p in params}
        return {
            "type": "function",
            "function": {"name": name, "parameters": {"type": "object", "properties": properties}},
        }

    def record(name, arguments, result, answer):
        call = {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
        return {
            "tools": [tool(name, list(arguments))],
            "messages": [
                {"role": "user", "content": f"please {name}"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": result},
                {"role": "assistant", "content": answer},
            ],
        }

    records = [
        record("calculate", {"expression": "6*7"}, "42", "It is 42."),
        record("solve", {"equation": "x=1", "variable": "x"}, "x = 1", "x is 1."),
    ]
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    settings = DataSettings(
        datasets=[DatasetSettings(path=str(path), format="openai")], template="qwen3", max_length=1024, cache=False
    )
    data = build_training_data(settings, tiny_tokenizer)
    texts = sorted(tiny_tokenizer.decode(row.input_ids) for row in data.rows)
    assert "null" not in "".join(texts)
    assert '{"name": "calculate", "arguments": {"expression": "6*7"}}' in texts[0]
    trained = [
        tiny_tokenizer.decode([t for t, label in zip(r.input_ids, r.labels, strict=True) if label >= 0])
        for r in data.rows
    ]
    assert any(
        '<tool_call>\n{"name": "solve", "arguments": {"equation": "x=1", "variable": "x"}}\n</tool_call>' in t
        for t in trained
    )
    assert not any("42" in t.replace("It is 42.", "") for t in trained)


PID_MAP_FN = """
import os

def with_pid(record):
    pid = str(os.getpid())
    return {"messages": [{"role": "user", "content": pid}, {"role": "assistant", "content": record["output"]}]}
"""


def test_tokenization_in_worker_processes_matches_one_process(tmp_path, tiny_tokenizer):
    import os

    from xtune.data.dataset import encode_records

    path = write_alpaca(tmp_path / "a.jsonl", 2100, "a")  # three encode batches
    dataset = DatasetSettings(path=str(path))

    def encode(num_proc):
        settings = DataSettings(datasets=[dataset], template="qwen_chat", max_length=64, cache=False, num_proc=num_proc)
        return [(i, s.input_ids, s.labels, s.truncated) for i, s in encode_records(dataset, settings, tiny_tokenizer)]

    one, two = encode(1), encode(2)
    assert len(one) == 2100 and two == one

    (tmp_path / "pid_fn.py").write_text(PID_MAP_FN)
    dataset = DatasetSettings(path=str(path), format=f"{tmp_path / 'pid_fn.py'}:with_pid")
    settings = DataSettings(datasets=[dataset], template="qwen_chat", max_length=64, cache=False, num_proc=2)
    pids = {
        tiny_tokenizer.decode(s.input_ids).split("user\n")[1].split("<")[0]
        for _, s in encode_records(dataset, settings, tiny_tokenizer)
    }
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two workers did the work


def test_a_bad_record_found_by_a_worker_names_its_line(tmp_path, tiny_tokenizer):
    from xtune.data.dataset import encode_records

    path = write_alpaca(tmp_path / "a.jsonl", 2100, "a")
    lines = path.read_text().splitlines()
    lines[1500] = json.dumps({"instruction": "no output here"})
    path.write_text("\n".join(lines) + "\n")
    dataset = DatasetSettings(path=str(path))
    settings = DataSettings(datasets=[dataset], template="qwen_chat", max_length=64, cache=False, num_proc=2)
    with pytest.raises(DataError, match=r"a\.jsonl:1501: missing key 'output'"):
        list(encode_records(dataset, settings, tiny_tokenizer))
    errors = []
    samples = list(encode_records(dataset, settings, tiny_tokenizer, on_error=errors.append))
    assert len(samples) == 2099 and len(errors) == 1
