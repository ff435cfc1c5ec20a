"""Map functions: raw records -> conversations or plain text, built-in and user-supplied."""

import textwrap

import pytest

from xtune.data.formats import EXAMPLES, MAP_FUNCTIONS, RecordError, get_map_fn, preference_pair
from xtune.errors import ConfigError


def test_alpaca_without_input():
    sample = get_map_fn("alpaca")({"instruction": "Name a colour.", "input": "", "output": "Blue."})
    assert sample == {
        "messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    }
    # a missing input key and a None input (datasets fills absent keys with None) mean the same
    assert get_map_fn("alpaca")({"instruction": "Name a colour.", "output": "Blue."}) == sample
    assert get_map_fn("alpaca")({"instruction": "Name a colour.", "input": None, "output": "Blue."}) == sample


def test_alpaca_with_input_appended_after_a_newline():
    sample = get_map_fn("alpaca")({"instruction": "Translate to French", "input": "Hello", "output": "Bonjour"})
    assert sample["messages"] == [
        {"role": "user", "content": "Translate to French\nHello"},
        {"role": "assistant", "content": "Bonjour"},
    ]


def test_alpaca_missing_output_names_the_key():
    with pytest.raises(RecordError, match="'output'") as info:
        get_map_fn("alpaca")({"instruction": "x", "input": ""})
    assert info.value.key == "output"


def test_alpaca_non_string_field_names_the_key():
    with pytest.raises(RecordError, match="'instruction' must be a string") as info:
        get_map_fn("alpaca")({"instruction": 3, "output": "x"})
    assert info.value.key == "instruction"


def test_alpaca_zh_field_names():
    sample = get_map_fn("alpaca_zh")({"instruction_zh": "翻译", "input_zh": "你好", "output_zh": "Hello"})
    assert [m["content"] for m in sample["messages"]] == ["翻译\n你好", "Hello"]


def test_openai_keeps_roles_and_loss_flag():
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "loss": False},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye.", "loss": True},
            {"role": "user", "content": "?"},
            {"role": "assistant", "content": "!", "loss": None},  # as datasets fills a key other rows have
        ]
    }
    sample = get_map_fn("openai")(record)
    assert sample["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "loss": False},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye.", "loss": True},
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": "!"},
    ]


@pytest.mark.parametrize("flag", ["false", "False", 0, 1, "no", [], {}])
def test_openai_refuses_a_loss_flag_that_is_not_a_boolean(flag):
    """bool("false") is True: a quoted flag meant to hide a turn would train it. Only JSON booleans are accepted."""
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hm.", "loss": flag}]}
    with pytest.raises(RecordError, match=r"messages\[1\]\.loss must be true or false") as error:
        get_map_fn("openai")(record)
    assert error.value.key == "messages[1].loss"


def test_openai_drops_an_opening_assistant_turn():
    record = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "assistant", "content": "Welcome!"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    roles = [m["role"] for m in get_map_fn("openai")(record)["messages"]]
    assert roles == ["system", "user", "assistant"]


def test_openai_bad_role_names_the_message():
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}
    with pytest.raises(RecordError, match=r"messages\[1\]\.role is 'bot'") as info:
        get_map_fn("openai")(record)
    assert info.value.key == "messages[1].role"
    assert "assistant" in str(info.value)  # lists the valid roles


@pytest.mark.parametrize(
    ("record", "key"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "a"}, "text"]}, "messages[1]"),
    ],
)
def test_openai_malformed_records(record, key):
    with pytest.raises(RecordError) as info:
        get_map_fn("openai")(record)
    assert info.value.key == key


def test_oasst1_splits_multi_turn_text():
    text = "### Human: What is 2+2?### Assistant: 4.\n### Human: And 3+3? ### Assistant: 6, of course."
    sample = get_map_fn("oasst1")({"text": text})
    assert sample["messages"] == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6, of course."},
    ]


def test_oasst1_without_assistant_turn_is_rejected():
    with pytest.raises(RecordError, match="Assistant") as info:
        get_map_fn("oasst1")({"text": "### Human: anyone there?"})
    assert info.value.key == "text"


