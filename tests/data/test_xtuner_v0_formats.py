"""XTuner v0's datasets by v0's names: each published record layout becomes the conversation v0 trained on."""

from __future__ import annotations

import json

import pytest

from xtune.data.encode import IGNORE_INDEX, encode_batch, sample_segments
from xtune.data.formats import MAP_FUNCTIONS, RecordError
from xtune.templates import get_template

API = {
    "name": "weather",
    "description": "Today's weather",
    "paths": [{"parameters": [{"name": "city", "description": "the city"}]}],
}
CALL = '<|startofthink|>```JSON\n{"api_name": "weather", "parameters": {"city": "Paris"}}\n```<|endofthink|>'
RESULT = '<|startofexec|>```JSON\n{"result": "sunny"}\n```<|endofexec|>'
# as MSAgent-Bench publishes it: the list as Python text
MSAGENT = {
    "conversations": repr(
        [
            {"from": "system", "value": f"You can use these APIs: {json.dumps(API)}"},
            {"from": "user", "value": "Weather in Paris?"},
            {"from": "assistant", "value": f"Let me look.{CALL}{RESULT}It is sunny in Paris."},
            {"from": "user", "value": "Thanks!"},
            {"from": "assistant", "value": "You're welcome."},
        ]
    )
}


def test_msagent_react_becomes_tool_calls_results_and_a_tool_list():
    sample = MAP_FUNCTIONS["msagent_react"](MSAGENT)
    assert sample["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": '{"result": "sunny"}'},
        {"role": "assistant", "content": "It is sunny in Paris."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]
    assert sample["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Today's weather",
                "parameters": {"type": "object", "properties": {"city": {"description": "the city"}}},
            },
        }
    ]


def test_msagent_react_trains_the_calls_and_answers_never_the_tool_results(tiny_tokenizer):
    sample = MAP_FUNCTIONS["msagent_react"](MSAGENT)
    encoded = encode_batch(
        [sample_segments(sample, get_template("qwen2_5_chat"), tiny_tokenizer, None)], tiny_tokenizer, 4096
    )
    ids, labels = encoded[0].input_ids, encoded[0].labels
    trained = tiny_tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    assert '"name": "weather"' in trained and "It is sunny in Paris." in trained and "You're welcome." in trained
    assert 'sunny"}' not in trained and "Today's weather" not in trained and "Weather in Paris?" not in trained


def test_msagent_react_reads_the_published_text_as_a_literal_never_as_code(tmp_path):
    marker = tmp_path / "ran"
    record = {"conversations": f"__import__('os').system('touch {marker}')"}
    with pytest.raises(RecordError, match="neither a list nor a Python literal") as info:
        MAP_FUNCTIONS["msagent_react"](record)
    assert info.value.key == "conversations" and not marker.exists()
    bad_call = dict(MSAGENT, conversations=MSAGENT["conversations"].replace('"api_name"', '"api_name'))
    with pytest.raises(RecordError, match="not valid") as info:
        MAP_FUNCTIONS["msagent_react"](bad_call)
    assert info.value.key == "conversations[2].value"


def test_v0_conversation_layout_multi_turn():
    record = {
        "conversation": [
            {"system": "You are a poet.", "input": "A line on rain", "output": "Rain taps the glass."},
            {"input": "Another", "output": "Clouds weep softly."},
        ]
    }
    assert MAP_FUNCTIONS["conversation"](record)["messages"] == [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "A line on rain"},
        {"role": "assistant", "content": "Rain taps the glass."},
        {"role": "user", "content": "Another"},
        {"role": "assistant", "content": "Clouds weep softly."},
    ]
    with pytest.raises(RecordError) as info:
        MAP_FUNCTIONS["conversation"]({"conversation": [{"input": "Hi"}]})
    assert info.value.key == "output"


def test_wizardlm_drops_what_has_no_answer_and_colorist_reads_after_the_colon():
    record = {
        "conversations": [
            {"from": "gpt", "value": "orphan"},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "unanswered"},
        ]
    }
    assert MAP_FUNCTIONS["wizardlm"](record)["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    colour = MAP_FUNCTIONS["colorist"]({"description": "ocean: deep: blue", "color": "#003366"})["messages"]
    assert colour[1:] == [{"role": "user", "content": "deep: blue"}, {"role": "assistant", "content": "#003366"}]
    assert colour[0]["role"] == "system" and "color designer" in colour[0]["content"]
