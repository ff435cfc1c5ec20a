"""The built-in tools by name, and the registry a chat offers. Apart from registry.py so that it can import the tools,
which import ToolError from there."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from xtune.chat.tools.calculate import CALC, calculate_or_raise
from xtune.chat.tools.registry import Tool, ToolRegistry, is_user_tool, load_tool
from xtune.chat.tools.search import LocalDocumentSearch, SearchProvider, search_or_raise
from xtune.chat.tools.solve import SOLVE_TIME_LIMIT_S, solve_or_raise
from xtune.errors import XtuneError


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
    names = ", ".join(CALC.functions)
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
            calculate_or_raise,
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
            functools.partial(solve_or_raise, time_limit=solve_time_limit),
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
            functools.partial(search_or_raise, provider=provider),
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
