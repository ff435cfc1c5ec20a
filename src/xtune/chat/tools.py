"""Tools the chat model can call: a registry that checks arguments, and the built-in calculate / solve / search.
How a call is written in each model family's format lives with the templates (xtune.templates.tool_calls).

Nothing here evals or execs what the model writes. XTuner's Calculate plugin ran Python `eval` on model output, and a
model (or a prompt injected into its context by a document it read) can write `__import__('os').system(...)` as easily
as `2+2`. calculate and solve parse with `ast` and walk the tree themselves, admitting only numbers, arithmetic and a
whitelist of math functions, with bounds on size so that hostile input can neither run code nor hang the chat.
"""

from __future__ import annotations

import ast
import contextlib
import decimal
import functools
import inspect
import json
import math
import os
import re
import signal
import stat
import threading
import time
import types
import typing
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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


# --- calculate and solve: an AST whitelist ------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 500
MAX_DEPTH = 50  # nodes from the root; a walker that recurses needs a bound, and real arithmetic is shallow
MAX_EXPONENT = 1000
MAX_RESULT_LOG10 = 10_000  # refuse a ** b whose result would exceed ~10**10000, before computing it
MAX_FACTORIAL = 1000
MAX_INT_DIGITS = 10_000
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10)) + 1  # bit_length is free; counting decimal digits is not
MAX_EQUATIONS = 10
MAX_VARIABLES = 10
MAX_DEGREE = 100  # a numeric power of a variable: x**100 at most
# sympy.solve can run for minutes on a legal degree-20 polynomial. The limit covers the whole call, so that a chat
# turn waits at most this long per solve call; a quarter of it is kept for what follows a miss or an empty answer
# (numeric roots, telling "no solution" from an identity). Set with evaluation.solve_time_limit / --solve-time-limit.
SOLVE_TIME_LIMIT_S = 2.0

_OPERATORS: dict[type, str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
    ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@",
    ast.Not: "not", ast.Invert: "~", ast.UAdd: "+", ast.USub: "-",
}  # fmt: skip

_SYNTAX_NAMES: dict[type, str] = {
    ast.Attribute: "attribute access (a.b)",
    ast.Subscript: "indexing (a[b])",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.Compare: "comparisons",
    ast.BoolOp: "and/or",
    ast.IfExp: "conditional expressions",
    ast.JoinedStr: "f-strings",
    ast.NamedExpr: "assignment (:=)",
    ast.Starred: "starred expression (*a)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}


@dataclass(frozen=True)
class _Grammar:
    tool: str
    functions: dict[str, tuple[int, int | None]]  # name -> (fewest, most arguments); None: no limit
    constants: frozenset[str]
    operators: tuple[type, ...]  # a tuple: messages list them in a stable order
    variables: bool

    def hint(self) -> str:
        ops = " ".join(_OPERATORS[op] for op in self.operators)
        names = ", ".join(self.functions)
        return f"{self.tool} accepts numbers, {ops}, parentheses, the functions {names} and the constants pi, e"


_CALC = _Grammar(
    tool="calculate",
    functions={
        **dict.fromkeys(["sqrt", "sin", "cos", "tan", "asin", "acos", "atan"], (1, 1)),
        "log": (1, 2),
        **dict.fromkeys(["log10", "log2", "exp", "floor", "ceil", "abs"], (1, 1)),
        "round": (1, 2),
        "min": (2, None),
        "max": (2, None),
        "factorial": (1, 1),
    },
    constants=frozenset({"pi", "e"}),
    operators=(ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow),
    variables=False,
)

_SOLVE = _Grammar(
    tool="solve",
    functions={name: arity for name, arity in _CALC.functions.items() if name not in ("round", "factorial")},
    constants=frozenset({"pi", "e"}),
    operators=(ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow),
    variables=True,
)

_VARIABLE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,19}")  # no underscores: no dunders, nothing Python-special


def _parse(text: str, grammar: _Grammar) -> ast.expr:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the input is {len(text)} characters long; the limit is {MAX_EXPRESSION_CHARS}")
    try:
        # mode="eval" admits a single expression: no statements, imports or assignments reach the walker.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings about the model's '2x' are for us, not the terminal
            tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not a valid expression ({exc.msg}); write multiplication as 2*x and powers as x**2") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ToolError(f"not a valid expression ({type(exc).__name__})") from None
    _check(tree.body, 1, grammar)
    return tree.body


