"""Configs: the typed schema, presets built from parts, and resolving a CONFIG argument."""

from __future__ import annotations

import difflib
from pathlib import Path

from xtune.config.presets import PRESETS, get_preset, list_presets, missing_reason
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
    if path.suffix == ".py":
        return v0_config(path, overrides), path.stem
    if path.suffix in {".yaml", ".yml"} or path.exists():
        return load_config(path, overrides), path.stem
    if name_or_path in PRESETS:
        raw = get_preset(name_or_path)
        for override in overrides:
            apply_override(raw, override)
        return validate_config(raw, source=f"preset {name_or_path}"), name_or_path
    missing = missing_reason(name_or_path)
    close = difflib.get_close_matches(name_or_path, list(PRESETS), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See `xtune list-cfg`."
    if missing:
        hint = f" {missing}.{hint}"
    raise ConfigError(f"{name_or_path!r} is neither a config file nor a preset name.{hint}")


def v0_config(path: Path, overrides: list[str] = ()) -> Config:
    """An XTuner v0 .py config, converted as it is read (never run); refused where what is not mapped would make
    it train something else."""
    from xtune.config.xtuner_v0 import convert_v0_config

    conversion = convert_v0_config(path)
    if conversion.blocking:
        raise ConfigError(
            f"{path}: this XTuner v0 config cannot train in xtune as it is: "
            + "; ".join(str(u) for u in conversion.blocking)
        )
    raw = conversion.raw
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw, source=f"{path} (converted from XTuner v0)")


def preset_yaml(name: str) -> str:
    """A preset as the YAML `xtune copy-cfg` writes: every key, defaults included, each under its description."""
    cfg = validate_config(get_preset(name), source=f"preset {name}")
    header = (
        f"# xtune config, copied from preset {name}, with every key and its default.\n"
        "# Edit freely; `xtune train THIS_FILE` runs it.\n\n"
    )
    return header + config_yaml(cfg)
