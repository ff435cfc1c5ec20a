"""solve: equations from model output, built into sympy from a checked AST (never a string), within a time limit."""

from __future__ import annotations

import ast
import contextlib
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from xtune.chat.tools.calculate import (
    CALC,
    MAX_EXPONENT,
    MAX_EXPRESSION_CHARS,
    MAX_RESULT_LOG10,
    VARIABLE,
    Grammar,
    format_number,
    log10_abs,
    parse,
)
from xtune.chat.tools.registry import ToolError

MAX_EQUATIONS = 10
MAX_VARIABLES = 10
MAX_DEGREE = 100  # a numeric power of a variable: x**100 at most
# sympy.solve can run for minutes on a legal degree-20 polynomial. The limit covers the whole call, so that a chat
# turn waits at most this long per solve call; a quarter of it is kept for what follows a miss or an empty answer
# (numeric roots, telling "no solution" from an identity). Set with evaluation.solve_time_limit / --solve-time-limit.
SOLVE_TIME_LIMIT_S = 2.0
SOLVE = Grammar(
    tool="solve",
    functions={name: arity for name, arity in CALC.functions.items() if name not in ("round", "factorial")},
    constants=frozenset({"pi", "e"}),
    operators=(ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow),
    variables=True,
)


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
        return log10_abs(int(value.p)) - log10_abs(int(value.q))
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
        text = format_number(int(value)) if isinstance(value, sympy.Integer) else sympy.sstr(value)
    except ValueError:  # an integer over int_max_str_digits (4300) inside: show it in floating point
        text = sympy.sstr(sympy.N(value, 15))
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _to_sympy(node: ast.expr) -> Any:
    """Build the sympy expression from a tree that passed _check with SOLVE. No strings reach sympy: sympify and
    parse_expr eval their input, which is exactly what this module must never do with model output."""
    import sympy

    if isinstance(node, ast.Constant):
        return sympy.Integer(node.value) if isinstance(node.value, int) else sympy.Float(node.value)
    if isinstance(node, ast.Name):
        if node.id in SOLVE.constants:
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


def solve_or_raise(equation: str, variable: str | None = None, *, time_limit: float = SOLVE_TIME_LIMIT_S) -> str:
    """solve as the registry calls it: a ToolError, which the registry turns into an error result."""
    import sympy

    if len(equation) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the input is {len(equation)} characters long; the limit is {MAX_EXPRESSION_CHARS}")
    parts = [p for p in _split_top_level(equation, ",") if p.strip()]
    if not parts:
        raise ToolError("the equation is empty; write e.g. 'x**2 - 4 = 0' or 'x + y = 3, x - y = 1'")
    if len(parts) > MAX_EQUATIONS:
        raise ToolError(f"{len(parts)} equations; the limit is {MAX_EQUATIONS}")
    sides = [_split_equation(part) for part in parts]
    trees = [(parse(lhs, SOLVE), parse(rhs, SOLVE)) for lhs, rhs in sides]
    # The variables as written: sympy's simplification may cancel some (x = x), which is still about x.
    written = sorted(
        {n.id for tree in (t for pair in trees for t in pair) for n in ast.walk(tree) if isinstance(n, ast.Name)}
        - SOLVE.constants
        - set(SOLVE.functions)  # the names of called functions are Name nodes too
    )
    if variable is not None and variable.strip():
        names = [v.strip() for v in variable.split(",")]
        bad = [n for n in names if not VARIABLE.fullmatch(n)]
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
        return solve_or_raise(equation, variable, time_limit=time_limit)
    except ToolError as exc:
        return f"error: {exc}"
    except Exception as exc:  # a bug of ours; the model still gets an answer it can read
        return f"error: internal error ({type(exc).__name__}: {exc})"
