"""Reading an XTuner v0 config (an mmengine `.py`) as data with `ast`, never running it.

Module-level assignments become values: constants, lists and `dict(...)` as they are; imported names, and attributes
of them, stay names (`Ref`); any other call stays a `Call` that is described, never made; what the reader does not
evaluate (f-strings, comprehensions, unknown names) stays `Opaque`. Statements that only running the file would do
are listed with their line.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any

from xtune.errors import ConfigError


@dataclass(frozen=True)
class Ref:
    """An imported name, or an attribute of one: only ever named, never imported."""

    name: str

    @property
    def leaf(self) -> str:
        return self.name.rpartition(".")[2]


@dataclass
class Call:
    """A call in the config other than dict(...): described, never made."""

    func: str
    source: str
    line: int


@dataclass
class Opaque:
    """An expression the reader does not evaluate (f-strings, comprehensions, unknown names...)."""

    source: str
    line: int


class V0Dict(dict):
    """dict(...) from the config, with the line of each key and the keys a mapping consumed."""

    def __init__(self, line: int):
        super().__init__()
        self.line, self.lines, self.used = line, {}, set()

    def take(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.get(key, default)


@dataclass
class Unmapped:
    line: int
    key: str
    reason: str
    blocking: bool = False  # training this config without it would train something else

    def __str__(self) -> str:
        return f"{f'line {self.line}: ' if self.line else ''}{self.key}: {self.reason}"


class V0Reader:
    """Module-level statements of a v0 config into values, without running any of it."""

    def __init__(self, text: str, source: str):
        self.source = source
        try:
            self.tree = ast.parse(text, filename=source)
        except SyntaxError as e:
            raise ConfigError(f"{source}:{e.lineno}: not valid Python: {e.msg}") from None
        self.env: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.imports: dict[str, tuple[str, int]] = {}  # local name -> (module.name, line)
        self.referenced: set[str] = set()  # top-level names that other values use
        self.problems: list[Unmapped] = []
        for statement in self.tree.body:
            self._statement(statement)

    def _statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.partition(".")[0]
                target = alias.name if alias.asname else local
                self.env[local], self.imports[local] = Ref(target), (target, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                if alias.name == "*":
                    self.problems.append(Unmapped(node.lineno, f"from {module} import *", "star import not read"))
                    continue
                local = alias.asname or alias.name
                self.env[local] = Ref(f"{module}.{alias.name}")
                self.imports[local] = (f"{module}.{alias.name}", node.lineno)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            self.env[name], self.lines[name] = self._value(node.value), node.lineno
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name = node.target.id
            self.env[name], self.lines[name] = self._value(node.value), node.lineno
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and isinstance(node.op, ast.Add):
            name, old, more = node.target.id, self.env.get(node.target.id), self._value(node.value)
            if isinstance(old, list) and isinstance(more, list):
                self.env[name] = old + more
            else:
                self._problem(node, "`+=` of values the reader cannot add")
        elif isinstance(node, ast.If):
            test = self._value(node.test)
            if isinstance(test, bool) or test is None:
                for statement in node.body if test else node.orelse:
                    self._statement(statement)
            else:
                self._problem(node, "an `if` on a value only known when run")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            pass  # a docstring
        else:
            self._problem(node, "a statement that only running the config would do; not run")

    def _problem(self, node: ast.AST, reason: str) -> None:
        self.problems.append(Unmapped(node.lineno, f"`{_short(ast.unparse(node))}`", reason))

    def _value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.env:
                if node.id in self.lines:
                    self.referenced.add(node.id)
                return self.env[node.id]
            return Opaque(f"undefined name {node.id}", node.lineno)
        if isinstance(node, ast.Attribute):
            base = self._value(node.value)
            if isinstance(base, Ref):
                return Ref(f"{base.name}.{node.attr}")
            if isinstance(base, V0Dict) and node.attr in base:
                return base[node.attr]
            return Opaque(ast.unparse(node), node.lineno)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
                return self._dict(node.lineno, [(k.arg, k.value) for k in node.keywords])
            if isinstance(node.func, ast.Name) and node.func.id in _NUMBER_CASTS and node.func.id not in self.env:
                args = [self._value(a) for a in node.args]
                if len(args) == 1 and not node.keywords and number(args[0]):  # int(2048 - (336 / 14) ** 2)
                    return _NUMBER_CASTS[node.func.id](args[0])
            func = self._value(node.func) if isinstance(node.func, ast.Name | ast.Attribute) else None
            name = func.name if isinstance(func, Ref) else ast.unparse(node.func)
            return Call(name, ast.unparse(node), node.lineno)
        if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
            return self._dict(node.lineno, [(k.value, v) for k, v in zip(node.keys, node.values, strict=True)])
        if isinstance(node, ast.List | ast.Tuple):
            items = [self._value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
            operand = self._value(node.operand)
            if isinstance(node.op, ast.Not) and isinstance(operand, bool | None):
                return not operand
            if number(operand):
                return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            left, right = self._value(node.left), self._value(node.right)
            # arithmetic on config-sized numbers only, so that no expression can make reading the file slow
            small = all(abs(v) < 2**64 for v in (left, right) if number(v)) and not (
                isinstance(node.op, ast.Pow) and not (isinstance(right, int) and abs(right) <= 8)
            )
            if number(left) and number(right) and type(node.op) in _ARITHMETIC and small:
                try:
                    return _ARITHMETIC[type(node.op)](left, right)
                except (ArithmeticError, ValueError):
                    pass
            if isinstance(left, str) and isinstance(right, str) and isinstance(node.op, ast.Add):
                return left + right
        return Opaque(ast.unparse(node), node.lineno)

    def _dict(self, line: int, items: list[tuple[str | None, ast.expr]]) -> V0Dict | Opaque:
        out = V0Dict(line)
        for key, value in items:
            if key is None:  # dict(**other)
                return Opaque("dict(**...)", line)
            out[key], out.lines[key] = self._value(value), value.lineno
        return out


_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_NUMBER_CASTS = {"int": int, "float": float, "round": round}


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def describe(value: Any) -> str:
    if isinstance(value, Ref):
        return value.name
    if isinstance(value, Call | Opaque):
        return _short(value.source)
    if isinstance(value, V0Dict):
        kind = value.get("type")
        return f"dict(type={describe(kind)}, ...)" if kind is not None else "dict(...)"
    return _short(repr(value))
