"""Tool use as each model family writes it: the tool list in the prompt, the assistant's calls, parsing them back.

Conversations carry tools the OpenAI / Hugging Face way: a `tools` list of JSON schemas
(`{"type": "function", "function": {"name", "description", "parameters"}}`), assistant messages with `tool_calls`
(`[{"type": "function", "function": {"name", "arguments": {...}}}]`) and results in `{"role": "tool"}` messages.
A template's `tool_style` names one of the ToolCallStyle objects in TOOL_STYLES:

- internlm2: tools in a `system name=<|plugin|>` message, calls as `<|action_start|><|plugin|>\\n{json}<|action_end|>`
  (InternLM's chat_format.md); results in the `environment` role.
- qwen: the `# Tools` system block and `<tool_call>` JSON of Qwen2.5 / Qwen3's official template.
- llama3: Llama 3.1's JSON calls `{"name", "parameters"}`, the function list before the system prompt.
- react: Thought / Action / Action Input / Observation / Final Answer text inside one assistant turn, for templates
  whose models have no tool format of their own.

A style describes its tool list and its call once, as pieces (literal text and fields such as the call's name); the
Python text (for training and chat) and the jinja (for ChatTemplate.to_jinja, so an exported tokenizer renders tools
exactly as training did) are both produced from those pieces. Each style also reads calls back from a model's reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict | str  # a str is text that is not a JSON object; the registry answers it with an error result

    @classmethod
    def from_message(cls, call: dict) -> ToolCall:
        """From a message's tool_calls entry, with or without the OpenAI {"function": ...} wrapper."""
        function = call.get("function", call)
        return cls(function["name"], function.get("arguments", {}))

    def to_message(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _dumps(value: Any, indent: int | None = None) -> str:
    # As transformers' `tojson` filter writes it, so that render() and the exported jinja agree to the byte.
    return json.dumps(value, ensure_ascii=False, indent=indent)


# --- the tool list and the calls, as each family writes them -----------------------------------------------------

_QWEN_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_QWEN_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
# Llama 3.1's official wording for tools given in the system prompt.
_LLAMA3_TOOLS_HEAD = (
    "You have access to the following functions. To call a function, please respond with JSON for a function call."
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)
_REACT_TOOLS_HEAD = "You can use these tools:"
_REACT_TOOLS_TAIL = (
    "\n\nUse this format:\nThought: what to do next\nAction: the tool to use\n"
    "Action Input: the tool's arguments as a JSON object\nObservation: the tool's result\n"
    "(Thought, Action, Action Input and Observation may repeat)\nThought: I know the answer\n"
    "Final Answer: the answer"
)


_INTERNLM2_CALL = re.compile(r"<\|action_start\|>\s*<\|plugin\|>(.*?)(?:<\|action_end\|>|\Z)", re.DOTALL)
_QWEN_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_REACT_CALL = re.compile(
    r"^[ \t]*Action:[ \t]*(.*?)[ \t]*\n[ \t]*Action Input:[ \t]*(.*?)"
    r"(?=\n[ \t]*(?:Observation|Thought|Action|Final Answer):|\Z)",
    re.DOTALL | re.MULTILINE,
)
_NAME_IN_JSON = re.compile(r'"name"\s*:\s*"([^"\\]*)"')


@dataclass(frozen=True)
class _Field:
    """A piece of a tool list or call filled from data: `python` takes the tool (or ToolCall), `jinja` writes the
    same text inside the template's loop, where `f` is the tool's (or call's) function."""

    python: Callable[[Any], str]
    jinja: str


Piece = str | _Field

_NAME = _Field(lambda call: call.name, "{{ f['name'] }}")
# A raw string is what the model wrote; it goes back verbatim so the history shows its own call.
_ARGUMENTS = _Field(
    lambda call: call.arguments if isinstance(call.arguments, str) else _dumps(call.arguments),
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}",
)
_FUNCTION_NAME = _Field(lambda tool: _function(tool)["name"], "{{ f['name'] }}")
_DESCRIPTION = _Field(lambda tool: _function(tool).get("description", ""), "{{ f['description'] or '' }}")
_FUNCTION_JSON = _Field(lambda tool: _dumps(_function(tool)), "{{ f | tojson }}")
_TOOL_JSON = _Field(lambda tool: _dumps(tool), "{{ tool | tojson }}")
_TOOL_JSON_INDENTED = _Field(lambda tool: _dumps(tool, indent=4), "{{ tool | tojson(indent=4) }}")

_TOOL_FUNCTION = "(tool['function'] if tool['function'] is defined else tool)"
_CALL_FUNCTION = "(call['function'] if call['function'] is defined else call)"


def _function(tool: dict) -> dict:
    return tool.get("function", tool)


def _text(pieces: tuple[Piece, ...], item: Any) -> str:
    return "".join(p if isinstance(p, str) else p.python(item) for p in pieces)


def _jinja_literal(text: str) -> str:
    return "{{ " + json.dumps(text) + " }}" if text else ""


