"""Tool use as each model family writes it: the tool list in the prompt, the assistant's calls, parsing them back.

Conversations carry tools the OpenAI / Hugging Face way: a `tools` list of JSON schemas
(`{"type": "function", "function": {"name", "description", "parameters"}}`), assistant messages with `tool_calls`
(`[{"type": "function", "function": {"name", "arguments": {...}}}]`) and results in `{"role": "tool"}` messages.
A template's `tool_style` picks how they become text:

- internlm2: tools in a `system name=<|plugin|>` message, calls as `<|action_start|><|plugin|>\\n{json}<|action_end|>`
  (InternLM's chat_format.md); results in the `environment` role.
- qwen: the `# Tools` system block and `<tool_call>` JSON of Qwen2.5 / Qwen3's official template.
- llama3: Llama 3.1's JSON calls `{"name", "parameters"}`, the function list before the system prompt.
- react: Thought / Action / Action Input / Observation / Final Answer text inside one assistant turn, for templates
  whose models have no tool format of their own.

Each text-building function here has a jinja twin (`jinja_*`) that ChatTemplate.to_jinja uses, so an exported
tokenizer renders tools exactly as training did; the chat parses the model's calls with parse_tool_calls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TOOL_CALL_STYLES = ("internlm2", "qwen", "llama3", "react")


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


def _check_style(style: str) -> None:
    if style not in TOOL_CALL_STYLES:
        raise ValueError(f"unknown tool call style {style!r}; choose from {', '.join(TOOL_CALL_STYLES)}")


def _dumps(value: Any, indent: int | None = None) -> str:
    # As transformers' `tojson` filter writes it, so that render() and the exported jinja agree to the byte.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _arguments_json(arguments: dict | str) -> str:
    # A raw string is what the model wrote; it goes back verbatim so the history shows its own call.
    return arguments if isinstance(arguments, str) else _dumps(arguments)


# --- the tool list ---------------------------------------------------------------------------------------------------

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


def _function(tool: dict) -> dict:
    return tool.get("function", tool)


def tools_text(tools: list[dict], style: str) -> str:
    """The tool list as the model reads it."""
    _check_style(style)
    if style == "internlm2":
        return _dumps([_function(t) for t in tools], indent=4)
    if style == "qwen":
        return _QWEN_TOOLS_HEAD + "".join("\n" + _dumps(t) for t in tools) + _QWEN_TOOLS_TAIL
    if style == "llama3":
        return _LLAMA3_TOOLS_HEAD + "".join(_dumps(t, indent=4) + "\n\n" for t in tools)
    lines = [f"\n{_function(t)['name']}: {_function(t).get('description', '')} {_dumps(_function(t))}" for t in tools]
    return _REACT_TOOLS_HEAD + "".join(lines) + _REACT_TOOLS_TAIL


def system_with_tools(system: str, tools_text: str, style: str) -> str:
    """The system prompt with the tool list in it (every style but internlm2, which gives tools their own message)."""
    if style == "llama3":
        return tools_text + system
    return f"{system}\n\n{tools_text}" if system else tools_text


def jinja_tools_text(style: str) -> str:
    """Statements that set `tools_text` as tools_text() writes it, from the `tools` the chat template receives."""
    _check_style(style)
    function = "(tool['function'] if tool['function'] is defined else tool)"
    if style == "internlm2":
        body = "{% set ns_tools = namespace(items=[]) %}{% for tool in tools %}"
        body += "{% set ns_tools.items = ns_tools.items + [" + function + "] %}{% endfor %}"
        return body + "{% set tools_text = ns_tools.items | tojson(indent=4) %}"
    if style == "qwen":
        loop = '{% for tool in tools %}{{ "\\n" }}{{ tool | tojson }}{% endfor %}'
        inner = f"{{{{ {json.dumps(_QWEN_TOOLS_HEAD)} }}}}{loop}{{{{ {json.dumps(_QWEN_TOOLS_TAIL)} }}}}"
    elif style == "llama3":
        loop = '{% for tool in tools %}{{ tool | tojson(indent=4) }}{{ "\\n\\n" }}{% endfor %}'
        inner = f"{{{{ {json.dumps(_LLAMA3_TOOLS_HEAD)} }}}}{loop}"
    else:
        line = (
            "{% set f = " + function + ' %}{{ "\\n" + f[\'name\'] + ": " + (f[\'description\'] or "") + " " }}'
            "{{ f | tojson }}"
        )
        inner = f"{{{{ {json.dumps(_REACT_TOOLS_HEAD)} }}}}{{% for tool in tools %}}{line}{{% endfor %}}"
        inner += f"{{{{ {json.dumps(_REACT_TOOLS_TAIL)} }}}}"
    return "{% set tools_text %}" + inner + "{% endset %}"


def jinja_system_with_tools(style: str, system_expr: str) -> str:
    """A jinja expression for system_with_tools(system, tools_text, style)."""
    if style == "llama3":
        return f"(tools_text + {system_expr})"
    return f"(({system_expr}) + '\\n\\n' + tools_text if ({system_expr}) else tools_text)"


# --- the assistant's calls -------------------------------------------------------------------------------------------


def format_tool_call(call: ToolCall, style: str) -> str:
    """The text of one call as the model writes it."""
    _check_style(style)
    head = f'{{"name": "{call.name}", '
    if style == "internlm2":
        return f'<|action_start|><|plugin|>\n{head}"parameters": {_arguments_json(call.arguments)}}}<|action_end|>'
    if style == "qwen":
        return f'<tool_call>\n{head}"arguments": {_arguments_json(call.arguments)}}}\n</tool_call>'
    if style == "llama3":
        return f'{head}"parameters": {_arguments_json(call.arguments)}}}'
    return f"Action: {call.name}\nAction Input: {_arguments_json(call.arguments)}"


def reply_with_calls(content: str, calls: list[ToolCall], style: str) -> str:
    """An assistant reply with its calls after the text, joined as the family's format does."""
    if not calls:
        return content
    texts = [format_tool_call(c, style) for c in calls]
    if style == "internlm2":  # "Sure, I will search.<|action_start|>..." (chat_format.md)
        return content + "".join(texts)
    joined = ("\n" if content else "") + "\n".join(texts)
    return content + joined + ("\n" if style == "react" else "")  # react: the Observation line follows


