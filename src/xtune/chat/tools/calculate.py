"""calculate: arithmetic from model output, and the AST whitelist that solve parses with too.

Nothing here evals or execs what the model writes. XTuner's Calculate plugin ran Python `eval` on model output, and a
model (or a prompt injected into its context by a document it read) can write `__import__('os').system(...)` as easily
as `2+2`. The input is parsed with `ast` and the tree walked here, admitting only numbers, arithmetic and a whitelist
of math functions, with bounds on size so that hostile input can neither run code nor hang the chat.
"""

from __future__ import annotations

import ast
import decimal
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xtune.chat.tools.registry import ToolError

MAX_EXPRESSION_CHARS = 500
MAX_DEPTH = 50  # nodes from the root; a walker that recurses needs a bound, and real arithmetic is shallow
MAX_EXPONENT = 1000
MAX_RESULT_LOG10 = 10_000  # refuse a ** b whose result would exceed ~10**10000, before computing it
MAX_FACTORIAL = 1000
MAX_INT_DIGITS = 10_000
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10)) + 1  # bit_length is free; counting decimal digits is not
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
class Grammar:
    tool: str
    functions: dict[str, tuple[int, int | None]]  # name -> (fewest, most arguments); None: no limit
    constants: frozenset[str]
    operators: tuple[type, ...]  # a tuple: messages list them in a stable order
    variables: bool

    def hint(self) -> str:
        ops = " ".join(_OPERATORS[op] for op in self.operators)
        names = ", ".join(self.functions)
        return f"{self.tool} accepts numbers, {ops}, parentheses, the functions {names} and the constants pi, e"


CALC = Grammar(
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
VARIABLE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,19}")  # no underscores: no dunders, nothing Python-special


def parse(text: str, grammar: Grammar) -> ast.expr:
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


def _check(node: ast.AST, depth: int, grammar: Grammar) -> None:
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
        if node.id not in grammar.constants and not (grammar.variables and VARIABLE.fullmatch(node.id)):
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


def log10_abs(value: int | float) -> float:
    return math.log10(abs(value))  # exact enough for ints of any size: math.log10 accepts big ints


def _power(base: int | float, exponent: int | float) -> int | float:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"the exponent {_brief(exponent)} is too large (the limit is {MAX_EXPONENT})")
    if base != 0 and exponent > 0:
        magnitude = exponent * log10_abs(base)
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
    """Evaluate a tree that passed _check with CALC; its depth is bounded, so the recursion is too."""
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


def format_number(value: int | float) -> str:
    if isinstance(value, int):
        # str() of an int over sys.get_int_max_str_digits() (4300) digits raises; Decimal's conversion does not.
        return str(decimal.Decimal(value)) if value.bit_length() > 10_000 else str(value)
    return repr(value)


def calculate_or_raise(expression: str) -> str:
    """calculate as the registry calls it: a ToolError, which the registry turns into an error result."""
    return format_number(_evaluate(parse(expression, CALC)))


def calculate(expression: str) -> str:
    """Evaluate arithmetic exactly (ints) or as floats. Never raises: problems come back as 'error: ...' text."""
    try:
        return calculate_or_raise(expression)
    except ToolError as exc:
        return f"error: {exc}"
    except Exception as exc:  # a bug of ours; the model still gets an answer it can read, and the tests look for it
        return f"error: internal error ({type(exc).__name__}: {exc})"
