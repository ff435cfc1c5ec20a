"""Configs: the typed schema, presets built from parts, and resolving a CONFIG argument."""

from __future__ import annotations

import difflib
from pathlib import Path

from xtune.config.presets import PRESETS, get_preset, is_preset, list_presets
from xtune.config.schema import (
    CONFIG_FILE,
    Config,
    ConfigError,
    apply_override,
    config_yaml,
    load_config,
    validate_config,
)

__all__ = ["CONFIG_FILE", "Config", "ConfigError", "resolve_config", "list_presets", "get_preset", "preset_yaml"]


def resolve_config(name_or_path: str, overrides: list[str] = ()) -> tuple[Config, str]:
    """A CONFIG argument is a YAML path or a preset name; returns the config and a name for its work dir."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        return load_config(path, overrides), path.stem
    if is_preset(name_or_path):
        raw = get_preset(name_or_path)
        for override in overrides:
            apply_override(raw, override)
        return validate_config(raw, source=f"preset {name_or_path}"), name_or_path
    close = difflib.get_close_matches(name_or_path, list(PRESETS), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See `xtune list-cfg`."
    raise ConfigError(f"{name_or_path!r} is neither a config file nor a preset name.{hint}")


def preset_yaml(name: str) -> str:
    """A preset as the YAML `xtune copy-cfg` writes: every key, defaults included, each under its description."""
    cfg = validate_config(get_preset(name), source=f"preset {name}")
    header = (
        f"# xtune config, copied from preset {name}, with every key and its default.\n"
        "# Edit freely; `xtune train THIS_FILE` runs it.\n\n"
    )
    return header + config_yaml(cfg)