def jinja_reply_with_calls(style: str, content_expr: str) -> str:
    """Statements that set `reply` as reply_with_calls(content, message's tool_calls, style) writes it."""
    _check_style(style)
    args = "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}"
    key = "parameters" if style in ("internlm2", "llama3") else "arguments"
    head = f"{{{{ '{{\"name\": \"' + f['name'] + '\", \"{key}\": ' }}}}"
    one = {
        "internlm2": "{{ '<|action_start|><|plugin|>\\n' }}" + head + args + "{{ '}<|action_end|>' }}",
        "qwen": "{{ '<tool_call>\\n' }}" + head + args + "{{ '}\\n</tool_call>' }}",
        "llama3": head + args + "{{ '}' }}",
        "react": "{{ 'Action: ' + f['name'] + '\\nAction Input: ' }}" + args,
    }[style]
    separator = (
        "" if style == "internlm2" else "{% if not loop.first or (" + content_expr + ") %}{{ '\\n' }}{% endif %}"
    )
    calls = (
        "{% for call in message['tool_calls'] %}{% set f = (call['function'] if call['function'] is defined else "
        "call) %}" + separator + one + "{% endfor %}"
    )
    if style == "react":
        calls += "{{ '\\n' }}"
    return "{% set reply %}{{ " + content_expr + " }}{% if message['tool_calls'] %}" + calls + "{% endif %}{% endset %}"


# --- reading calls back from a model's reply -------------------------------------------------------------------------

_INTERNLM2_CALL = re.compile(r"<\|action_start\|>\s*<\|plugin\|>(.*?)(?:<\|action_end\|>|\Z)", re.DOTALL)
_QWEN_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_REACT_CALL = re.compile(
    r"^[ \t]*Action:[ \t]*(.*?)[ \t]*\n[ \t]*Action Input:[ \t]*(.*?)"
    r"(?=\n[ \t]*(?:Observation|Thought|Action|Final Answer):|\Z)",
    re.DOTALL | re.MULTILINE,
)
_NAME_IN_JSON = re.compile(r'"name"\s*:\s*"([^"\\]*)"')
_CALL_START = {
    "internlm2": re.compile(r"<\|action_start\|>"),
    "qwen": re.compile(r"<tool_call>"),
    "react": re.compile(r"^[ \t]*Action:", re.MULTILINE),
}


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


def parse_tool_calls(text: str, style: str) -> list[ToolCall]:
    """The tool calls in a model reply, in order; [] for a plain answer (and for ReAct's `Final Answer:`)."""
    _check_style(style)
    if style == "internlm2":
        bodies = _INTERNLM2_CALL.findall(text)
        calls = [_call_from_json(body, ("parameters", "arguments")) for body in bodies]
        return [c or ToolCall("", body.strip()) for c, body in zip(calls, bodies, strict=True)]
    if style == "qwen":
        bodies = _QWEN_CALL.findall(text)
        calls = [_call_from_json(body, ("arguments", "parameters")) for body in bodies]
        return [c or ToolCall("", body.strip()) for c, body in zip(calls, bodies, strict=True)]
    if style == "llama3":
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
    calls = []
    for name, body in _REACT_CALL.findall(text):
        body = body.strip()
        try:
            arguments = json.loads(body)
        except (ValueError, RecursionError):
            arguments = body
        calls.append(ToolCall(name, arguments if isinstance(arguments, dict) else body))
    return calls


def split_reply(text: str, style: str) -> tuple[str, list[ToolCall]]:
    """(the text before the calls, the calls): a reply as an assistant message for the history."""
    calls = parse_tool_calls(text, style)
    if not calls:
        return text, []
    if style == "llama3":
        return "", calls
    start = _CALL_START[style].search(text)
    return (text[: start.start()].rstrip("\n") if start else text), calls