def _check(node: ast.AST, depth: int, grammar: _Grammar) -> None:
    """Refuse anything outside the grammar, before any of it is evaluated."""
    if depth > MAX_DEPTH:
        raise ToolError(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "strings" if isinstance(value, (str, bytes)) else f"{type(value).__name__} values"
            raise ToolError(f"{kind} are not allowed; {grammar.hint()}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolError("a number in the expression is too large for a float")
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.UAdd, ast.USub)):
            raise ToolError(f"the operator {_OPERATORS[type(node.op)]!r} is not allowed; {grammar.hint()}")
        _check(node.operand, depth + 1, grammar)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in grammar.operators:
            hint = "; use ** for powers" if isinstance(node.op, ast.BitXor) else f"; {grammar.hint()}"
            raise ToolError(f"the operator {_OPERATORS[type(node.op)]!r} is not allowed{hint}")
        _check(node.left, depth + 1, grammar)
        _check(node.right, depth + 1, grammar)
    elif isinstance(node, ast.Name):
        if node.id in grammar.functions:
            raise ToolError(f"{node.id} is a function; call it, e.g. {node.id}(2)")
        if node.id not in grammar.constants and not (grammar.variables and _VARIABLE.fullmatch(node.id)):
            if grammar.variables:
                raise ToolError(f"the name {node.id!r} is not allowed: variables are letters and digits, like x or x1")
            raise ToolError(f"unknown name {node.id!r}; calculate takes no variables (use solve); {grammar.hint()}")
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            what = _SYNTAX_NAMES.get(type(node.func), "calling the result of an expression")
            raise ToolError(f"{what} is not allowed; {grammar.hint()}")
        name = node.func.id
        if name not in grammar.functions:
            raise ToolError(f"the function {name!r} is not allowed; {grammar.hint()}")
        if node.keywords:
            raise ToolError(f"keyword arguments are not allowed: write {name}(a, b)")
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            raise ToolError("starred arguments (*a) are not allowed")
        fewest, most = grammar.functions[name]
        if len(node.args) < fewest or (most is not None and len(node.args) > most):
            count = str(fewest) if fewest == most else f"{fewest} to {most}" if most else f"at least {fewest}"
            raise ToolError(f"{name} takes {count} argument{'s' if count != '1' else ''}, got {len(node.args)}")
        for arg in node.args:
            _check(arg, depth + 1, grammar)
    else:
        what = _SYNTAX_NAMES.get(type(node), f"{type(node).__name__} syntax")
        raise ToolError(f"{what} {'are' if what.endswith('s') else 'is'} not allowed; {grammar.hint()}")


def _brief(value: Any) -> str:
    """A number for a message; str() of a 5000-digit int raises ValueError (int_max_str_digits)."""
    if isinstance(value, int) and value.bit_length() > 200:
        return f"a number with about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return repr(value)


def _log10_abs(value: int | float) -> float:
    return math.log10(abs(value))  # exact enough for ints of any size: math.log10 accepts big ints


def _power(base: int | float, exponent: int | float) -> int | float:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"the exponent {_brief(exponent)} is too large (the limit is {MAX_EXPONENT})")
    if base != 0 and exponent > 0:
        magnitude = exponent * _log10_abs(base)
        if magnitude > MAX_RESULT_LOG10:
            raise ToolError(
                f"{_brief(base)} ** {_brief(exponent)} would be about 10**{int(magnitude)}; "
                f"the limit is 10**{MAX_RESULT_LOG10}"
            )
    return base**exponent


def _factorial(n: int | float) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise ToolError(f"factorial takes a whole number >= 0, got {_brief(n)}")
    if n > MAX_FACTORIAL:
        raise ToolError(f"factorial({_brief(n)}) is too large (the limit is factorial({MAX_FACTORIAL}))")
    return math.factorial(n)


def _round(x: int | float, ndigits: int | float | None = None) -> int | float:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_EXPONENT:
        raise ToolError(f"round's second argument must be a whole number up to {MAX_EXPONENT}, got {_brief(ndigits)}")
    return round(x, ndigits)


