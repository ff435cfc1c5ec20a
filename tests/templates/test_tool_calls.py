"""Tool use in each model family's format: calls round-trip through format and parse, match the official formats,
and conversations with tools, calls and results render the same through render() and the exported jinja, with only
the assistant's text and calls trained."""

import pytest

from xtune.templates.tool_calls import TOOL_CALL_STYLES, ToolCall, format_tool_call, parse_tool_calls, split_reply

CALLS = [
    ToolCall("calculate", {"expression": "2 + 2"}),
    ToolCall("search", {"query": '显存 "quoted" {braces}'}),
    ToolCall("solve", {"equation": "x**2 = 4", "variable": "x"}),
]


@pytest.mark.parametrize("style", TOOL_CALL_STYLES)
@pytest.mark.parametrize("call", CALLS, ids=[c.name for c in CALLS])
def test_tool_calls_round_trip(style, call):
    text = format_tool_call(call, style)
    assert parse_tool_calls(text, style) == [call]
    assert parse_tool_calls(f"Let me work it out.\n{text}", style) == ([] if style == "llama3" else [call])


def test_tool_call_formats_match_the_official_ones():
    call = ToolCall("calculate", {"expression": "2+2"})
    body = '{"name": "calculate", "parameters": {"expression": "2+2"}}'
    assert format_tool_call(call, "internlm2") == f"<|action_start|><|plugin|>\n{body}<|action_end|>"
    assert format_tool_call(call, "llama3") == body
    qwen = '<tool_call>\n{"name": "calculate", "arguments": {"expression": "2+2"}}\n</tool_call>'
    assert format_tool_call(call, "qwen") == qwen
    assert format_tool_call(call, "react") == 'Action: calculate\nAction Input: {"expression": "2+2"}'


def test_parse_tool_calls_from_model_replies():
    internlm2 = (
        "Sure, I will compute it.<|action_start|><|plugin|>\n"
        '{"name": "calculate", "parameters": {"expression": "6*7"}}<|action_end|><|im_end|>'
    )
    assert parse_tool_calls(internlm2, "internlm2") == [ToolCall("calculate", {"expression": "6*7"})]
    # Generation stopped at the end marker, which the decoder dropped.
    cut = '<|action_start|><|plugin|>\n{"name": "calculate", "parameters": {"expression": "1"}}'
    assert parse_tool_calls(cut, "internlm2") == [ToolCall("calculate", {"expression": "1"})]
    qwen = (
        '<tool_call>\n{"name": "calculate", "arguments": {"expression": "1"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "search", "arguments": "{\\"query\\": \\"q\\"}"}\n</tool_call>'
    )
    assert parse_tool_calls(qwen, "qwen") == [
        ToolCall("calculate", {"expression": "1"}),
        ToolCall("search", {"query": "q"}),
    ]
    llama = '<|python_tag|>{"name": "solve", "parameters": {"equation": "x = 1"}}<|eom_id|>'
    assert parse_tool_calls(llama, "llama3") == [ToolCall("solve", {"equation": "x = 1"})]
    assert parse_tool_calls('{"answer": 42}', "llama3") == []  # JSON, but not a call
    assert parse_tool_calls("{a, b} is a set.", "llama3") == []
    react = (
        'Thought: I need to multiply.\nAction: calculate\nAction Input: {\n  "expression": "6*7"\n}\n'
        "Observation: 42\nThought: done\nFinal Answer: 42"
    )
    assert parse_tool_calls(react, "react") == [ToolCall("calculate", {"expression": "6*7"})]
    for style in TOOL_CALL_STYLES:
        assert parse_tool_calls("The answer is 42.", style) == []
    assert parse_tool_calls("Thought: easy.\nFinal Answer: 42", "react") == []
    with pytest.raises(ValueError, match="unknown tool call style"):
        parse_tool_calls("", "chatml")


@pytest.mark.parametrize(
    ("style", "reply", "content"),
    [
        ("qwen", "Let me compute.\n" + format_tool_call(CALLS[0], "qwen"), "Let me compute."),
        ("internlm2", "Sure." + format_tool_call(CALLS[0], "internlm2"), "Sure."),
        ("llama3", format_tool_call(CALLS[0], "llama3"), ""),
        ("react", "Thought: add.\n" + format_tool_call(CALLS[0], "react") + "\n", "Thought: add."),
    ],
)
def test_split_reply_separates_the_text_from_the_calls(style, reply, content):
    assert split_reply(reply, style) == (content, [CALLS[0]])
    assert split_reply("The answer is 4.", style) == ("The answer is 4.", [])


def test_the_tool_style_of_a_tokenizer_template_is_read_from_its_jinja(tiny_tokenizer, monkeypatch):
    from xtune.templates import TokenizerTemplate

    from .official_templates import OFFICIAL

    for name, style in (("qwen3", "qwen"), ("llama2_chat", "react")):
        monkeypatch.setattr(tiny_tokenizer, "chat_template", OFFICIAL[name]["jinja"])
        assert TokenizerTemplate(tiny_tokenizer).tool_style == style
