"""Tools the chat model can call: what a tool is, and a registry that checks the model's arguments before a call.
How a call is written in each model family's format lives with the templates (xtune.templates.tool_calls).
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xtune.errors import XtuneError
from xtune.user_code import load_function


class ToolError(Exception):
    """A tool call's input is wrong. The message goes back to the model, so it should say how to do it right."""


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    text: str


_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")  # what OpenAI-style function names allow


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of an object: {"type": "object", "properties": {...}, "required": [...]}
    fn: Callable[..., Any]  # called with the arguments by name; returns text (or anything JSON-serialisable)

    def __post_init__(self) -> None:
        if not _TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"tool name {self.name!r}: use letters, digits, '_' and '-' (at most 64)")

    def schema(self) -> dict:
        """The OpenAI-style tool schema that chat templates put in the system prompt."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def usage(self) -> str:
        """A one-line signature for error messages, e.g. `solve(equation: string, variable?: string)`."""
        required = set(self.parameters.get("required", ()))
        params = []
        for name, prop in self.parameters.get("properties", {}).items():
            kind = prop.get("type", "any")
            kind = " | ".join(kind) if isinstance(kind, list) else kind
            params.append(f"{name}{'' if name in required else '?'}: {kind}")
        return f"{self.name}({', '.join(params)})"

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None) -> Tool:
        """A tool from a typed, documented function: the docstring is the description the model reads (a Google
        style `Args:` section describes the parameters); str/int/float/bool parameters, required without a default."""
        label = getattr(fn, "__qualname__", repr(fn))
        doc = inspect.getdoc(fn)
        if not doc:
            raise XtuneError(f"tool {label} needs a docstring: it is the description the model reads")
        try:
            hints = typing.get_type_hints(fn)
            signature = inspect.signature(fn)
        except Exception as exc:
            raise XtuneError(f"tool {label}: cannot read its signature: {exc}") from exc
        description, arg_docs = _split_docstring(doc)
        properties: dict[str, dict] = {}
        required: list[str] = []
        for param in signature.parameters.values():
            if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                raise XtuneError(f"tool {label}: parameter {param.name!r} must be a plain named parameter")
            json_type = _json_type(hints.get(param.name))
            if json_type is None:
                raise XtuneError(
                    f"tool {label}: parameter {param.name!r} needs a type hint str, int, float or bool (or T | None)"
                )
            properties[param.name] = {"type": json_type}
            if param.name in arg_docs:
                properties[param.name]["description"] = arg_docs[param.name]
            if param.default is param.empty:
                required.append(param.name)
        parameters = {"type": "object", "properties": properties, "required": required}
        return cls(name or getattr(fn, "__name__", ""), description, parameters, fn)


_PY_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_type(hint: Any) -> str | list[str] | None:
    if hint in _PY_TO_JSON:
        return _PY_TO_JSON[hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in _PY_TO_JSON and len(typing.get_args(hint)) == 2:
            return [_PY_TO_JSON[args[0]], "null"]
    return None


def _split_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: text}) from a docstring with an optional Google-style Args section."""
    match = re.search(r"^(Args|Arguments|Parameters):\s*$", doc, re.MULTILINE)
    if match is None:
        return doc.strip(), {}
    arg_docs: dict[str, str] = {}
    current = None
    for line in doc[match.end() :].splitlines():
        entry = re.match(r"^\s+(\w+)\s*(?:\([^)]*\))?:\s*(.*)$", line)
        if entry:
            current = entry.group(1)
            arg_docs[current] = entry.group(2).strip()
        elif line.strip() and current and line.startswith((" ", "\t")):
            arg_docs[current] = f"{arg_docs[current]} {line.strip()}".strip()
        elif line.strip():
            break  # the next section (Returns:, ...)
    return doc[: match.start()].strip(), arg_docs


def is_user_tool(name: str) -> bool:
    """A tool name that names the user's code ('module:function', 'file.py:function') rather than a built-in."""
    return ":" in name


def load_tool(spec: str) -> Tool:
    """A tool from user code: `package.module:function` or `path/to/file.py:function`. The user names the code, so
    running it is their choice; what the model sends it is still checked against the signature."""
    return Tool.from_function(load_function(spec, "tool"))