_CALC_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "log": math.log, "log10": math.log10, "log2": math.log2, "exp": math.exp,
    "floor": math.floor, "ceil": math.ceil, "abs": abs, "round": _round, "min": min, "max": max,
    "factorial": _factorial,
}  # fmt: skip
_CALC_CONSTANTS = {"pi": math.pi, "e": math.e}


def _checked(value: Any) -> int | float:
    """Keep every intermediate result a finite real number of bounded size."""
    if isinstance(value, complex):
        raise ToolError("the result is a complex number (e.g. a fractional power of a negative number)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large for a float (overflow)" if math.isinf(value) else "not a number")
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise ToolError(f"the result has more than {MAX_INT_DIGITS} digits")
    return value


def _evaluate(node: ast.expr) -> int | float:
    """Evaluate a tree that passed _check with _CALC; its depth is bounded, so the recursion is too."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _CALC_CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        op = node.op
        try:
            if isinstance(op, ast.Add):
                return _checked(left + right)
            if isinstance(op, ast.Sub):
                return _checked(left - right)
            if isinstance(op, ast.Mult):
                return _checked(left * right)
            if isinstance(op, ast.Div):
                return _checked(left / right)
            if isinstance(op, ast.FloorDiv):
                return _checked(left // right)
            if isinstance(op, ast.Mod):
                return _checked(left % right)
            return _checked(_power(left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError(f"the result of {_OPERATORS[type(op)]!r} is too large for a float (overflow)") from None
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # _check admits nothing else
    name = node.func.id
    args = [_evaluate(arg) for arg in node.args]
    try:
        return _checked(_CALC_FUNCTIONS[name](*args))
    except ZeroDivisionError:
        raise ToolError(f"division by zero in {name}") from None
    except OverflowError:
        raise ToolError(f"{name}(...) is too large for a float (overflow)") from None
    except ValueError:
        shown = ", ".join(_brief(a) for a in args)
        raise ToolError(f"{name}({shown}) is undefined (math domain error)") from None


def _format_number(value: int | float) -> str:
    if isinstance(value, int):
        # str() of an int over sys.get_int_max_str_digits() (4300) digits raises; Decimal's conversion does not.
        return str(decimal.Decimal(value)) if value.bit_length() > 10_000 else str(value)
    return repr(value)


def _calculate(expression: str) -> str:
    return _format_number(_evaluate(_parse(expression, _CALC)))


def calculate(expression: str) -> str:
    """Evaluate arithmetic exactly (ints) or as floats. Never raises: problems come back as 'error: ...' text."""
    try:
        return _calculate(expression)
    except ToolError as exc:
        return f"error: {exc}"
    except Exception as exc:  # a bug of ours; the model still gets an answer it can read, and the tests look for it
        return f"error: internal error ({type(exc).__name__}: {exc})"


class _TimeLimitExceeded(BaseException):
    """BaseException, so that sympy's own `except Exception` blocks cannot swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _TimeLimitExceeded after `seconds`. Python cannot stop a thread, so this uses SIGALRM, which works only
    in the main thread on POSIX; elsewhere sympy runs without a limit (the structural bounds still apply)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    seconds = max(seconds, 1e-3)  # 0 would disarm the timer instead of expiring at once

    def on_alarm(signum: int, frame: Any) -> None:
        raise _TimeLimitExceeded

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous_handler)
            if previous_delay:  # someone else's alarm (pytest-timeout, say) was pending: give back what was left
                left = max(previous_delay - (time.monotonic() - start), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, previous_interval)