def test_sharegpt_maps_speakers():
    record = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    assert get_map_fn("sharegpt")(record)["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    with pytest.raises(RecordError) as info:
        get_map_fn("sharegpt")({"conversations": [{"from": "robot", "value": "x"}]})
    assert info.value.key == "conversations[0].from"


def test_prompt_response_with_system():
    sample = get_map_fn("prompt_response")({"prompt": "Q", "response": "A", "system": "S"})
    assert [(m["role"], m["content"]) for m in sample["messages"]] == [
        ("system", "S"),
        ("user", "Q"),
        ("assistant", "A"),
    ]


def test_pretrain():
    assert get_map_fn("pretrain")({"text": "Any document."}) == {"text": "Any document."}
    with pytest.raises(RecordError) as info:
        get_map_fn("pretrain")({"content": "x"})
    assert info.value.key == "text"


@pytest.mark.parametrize("name", sorted(MAP_FUNCTIONS))
def test_every_builtin_maps_its_documented_example(name):
    """`xtune list-dataset-format` shows EXAMPLES[name]; it must map to a valid sample."""
    sample = MAP_FUNCTIONS[name](EXAMPLES[name])
    if name == "pretrain":
        assert set(sample) == {"text"} and sample["text"]
        return
    for messages in preference_pair(sample) if "chosen" in sample else [sample["messages"]]:
        assert messages[-1]["role"] == "assistant" and messages[-1]["content"]
        assert any(m["role"] == "user" for m in messages)


# --- user map functions ----------------------------------------------------------------------------------------

USER_MODULE = textwrap.dedent(
    """
    def qa(record):
        return {"messages": [{"role": "user", "content": record["q"].upper()},
                             {"role": "assistant", "content": record["a"]}]}

    NOT_CALLABLE = 3
    """
)


def test_user_map_fn_from_file_path(tmp_path):
    path = tmp_path / "my_maps.py"
    path.write_text(USER_MODULE, encoding="utf-8")
    fn = get_map_fn(f"{path}:qa")
    assert fn({"q": "hi", "a": "hello"})["messages"][0] == {"role": "user", "content": "HI"}


def test_user_map_fn_from_relative_file_path_and_base_dir(tmp_path, monkeypatch):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "rel_maps.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.chdir(tmp_path / "maps")
    assert get_map_fn("rel_maps.py:qa")({"q": "a", "a": "b"})["messages"][1]["content"] == "b"
    monkeypatch.chdir(tmp_path)
    fn = get_map_fn("rel_maps.py:qa", base_dir=tmp_path / "maps")  # not in cwd: found next to the config
    assert fn({"q": "x", "a": "y"})["messages"][0]["content"] == "X"


def test_user_map_fn_from_module(tmp_path, monkeypatch):
    (tmp_path / "xtune_test_user_maps.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "xtune_test_user_maps", raising=False)
    fn = get_map_fn("xtune_test_user_maps:qa")
    assert fn({"q": "q", "a": "a"}) == {
        "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}]
    }


def test_user_map_fn_errors(tmp_path, monkeypatch):
    path = tmp_path / "err_maps.py"
    path.write_text(USER_MODULE, encoding="utf-8")
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        get_map_fn(f"{path}:missing")
    with pytest.raises(ConfigError, match="has no function 'NOT_CALLABLE'"):
        get_map_fn(f"{path}:NOT_CALLABLE")
    with pytest.raises(ConfigError, match="not found"):
        get_map_fn(f"{tmp_path / 'nope.py'}:qa")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        get_map_fn("no_such_module_xyz:fn")


def test_unknown_format_lists_builtins():
    with pytest.raises(ConfigError) as info:
        get_map_fn("alpacca")
    message = str(info.value)
    assert "unknown dataset format 'alpacca'" in message
    for name in MAP_FUNCTIONS:
        assert name in message
    assert "module:" in message and ".py:" in message  # and how to name your own


# --- tool use ------------------------------------------------------------------------------------------------------

CALCULATE = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate arithmetic.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}


def test_openai_tool_calls_tool_results_and_tools():
    record = {
        "messages": [
            {"role": "user", "content": "6 * 7?"},
            {
                "role": "assistant",
                "content": None,  # as the OpenAI API writes it beside tool calls
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "calculate", "arguments": '{"expression": "6*7"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": "42"},
        ],
        "tools": [CALCULATE["function"]],  # a bare function schema is wrapped as OpenAI does
    }
    sample = get_map_fn("openai")(record)
    call = {"type": "function", "function": {"name": "calculate", "arguments": {"expression": "6*7"}}}
    assert sample["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert sample["messages"][2] == {"role": "tool", "content": "42"}
    assert sample["tools"] == [CALCULATE]


def test_openai_drops_the_nulls_that_arrow_adds_to_tool_schemas():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"type": "string"}}}}}
    padded = {
        "type": "function",
        "function": {"name": "f", "parameters": {"properties": {"a": {"type": "string"}, "b": None}}},
    }
    record = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "tools": [padded],
    }
    assert get_map_fn("openai")(record)["tools"] == [tool]