def _jinja(pieces: tuple[Piece, ...]) -> str:
    return "".join(_jinja_literal(p) if isinstance(p, str) else p.jinja for p in pieces)


@dataclass(frozen=True, kw_only=True)
class ToolCallStyle:
    """How one model family lists tools, writes calls and has them read back."""

    name: str
    call: tuple[Piece, ...]  # one call as the model writes it
    tools_head: str = ""
    tool_item: tuple[Piece, ...] = ()  # one tool of the list, between the head and the tail
    tools_tail: str = ""
    tools_before_system: bool = False  # the list precedes the system prompt instead of following it
    call_separator: str = "\n"  # between calls, and between the reply's text and its first call
    after_calls: str = ""
    call_start: re.Pattern[str] | None = None  # where a reply's calls begin; None: the calls are the whole reply

    def tools_text(self, tools: list[dict]) -> str:
        """The tool list as the model reads it."""
        return self.tools_head + "".join(_text(self.tool_item, t) for t in tools) + self.tools_tail

    def jinja_tools_text(self) -> str:
        """Statements that set `tools_text` as tools_text() writes it, from the `tools` the chat template receives."""
        loop = "{% for tool in tools %}{% set f = " + _TOOL_FUNCTION + " %}" + _jinja(self.tool_item) + "{% endfor %}"
        inner = _jinja_literal(self.tools_head) + loop + _jinja_literal(self.tools_tail)
        return "{% set tools_text %}" + inner + "{% endset %}"

    def system_with_tools(self, system: str, tools_text: str) -> str:
        """The system prompt with the tool list in it (for templates that give the list no message of its own)."""
        if self.tools_before_system:
            return tools_text + system
        return f"{system}\n\n{tools_text}" if system else tools_text

    def jinja_system_with_tools(self, system_expr: str) -> str:
        """A jinja expression for system_with_tools(system, tools_text)."""
        if self.tools_before_system:
            return f"(tools_text + {system_expr})"
        return f"(({system_expr}) + '\\n\\n' + tools_text if ({system_expr}) else tools_text)"

    def format_call(self, call: ToolCall) -> str:
        return _text(self.call, call)

    def reply_with_calls(self, content: str, calls: list[ToolCall]) -> str:
        """An assistant reply with its calls after the text, joined as the family's format does."""
        if not calls:
            return content
        lead = self.call_separator if content else ""
        return content + lead + self.call_separator.join(self.format_call(c) for c in calls) + self.after_calls

    def jinja_reply_with_calls(self, content_expr: str) -> str:
        """Statements that set `reply` as reply_with_calls(content, message's tool_calls) writes it."""
        separator = _jinja_literal(self.call_separator)
        if separator:
            separator = "{% if not loop.first or (" + content_expr + ") %}" + separator + "{% endif %}"
        calls = "{% for call in message['tool_calls'] %}{% set f = " + _CALL_FUNCTION + " %}" + separator
        calls += _jinja(self.call) + "{% endfor %}" + _jinja_literal(self.after_calls)
        return (
            "{% set reply %}{{ " + content_expr + " }}{% if message['tool_calls'] %}" + calls + "{% endif %}"
            "{% endset %}"
        )

    def parse(self, text: str) -> list[ToolCall]:
        """The tool calls in a model reply, in order; [] for a plain answer."""
        raise NotImplementedError

    def split_reply(self, text: str) -> tuple[str, list[ToolCall]]:
        """(the text before the calls, the calls): a reply as an assistant message for the history."""
        calls = self.parse(text)
        if not calls:
            return text, []
        if self.call_start is None:
            return "", calls
        start = self.call_start.search(text)
        return (text[: start.start()].rstrip("\n") if start else text), calls


@dataclass(frozen=True, kw_only=True)
class _TaggedStyle(ToolCallStyle):
    """Calls as JSON between markers, found anywhere in the reply."""

    pattern: re.Pattern[str]  # group 1: one call's JSON
    argument_keys: tuple[str, ...]  # where the JSON keeps the arguments, the family's own key first

    def parse(self, text: str) -> list[ToolCall]:
        bodies = self.pattern.findall(text)
        calls = [_call_from_json(body, self.argument_keys) for body in bodies]
        return [c or ToolCall("", body.strip()) for c, body in zip(calls, bodies, strict=True)]


@dataclass(frozen=True, kw_only=True)
class _InternLM2Style(_TaggedStyle):
    # The list is one JSON array of the functions, not one item after another.
    def tools_text(self, tools: list[dict]) -> str:
        return _dumps([_function(t) for t in tools], indent=4)

    def jinja_tools_text(self) -> str:
        body = "{% set ns_tools = namespace(items=[]) %}{% for tool in tools %}"
        body += "{% set ns_tools.items = ns_tools.items + [" + _TOOL_FUNCTION + "] %}{% endfor %}"
        return body + "{% set tools_text = ns_tools.items | tojson(indent=4) %}"


