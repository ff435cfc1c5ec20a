"""Tools the chat model can call: a registry that checks arguments (registry), and the built-in calculate, solve and
search, each in its own module. How a call is written in each model family's format lives with the templates
(xtune.templates.tool_calls).

Nothing here evals or execs what the model writes: calculate and solve walk an `ast` whitelist (see calculate.py).
"""

from xtune.chat.tools.builtin import build_registry, default_registry
from xtune.chat.tools.calculate import calculate
from xtune.chat.tools.registry import Tool, ToolError, ToolRegistry, ToolResult, is_user_tool, load_tool
from xtune.chat.tools.search import LocalDocumentSearch, SearchProvider, search
from xtune.chat.tools.solve import SOLVE_TIME_LIMIT_S, solve

__all__ = [
    "SOLVE_TIME_LIMIT_S",
    "LocalDocumentSearch",
    "SearchProvider",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "build_registry",
    "calculate",
    "default_registry",
    "is_user_tool",
    "load_tool",
    "search",
    "solve",
]