@pytest.mark.parametrize(
    ("tool_calls", "message"),
    [
        ("calculate", "must be a list"),
        ([{"function": {"arguments": "{}"}}], r"tool_calls\[0\] needs a function name"),
        ([{"function": {"name": "f", "arguments": "{oops"}}], "arguments is not valid JSON"),
        ([{"function": {"name": "f", "arguments": "[1]"}}], "must be a JSON object"),
    ],
)
def test_openai_bad_tool_calls_name_the_message(tool_calls, message):
    record = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": tool_calls}]
    }
    with pytest.raises(RecordError, match=message) as info:
        get_map_fn("openai")(record)
    assert info.value.key.startswith("messages[1].tool_calls")


REACT_RESPONSE = (
    "Thought: I need to multiply.\n"
    'Action: calculate\nAction Input: {"expression": "6*7"}\n'
    "Observation: 42\n"
    "Thought: Now add one.\n"
    'Action: calculate\nAction Input: {"expression": "42+1"}\n'
    "Observation: 43\n"
    "Thought: I know the answer.\nFinal Answer: 43"
)


def test_react_trajectory_becomes_calls_and_results():
    sample = get_map_fn("react")({"question": "6*7+1?", "response": REACT_RESPONSE, "tools": [CALCULATE]})
    roles = [m["role"] for m in sample["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    first = sample["messages"][1]
    assert first["content"] == "Thought: I need to multiply."
    assert first["tool_calls"][0]["function"] == {"name": "calculate", "arguments": {"expression": "6*7"}}
    assert [m["content"] for m in sample["messages"] if m["role"] == "tool"] == ["42", "43"]
    assert sample["messages"][-1]["content"] == "Thought: I know the answer.\nFinal Answer: 43"
    assert sample["tools"] == [CALCULATE]


def test_react_renders_back_to_the_trajectory_with_observations_untrained():
    from xtune.templates import TEMPLATES

    sample = get_map_fn("react")({"question": "6*7+1?", "response": REACT_RESPONSE})
    segments = TEMPLATES["default"].render(sample["messages"])
    text = "".join(s.text for s in segments)
    assert REACT_RESPONSE in text
    trained = "".join(s.text for s in segments if s.trained)
    assert "Observation" not in trained and "42\n" not in trained.replace("42+1", "")
    assert 'Action Input: {"expression": "42+1"}' in trained and "Final Answer: 43" in trained


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ("Thought: hm\nObservation: 1\nFinal Answer: 1", "no Action before Observation"),
        ('Action: calculate\nAction Input: {"expression": "1"}\nObservation: 1\nThought: done', "must end with"),
    ],
)
def test_react_malformed_trajectories_name_the_problem(response, message):
    with pytest.raises(RecordError, match=message) as info:
        get_map_fn("react")({"question": "q", "response": response})
    assert info.value.key == "response"


def test_list_dataset_format_prints_each_description_whole_within_the_width(monkeypatch, capsys):
    from xtune.cli import main
    from xtune.data.formats import describe

    monkeypatch.setenv("COLUMNS", "60")
    main(["list-dataset-format"])
    lines = capsys.readouterr().out.splitlines()
    starts = [i for i, line in enumerate(lines) if line[:1].strip()]  # a format's name starts its block
    for name in MAP_FUNCTIONS:
        start = next(i for i in starts if lines[i].split()[0] == name)
        block = lines[start : lines.index(next(line for line in lines[start:] if "e.g. " in line), start)]
        assert all(len(line) <= 60 for line in block), block
        assert " ".join(" ".join(block).split()[1:]) == describe(name)  # nothing cut
    assert describe("openai").endswith("render in the template's own tool format.")  # a docstring of two lines