class ToolRegistry:
    def __init__(self, tools: Sequence[Tool] = (), max_result_chars: int = 4000):
        self._tools: dict[str, Tool] = {}
        self.max_result_chars = max_result_chars  # long results would crowd the conversation out of the context
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool | Callable[..., Any]) -> Tool:
        if not isinstance(tool, Tool):
            tool = Tool.from_function(tool)
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def schemas(self) -> list[dict]:
        return [tool.schema() for tool in self._tools.values()]

    def call(self, name: str, arguments: dict | str | None = None) -> ToolResult:
        """Run a tool. Never raises for anything the model can get wrong: a malformed call, or a tool that fails,
        becomes an error result the model reads and can correct."""
        tool = self._tools.get(name)
        if tool is None:
            available = ", ".join(self._tools) or "none"
            if not name:
                return ToolResult(False, f"error: the tool call has no name; available tools: {available}")
            return ToolResult(False, f"error: unknown tool {name!r}; available: {available}")
        try:
            kwargs = _parse_arguments(tool, arguments)
            _check_arguments(tool, kwargs)
            value = tool.fn(**kwargs)
        except ToolError as exc:
            return ToolResult(False, self._clip(f"error: {exc}"))
        except Exception as exc:  # a bug in a user's tool must not end the chat; the model and the user see it
            return ToolResult(False, self._clip(f"error: tool {name!r} failed: {type(exc).__name__}: {exc}"))
        if isinstance(value, ToolResult):
            return ToolResult(value.ok, self._clip(value.text))
        return ToolResult(True, self._clip(_to_text(value)))

    def _clip(self, text: str) -> str:
        if len(text) <= self.max_result_chars:
            return text
        return text[: self.max_result_chars] + f"\n[... {len(text) - self.max_result_chars} more characters cut]"

    def list(self) -> list[Tool]:  # last in the class: inside the class body, `list` is this method from here on
        return [*self._tools.values()]


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _parse_arguments(tool: Tool, arguments: dict | str | None) -> dict:
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ToolError(
                f"the arguments for {tool.name} are not valid JSON ({exc.msg} at line {exc.lineno} column "
                f"{exc.colno}); send a JSON object; usage: {tool.usage()}"
            ) from None
        except (ValueError, RecursionError):
            raise ToolError(f"the arguments for {tool.name} are not valid JSON; usage: {tool.usage()}") from None
    if not isinstance(arguments, dict):
        raise ToolError(
            f"the arguments for {tool.name} must be a JSON object, not {_json_name(arguments)}; usage: {tool.usage()}"
        )
    return arguments


_JSON_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _json_name(value: Any) -> str:
    for name, check in _JSON_CHECKS.items():
        if check(value):
            return name if name == "null" else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    return type(value).__name__


def _check_arguments(tool: Tool, arguments: dict) -> None:
    """The top-level checks of the tool's JSON schema: required and known properties, their types and enums."""
    properties: dict = tool.parameters.get("properties", {})
    usage = tool.usage()
    missing = [name for name in tool.parameters.get("required", ()) if name not in arguments]
    if missing:
        raise ToolError(f"{tool.name} is missing required argument {missing[0]!r}; usage: {usage}")
    if tool.parameters.get("additionalProperties", False) is False:  # unlike JSON schema's default: typos matter
        extra = [name for name in arguments if name not in properties]
        if extra:
            raise ToolError(f"{tool.name} got unexpected argument {extra[0]!r}; usage: {usage}")
    for name, value in arguments.items():
        prop = properties.get(name, {})
        kinds = prop.get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds or []
        known = [k for k in kinds if k in _JSON_CHECKS]
        if known and not any(_JSON_CHECKS[k](value) for k in known):
            shown = json.dumps(value)[:60]
            raise ToolError(
                f"{tool.name} argument {name!r} must be {' or '.join(kinds)}, got {_json_name(value)} {shown}; "
                f"usage: {usage}"
            )
        if "enum" in prop and value not in prop["enum"]:
            raise ToolError(f"{tool.name} argument {name!r} must be one of {json.dumps(prop['enum'])}")
