"""Records with nothing to train: skipped and counted by reason, a dataset of nothing but them refused before
anything is cached; a tool result that answers no call: a bad record with its file:line."""

import json

import pytest

from xtune.config.schema import DatasetSettings, DataSettings
from xtune.data import build_training_data
from xtune.data.dataset import BadRecord
from xtune.errors import DataError

ANSWERED = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
NO_ASSISTANT = {"messages": [{"role": "user", "content": "Anyone there?"}]}
NOT_TRAINED = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey", "loss": False}]}
ORPHAN_RESULT = {
    "messages": [
        {"role": "user", "content": "6 times 7?"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
}


def settings(tmp_path, records: list[dict]) -> DataSettings:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    dataset = DatasetSettings(path=str(path), format="openai")
    return DataSettings(datasets=[dataset], template="qwen_chat", max_length=128, cache_dir=str(tmp_path / "cache"))


def test_records_with_nothing_to_train_are_skipped_and_counted_by_reason(tmp_path, tiny_tokenizer):
    data = settings(tmp_path, [ANSWERED, NO_ASSISTANT, NOT_TRAINED, NO_ASSISTANT, ANSWERED])
    td = build_training_data(data, tiny_tokenizer)
    assert td.num_samples == 2
    assert dict(td.dropped) == {"no assistant turn": 2, "nothing to train": 1}
    assert "2 dropped (no assistant turn)" in td.summary() and "1 dropped (nothing to train)" in td.summary()
    again = build_training_data(data, tiny_tokenizer)  # the counts survive the cache
    assert again.stats[data.datasets[0].path].from_cache and dict(again.dropped) == dict(td.dropped)


def test_a_dataset_with_nothing_to_train_is_refused_before_it_is_cached(tmp_path, tiny_tokenizer):
    data = settings(tmp_path, [NO_ASSISTANT, NOT_TRAINED, NO_ASSISTANT])
    with pytest.raises(DataError) as info:
        build_training_data(data, tiny_tokenizer)
    message = str(info.value)
    assert message.startswith(f"{data.datasets[0].path}: no record has anything to train")
    assert "no assistant turn: 2, nothing to train: 1" in message and "data.datasets[].format" in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "messages",
    [
        ORPHAN_RESULT["messages"],
        [  # two results for one call
            {"role": "user", "content": "6 times 7?"},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "calculate"}}]},
            {"role": "tool", "content": "42"},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
        ],
    ],
    ids=["no-call", "more-results-than-calls"],
)
def test_a_tool_result_that_answers_no_call_is_a_bad_record(tmp_path, tiny_tokenizer, messages):
    data = settings(tmp_path, [ANSWERED, {"messages": messages}])
    with pytest.raises(BadRecord) as info:
        build_training_data(data, tiny_tokenizer)
    assert info.value.location == f"{data.datasets[0].path}:2"
    orphan = len(messages) - 2
    assert info.value.problem.startswith(f"messages[{orphan}] is a tool result that answers no call")


def test_tool_results_that_answer_calls_train(tmp_path, tiny_tokenizer):
    call = {"function": {"name": "calculate", "arguments": {"expression": "6*7"}}}
    two_calls = {
        "messages": [
            {"role": "user", "content": "6 times 7, and 2 plus 2?"},
            {"role": "assistant", "content": None, "tool_calls": [call, call]},
            {"role": "tool", "content": "42"},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "42 and 4."},
        ]
    }
    assert build_training_data(settings(tmp_path, [two_calls]), tiny_tokenizer).num_samples == 1