def _split_top_level(text: str, separator: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _split_equation(text: str) -> tuple[str, str]:
    if re.search(r"[<>!]=", text):
        raise ToolError("inequalities are not supported; write an equation with '='")
    sides = text.replace("==", "=").split("=")
    if len(sides) > 2:
        raise ToolError(f"an equation has one '=', got {len(sides) - 1} in {text.strip()!r}")
    if len(sides) == 1:
        return sides[0], "0"  # an expression on its own means expression = 0
    if not sides[0].strip() or not sides[1].strip():
        raise ToolError(f"one side of {text.strip()!r} is empty")
    return sides[0], sides[1]


def _sympy_log10_abs(value: Any) -> float:
    import sympy

    if isinstance(value, sympy.Rational):  # Integer too; exact ints of any size, without float overflow
        return _log10_abs(int(value.p)) - _log10_abs(int(value.q))
    try:
        return math.log10(abs(complex(value.evalf(15))))
    except (TypeError, ValueError, OverflowError):
        return math.inf  # too big or too strange to size: refuse it


def _sympy_power(base: Any, exponent: Any) -> Any:
    """base ** exponent, refusing powers that sympy would expand into huge numbers or huge-degree polynomials."""
    if exponent.free_symbols:
        return base**exponent
    try:
        size = abs(complex(exponent.evalf(15)))
    except (TypeError, ValueError):
        raise ToolError(f"cannot use {_sympy_text(exponent, 60)} as an exponent") from None
    if base.free_symbols:
        if size > MAX_DEGREE:
            shown = _sympy_text(exponent, 60)
            raise ToolError(f"the exponent {shown} is too large for an equation (the limit is {MAX_DEGREE})")
    elif size > MAX_EXPONENT:
        raise ToolError(f"the exponent {_sympy_text(exponent, 60)} is too large (the limit is {MAX_EXPONENT})")
    elif base != 0 and exponent.is_positive and size * _sympy_log10_abs(base) > MAX_RESULT_LOG10:
        shown = f"{_sympy_text(base, 60)} ** {_sympy_text(exponent, 60)}"
        raise ToolError(f"{shown} is too large (the limit is 10**{MAX_RESULT_LOG10})")
    return base**exponent


def _sympy_text(value: Any, limit: int | None = None) -> str:
    import sympy

    try:
        text = _format_number(int(value)) if isinstance(value, sympy.Integer) else sympy.sstr(value)
    except ValueError:  # an integer over int_max_str_digits (4300) inside: show it in floating point
        text = sympy.sstr(sympy.N(value, 15))
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _to_sympy(node: ast.expr) -> Any:
    """Build the sympy expression from a tree that passed _check with _SOLVE. No strings reach sympy: sympify and
    parse_expr eval their input, which is exactly what this module must never do with model output."""
    import sympy

    if isinstance(node, ast.Constant):
        return sympy.Integer(node.value) if isinstance(node.value, int) else sympy.Float(node.value)
    if isinstance(node, ast.Name):
        if node.id in _SOLVE.constants:
            return sympy.pi if node.id == "pi" else sympy.E
        return sympy.Symbol(node.id)
    if isinstance(node, ast.UnaryOp):
        operand = _to_sympy(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _to_sympy(node.left), _to_sympy(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise ToolError("division by zero")
            return left / right
        return _sympy_power(left, right)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # _check admits nothing else
    args = [_to_sympy(arg) for arg in node.args]
    functions: dict[str, Callable[..., Any]] = {
        "sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "asin": sympy.asin,
        "acos": sympy.acos, "atan": sympy.atan, "log": sympy.log, "log10": lambda x: sympy.log(x, 10),
        "log2": lambda x: sympy.log(x, 2), "exp": sympy.exp, "floor": sympy.floor, "ceil": sympy.ceiling,
        "abs": sympy.Abs, "min": sympy.Min, "max": sympy.Max,
    }  # fmt: skip
    return functions[node.func.id](*args)


def _format_value(value: Any, approximate: bool) -> str:
    import sympy

    text = _sympy_text(value)
    with contextlib.suppress(Exception):
        if (
            approximate
            and value.is_number
            and not all(part.is_Rational or part.is_Float for part in value.as_real_imag())
        ):
            text += f" ≈ {_sympy_text(sympy.N(value, 12))}"  # sqrt(2) ≈ 1.41421356237, but not 1/2 or 2*I
    return text


def _is_linear(expression: Any, variables: list[Any]) -> bool:
    import sympy

    return bool(expression.is_polynomial(*variables) and sympy.Poly(expression, *variables).is_linear)


def _no_solution(expressions: list[Any], names: list[str], targets: list[Any], seconds: float) -> str:
    """What an empty answer from sympy.solve means; it is not always "no solution"."""
    import sympy

    try:
        with _time_limit(seconds):
            if all(sympy.simplify(e) == 0 for e in expressions):  # sympy.solve answers [] for sin(x)**2+cos(x)**2-1
                return f"every value of {', '.join(names)} is a solution (the equation is an identity)"
            if len(expressions) == 1 or all(_is_linear(e, targets) for e in expressions):
                return "no solution"
    except (_TimeLimitExceeded, Exception):
        pass
    # Given a system, sympy answers [] also where the roots have no closed form (x**5 - x + 1 = 0, y = 1).
    return "sympy found no solution; for a nonlinear system that can also mean the roots have no closed form"


def _numeric_roots(expression: Any, variable: Any, seconds: float) -> list[Any]:
    import sympy

    try:
        with _time_limit(seconds):
            return sympy.Poly(expression, variable).nroots(n=12, maxsteps=200)
    except (_TimeLimitExceeded, Exception):
        return []


def _solve(equation: str, variable: str | None = None, *, time_limit: float = SOLVE_TIME_LIMIT_S) -> str:
    import sympy

    if len(equation) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the input is {len(equation)} characters long; the limit is {MAX_EXPRESSION_CHARS}")
    parts = [p for p in _split_top_level(equation, ",") if p.strip()]
    if not parts:
        raise ToolError("the equation is empty; write e.g. 'x**2 - 4 = 0' or 'x + y = 3, x - y = 1'")
    if len(parts) > MAX_EQUATIONS:
        raise ToolError(f"{len(parts)} equations; the limit is {MAX_EQUATIONS}")
    sides = [_split_equation(part) for part in parts]
    trees = [(_parse(lhs, _SOLVE), _parse(rhs, _SOLVE)) for lhs, rhs in sides]
    # The variables as written: sympy's simplification may cancel some (x = x), which is still about x.
    written = sorted(
        {n.id for tree in (t for pair in trees for t in pair) for n in ast.walk(tree) if isinstance(n, ast.Name)}
        - _SOLVE.constants
        - set(_SOLVE.functions)  # the names of called functions are Name nodes too
    )
    if variable is not None and variable.strip():
        names = [v.strip() for v in variable.split(",")]
        bad = [n for n in names if not _VARIABLE.fullmatch(n)]
        if bad:
            raise ToolError(f"variable {bad[0][:40]!r} is not a name like x or x1")
        absent = [n for n in names if n not in written]
        if absent:
            raise ToolError(f"variable {absent[0]!r} does not appear in the equation")
    else:
        names = written
    if len(names) > MAX_VARIABLES:
        raise ToolError(f"{len(names)} variables; the limit is {MAX_VARIABLES}")
    targets = [sympy.Symbol(n) for n in names]

    # Building, solving and printing share one deadline; the fallbacks after a miss get the rest of the limit.
    fallback_s = time_limit / 4
    solve_s = time_limit - fallback_s
    deadline = time.monotonic() + solve_s
    try:
        with _time_limit(solve_s):  # sympy simplifies as it builds; bounded above, but keep a limit
            expressions = [_to_sympy(lhs) - _to_sympy(rhs) for lhs, rhs in trees]
    except ToolError:
        raise
    except _TimeLimitExceeded:
        raise ToolError(f"building the equation took more than {solve_s:g} s") from None
    except Exception as exc:  # sympy refusing a construct, e.g. min() of a complex number
        raise ToolError(f"sympy cannot build this equation: {type(exc).__name__}: {exc}") from None
    for part, expression in zip(parts, expressions, strict=True):
        if expression.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
            raise ToolError(f"{part.strip()!r} divides by zero or is infinite")
    if not any(e.free_symbols for e in expressions):
        holds = all(e == 0 for e in expressions)
        if not written:
            return "the equation has no variables and is " + ("true" if holds else "false (no solution)")
        if holds:
            return f"every value of {', '.join(names)} is a solution (the equation is an identity)"
        return "no solution"
    try:
        with _time_limit(deadline - time.monotonic()):
            # One equation goes in on its own: given a list, sympy answers [] where it has no radicals for the roots
            # (x**5 - x + 1), where on its own it answers CRootOf(...).
            problem = expressions[0] if len(expressions) == 1 else expressions
            solutions = sympy.solve(problem, targets, dict=True)
    except _TimeLimitExceeded:
        expression = expressions[0]
        if len(expressions) == 1 and len(targets) == 1 and expression.is_polynomial(targets[0]):
            roots = _numeric_roots(expression, targets[0], fallback_s)
            if roots:
                shown = "; ".join(f"{targets[0]} ≈ {_sympy_text(r)}" for r in roots)
                return f"no exact solution within {solve_s:g} s; numeric roots: {shown}"
        raise ToolError(f"sympy found no solution within {solve_s:g} s; try a simpler form") from None
    except Exception as exc:  # NotImplementedError for equations sympy has no method for, and its other refusals
        raise ToolError(f"sympy cannot solve this: {type(exc).__name__}: {exc}") from None
    solutions = [s for s in solutions if s]
    if not solutions:
        return _no_solution(expressions, names, targets, fallback_s)

    def text(approximate: bool) -> str:
        return "; ".join(
            ", ".join(
                f"{symbol} = {_format_value(value, approximate)}"
                for symbol, value in sorted(s.items(), key=lambda i: i[0].name)
            )
            for s in solutions
        )

    try:
        with _time_limit(deadline - time.monotonic()):  # evaluating CRootOf(...) of a high degree takes long too
            return text(approximate=True)
    except _TimeLimitExceeded:
        return text(approximate=False)


def solve(equation: str, variable: str | None = None, *, time_limit: float = SOLVE_TIME_LIMIT_S) -> str:
    """Solve an equation ('x**2 - 4 = 0') or a comma-separated system with sympy, e.g. 'x = -2; x = 2', within
    `time_limit` seconds. Never raises: problems come back as 'error: ...' text."""
    try:
        return _solve(equation, variable, time_limit=time_limit)
    except ToolError as exc:
        return f"error: {exc}"
    except Exception as exc:  # a bug of ours; the model still gets an answer it can read
        return f"error: internal error ({type(exc).__name__}: {exc})"


# --- search ---------------------------------------------------------------------------------------------------------


class SearchProvider(Protocol):
    """Where `search` looks. xtune ships only LocalDocumentSearch: it works offline and sends nothing anywhere. A web
    provider exists only when a user writes one (with their own API key) and passes it to default_registry."""

    def search(self, query: str, k: int) -> list[tuple[str, str]]:
        """Up to k (title, snippet) pairs, best first."""
        ...


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")  # words; CJK characters one by one, as they have no spaces


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


MAX_DOCUMENT_BYTES = 2**20  # one file; a longer one is rarely a document
MAX_INDEX_BYTES = 2**26  # all files together: the index lives in memory


class _Skipped(Exception):
    """A file the search index leaves out; args[0] is the reason, a key of LocalDocumentSearch.skipped."""


class LocalDocumentSearch:
    """BM25 keyword search over the .txt and .md files under a folder, split into passages of about
    `passage_chars` characters. The index is built once, when the provider is created; `summary` says what it holds
    and what it left out, `skipped` counts the files left out by reason.

    Only regular files that lie inside the folder are read. A document folder can come from elsewhere, and what the
    index holds the model can quote: a link to ~/.ssh/id_rsa or /proc/self/environ must not become a document, and
    a FIFO must not be opened at all (opening one blocks until something writes to it)."""

    suffixes = (".txt", ".md")

    def __init__(
        self,
        folder: str | Path,
        passage_chars: int = 800,
        max_files: int = 5000,
        max_file_bytes: int = MAX_DOCUMENT_BYTES,
        max_total_bytes: int = MAX_INDEX_BYTES,
    ):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise XtuneError(f"search documents: {self.folder} is not a folder")
        root = self.folder.resolve()
        self.passages: list[tuple[str, str]] = []  # (title, text)
        self.skipped: Counter[str] = Counter()
        paths = self._documents(root)
        self.skipped["file count cap"] += len(paths[max_files:])
        files = total = 0
        for path in paths[:max_files]:
            try:
                data = _read_inside(path, root, max_file_bytes, max_total_bytes - total)
            except _Skipped as skipped:
                self.skipped[skipped.args[0]] += 1
                continue
            files, total = files + 1, total + len(data)
            title = path.relative_to(self.folder).as_posix()
            text = data.decode("utf-8", errors="replace")
            self.passages.extend((title, passage) for passage in _passages(text, passage_chars))
        self.skipped = +self.skipped  # drop the zero counts
        why = {
            "outside": "link(s) leading out of the folder",
            "special": "special file(s) (FIFO, device, socket)",
            "unreadable": "unreadable file(s)",
            "file size cap": f"file(s) over the {_size(max_file_bytes)} cap per file",
            "total size cap": f"file(s) past the {_size(max_total_bytes)} cap on all files",
            "file count cap": f"file(s) past the {max_files}-file cap",
        }
        skipped = ", ".join(f"{self.skipped[reason]} {text}" for reason, text in why.items() if self.skipped[reason])
        self.summary = (
            f"search: indexed {files} file(s) ({_size(total)}, {len(self.passages)} passage(s)) in "
            f"{self.folder}" + (f"; skipped {skipped}" if skipped else "")
        )
        self._counts = [Counter(_tokens(f"{title} {text}")) for title, text in self.passages]
        self._lengths = [sum(c.values()) for c in self._counts]
        self._average = sum(self._lengths) / len(self._lengths) if self._lengths else 0.0
        self._frequency: Counter[str] = Counter()
        for counts in self._counts:
            self._frequency.update(counts.keys())

    def _documents(self, root: Path) -> list[Path]:
        """The candidate documents under the folder, sorted: names with a document suffix, outside hidden folders.
        Linked folders are not entered (a link back up would loop); one that leads out of the folder is counted."""
        paths = []
        for dirpath, dirnames, filenames in os.walk(self.folder):
            here = Path(dirpath)
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            for name in dirnames:
                if (here / name).is_symlink() and not _real_path(here / name).is_relative_to(root):
                    self.skipped["outside"] += 1
            documents = (name for name in filenames if Path(name).suffix.lower() in self.suffixes)
            paths += [here / name for name in documents if not name.startswith(".")]
        return sorted(paths)

    def search(self, query: str, k: int = 5) -> list[tuple[str, str]]:
        terms = set(_tokens(query))
        if not terms or not self.passages:
            return []
        n = len(self.passages)
        k1, b = 1.5, 0.75
        scores = []
        for i, counts in enumerate(self._counts):
            score = 0.0
            for term in terms:
                tf = counts.get(term, 0)
                if tf:
                    df = self._frequency[term]
                    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                    score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * self._lengths[i] / self._average))
            if score > 0:
                scores.append((score, i))
        scores.sort(key=lambda s: (-s[0], s[1]))
        return [(self.passages[i][0], _snippet(self.passages[i][1], terms)) for _, i in scores[:k]]


def _read_inside(path: Path, root: Path, max_bytes: int, budget: int) -> bytes:
    """The bytes of `path` if it resolves to a regular file under `root` of at most `max_bytes`, within the `budget`
    of bytes the index has left; otherwise raises _Skipped with the reason."""
    resolved = _real_path(path)
    if not resolved.is_relative_to(root):
        raise _Skipped("outside")
    try:
        checked = resolved.stat()
        if not stat.S_ISREG(checked.st_mode):  # before opening: a FIFO must never be opened
            raise _Skipped("special")
        _check_size(checked.st_size, max_bytes, budget)
        # Should the path change between the check and the open (a FIFO or a link put in its place), O_NONBLOCK
        # keeps the open from blocking, O_NOFOLLOW refuses a link, and the file opened must be the one checked.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        with open(os.open(resolved, flags), "rb") as file:
            opened = os.fstat(file.fileno())
            if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
                raise _Skipped("unreadable")
            data = file.read(min(max_bytes, budget) + 1)  # a size can lie (/proc files report 0) or grow
    except OSError:  # permissions, a broken link: search the rest
        raise _Skipped("unreadable") from None
    _check_size(len(data), max_bytes, budget)
    return data


def _size(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _real_path(path: Path) -> Path:
    """The path with every link followed; unlike Path.resolve, a link loop does not raise (the stat after it does)."""
    return Path(os.path.realpath(path))


def _check_size(size: int, max_bytes: int, budget: int) -> None:
    if size > max_bytes:
        raise _Skipped("file size cap")
    if size > budget:
        raise _Skipped("total size cap")


def _passages(text: str, size: int) -> Iterator[str]:
    """Paragraphs, merged up to `size` characters and cut where a single one is longer."""
    current = ""
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if current and len(current) + len(paragraph) + 2 > size:
            yield current
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
        while len(current) > size:
            yield current[:size]
            current = current[size:]
    if current:
        yield current


def _snippet(text: str, terms: set[str], width: int = 300) -> str:
    flat = " ".join(text.split())
    lowered = flat.lower()
    hits = [pos for term in terms if (pos := lowered.find(term)) >= 0]
    start = max(min(hits, default=0) - width // 4, 0)
    snippet = flat[start : start + width]
    return ("..." if start else "") + snippet + ("..." if start + width < len(flat) else "")


def _search(query: str, provider: SearchProvider | None = None, k: int = 5) -> str:
    if provider is None:
        raise ToolError("no documents configured; pass --search-docs DIR to search local documents")
    if not query.strip():
        raise ToolError("the query is empty")
    results = provider.search(query, k)
    if not results:
        return f"no documents match {query!r}"
    return "\n\n".join(f"[{i}] {title}\n{snippet}" for i, (title, snippet) in enumerate(results, 1))


def search(query: str, provider: SearchProvider | None = None, k: int = 5) -> str:
    """Search `provider` and list the best passages. Never raises: problems come back as 'error: ...' text."""
    try:
        return _search(query, provider, k)
    except ToolError as exc:
        return f"error: {exc}"
    except Exception as exc:  # a provider the user wrote (a web search, say) failing
        return f"error: search failed: {type(exc).__name__}: {exc}"


def default_registry(
    search_docs: str | None = None,
    *,
    search_provider: SearchProvider | None = None,
    solve_time_limit: float = SOLVE_TIME_LIMIT_S,
) -> ToolRegistry:
    """calculate, solve (within `solve_time_limit` seconds a call) and search. search looks in `search_docs` (or a
    provider the caller made, such as a web search with the user's key); with neither it tells the model that no
    documents are configured."""
    provider = search_provider or (LocalDocumentSearch(search_docs) if search_docs else None)
    registry = ToolRegistry()
    names = ", ".join(_CALC.functions)
    registry.register(
        Tool(
            "calculate",
            "Evaluate an arithmetic expression and return the number: exact for whole numbers, floating point "
            f"otherwise. Supports + - * / // % ** and parentheses, the functions {names} (log(x) is natural, "
            "log(x, base) any base; angles in radians) and the constants pi and e. No variables: use solve.",
            {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. '(3 + 4) * sqrt(2) / 7'"}},
                "required": ["expression"],
            },
            _calculate,
        )
    )
    registry.register(
        Tool(
            "solve",
            "Solve an equation or a system of equations exactly. One equation: 'x**2 - 4 = 0' (an expression "
            "without '=' means '= 0'); a system: equations separated by commas, 'x + y = 3, x - y = 1'. Write "
            "products with * (2*x) and powers with **. Returns e.g. 'x = -2; x = 2'.",
            {
                "type": "object",
                "properties": {
                    "equation": {"type": "string", "description": "the equation(s), e.g. 'x**2 - 4 = 0'"},
                    "variable": {
                        "type": "string",
                        "description": "the variable(s) to solve for, e.g. 'x' or 'x, y'; default: all of them",
                    },
                },
                "required": ["equation"],
            },
            functools.partial(_solve, time_limit=solve_time_limit),
        )
    )
    registry.register(
        Tool(
            "search",
            "Search the user's documents by keywords and return the best matching passages with their file names.",
            {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "keywords, e.g. 'LoRA rank alpha'"}},
                "required": ["query"],
            },
            functools.partial(_search, provider=provider),
        )
    )
    return registry


def build_registry(
    names: Sequence[str],
    search_docs: str | None = None,
    *,
    search_provider: SearchProvider | None = None,
    solve_time_limit: float = SOLVE_TIME_LIMIT_S,
) -> ToolRegistry:
    """The tools a chat offers: built-in ones by name, the user's own as 'module:function' or 'file.py:function'.
    search looks in `search_provider`, or else in the folder `search_docs`."""
    builtin = default_registry(search_docs, search_provider=search_provider, solve_time_limit=solve_time_limit)
    registry = ToolRegistry()
    for name in names:
        if is_user_tool(name):
            registry.register(load_tool(name))
        elif name in builtin:
            registry.register(builtin.get(name))
        else:
            raise XtuneError(
                f"unknown tool {name!r}; built-in tools: {', '.join(t.name for t in builtin.list())}, or your own "
                "as 'my_tools.py:my_function' (a typed function with a docstring)"
            )
    return registry