@dataclass(frozen=True, kw_only=True)
class _Llama3Style(ToolCallStyle):
    def parse(self, text: str) -> list[ToolCall]:
        # Llama 3.1's JSON tool call is the whole message; <|python_tag|> marks built-in tools' calls.
        body = text.strip().removeprefix("<|python_tag|>").strip()
        for end in ("<|eom_id|>", "<|eot_id|>"):
            body = body.removesuffix(end).strip()
        if not body.startswith("{"):
            return []
        call = _call_from_json(body, ("parameters", "arguments"))
        if call is None or (not call.name and isinstance(call.arguments, str)):
            return []  # a reply that merely starts with "{"; without markers only a named call counts
        return [call]


@dataclass(frozen=True, kw_only=True)
class _ReactStyle(ToolCallStyle):
    def parse(self, text: str) -> list[ToolCall]:  # ReAct's `Final Answer:` is no call
        calls = []
        for name, body in _REACT_CALL.findall(text):
            body = body.strip()
            try:
                arguments = json.loads(body)
            except (ValueError, RecursionError):
                arguments = body
            calls.append(ToolCall(name, arguments if isinstance(arguments, dict) else body))
        return calls


def _call_from_json(body: str, argument_keys: tuple[str, ...]) -> ToolCall | None:
    """{"name": ..., "parameters"/"arguments": {...}} as a ToolCall; bad JSON keeps the raw text as arguments, so the
    registry answers with an error the model can read. None: JSON that is not a tool call."""
    body = body.strip()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        name = _NAME_IN_JSON.search(body)
        return ToolCall(name.group(1) if name else "", body)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = next((data[key] for key in argument_keys if key in data), {})
    if isinstance(arguments, str):  # some models send the arguments as a JSON string, as the OpenAI API does
        try:
            decoded = json.loads(arguments)
        except (ValueError, RecursionError):
            return ToolCall(data["name"], arguments)
        arguments = decoded
    if not isinstance(arguments, dict):
        return ToolCall(data["name"], json.dumps(arguments))
    return ToolCall(data["name"], arguments)


TOOL_STYLES: dict[str, ToolCallStyle] = {
    style.name: style
    for style in (
        _InternLM2Style(
            name="internlm2",
            call=('<|action_start|><|plugin|>\n{"name": "', _NAME, '", "parameters": ', _ARGUMENTS, "}<|action_end|>"),
            call_separator="",  # "Sure, I will search.<|action_start|>..." (chat_format.md)
            call_start=re.compile(r"<\|action_start\|>"),
            pattern=_INTERNLM2_CALL,
            argument_keys=("parameters", "arguments"),
        ),
        _TaggedStyle(
            name="qwen",
            call=('<tool_call>\n{"name": "', _NAME, '", "arguments": ', _ARGUMENTS, "}\n</tool_call>"),
            tools_head=_QWEN_TOOLS_HEAD,
            tool_item=("\n", _TOOL_JSON),
            tools_tail=_QWEN_TOOLS_TAIL,
            call_start=re.compile(r"<tool_call>"),
            pattern=_QWEN_CALL,
            argument_keys=("arguments", "parameters"),
        ),
        _Llama3Style(
            name="llama3",
            call=('{"name": "', _NAME, '", "parameters": ', _ARGUMENTS, "}"),
            tools_head=_LLAMA3_TOOLS_HEAD,
            tool_item=(_TOOL_JSON_INDENTED, "\n\n"),
            tools_before_system=True,
        ),
        _ReactStyle(
            name="react",
            call=("Action: ", _NAME, "\nAction Input: ", _ARGUMENTS),
            tools_head=_REACT_TOOLS_HEAD,
            tool_item=("\n", _FUNCTION_NAME, ": ", _DESCRIPTION, " ", _FUNCTION_JSON),
            tools_tail=_REACT_TOOLS_TAIL,
            after_calls="\n",  # the Observation line follows
            call_start=re.compile(r"^[ \t]*Action:", re.MULTILINE),
        ),
    )
}
TOOL_CALL_STYLES = tuple(TOOL_STYLES)


def tool_call_style(name: str) -> ToolCallStyle:
    if name not in TOOL_STYLES:
        raise ValueError(f"unknown tool call style {name!r}; choose from {', '.join(TOOL_CALL_STYLES)}")
    return TOOL_STYLES[name]


def format_tool_call(call: ToolCall, style: str) -> str:
    """The text of one call as the model writes it."""
    return tool_call_style(style).format_call(call)


def parse_tool_calls(text: str, style: str) -> list[ToolCall]:
    """The tool calls in a model reply, in order; [] for a plain answer (and for ReAct's `Final Answer:`)."""
    return tool_call_style(style).parse(text)


def split_reply(text: str, style: str) -> tuple[str, list[ToolCall]]:
    """(the text before the calls, the calls): a reply as an assistant message for the history."""
    return tool_call_style(style).split_reply(text)
