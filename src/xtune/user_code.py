"""Loading a function the user names in a config or on the command line: `package.module:function` or
`path/to/file.py:function`. The user names the code, so running it is their choice (as with their own map
functions and tools); nothing here evaluates strings."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

from xtune.errors import ConfigError


def load_function(spec: str, purpose: str, base_dir: Path | None = None) -> Callable:
    """`purpose` names what the function is for in error messages ("dataset format", "tool")."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{purpose} {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(f"{purpose} {spec!r}: file {path} not found")
        module_name = f"xtune_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"{purpose} {spec!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ConfigError(f"{purpose} {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ConfigError(f"{purpose} {spec!r}: cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{purpose} {spec!r}: {target} has no function {attr!r}")
    return fn
