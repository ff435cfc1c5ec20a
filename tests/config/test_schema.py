"""Loading YAML configs into the typed schema, `--set` overrides, and error messages a user can act on."""

import textwrap

import pytest

from xtune.config import Config, ConfigError, resolve_config
from xtune.config.schema import apply_override, load_config, validate_config

VALID = """\
model:
  path: builtin:tiny-llama
  method: lora
  lora:
    r: 8
data:
  datasets:
    - path: data/train.jsonl
      format: openai
  max_length: 512
training:
  lr: 0.001
  epochs: 2
"""


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line of `text` containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, hits
    return hits[0]


def test_valid_yaml_loads_with_values_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, VALID))
    assert isinstance(cfg, Config)
    assert cfg.model.path == "builtin:tiny-llama"
    assert cfg.model.lora.r == 8
    assert cfg.model.lora.alpha == 16.0  # schema default, not in the file
    assert cfg.data.datasets[0].path == "data/train.jsonl"
    assert cfg.data.datasets[0].format == "openai"
    assert cfg.data.max_length == 512
    assert cfg.training.lr == 0.001 and cfg.training.epochs == 2
    assert cfg.training.gradient_accumulation == 16  # default


def test_misspelled_top_level_section_key(tmp_path):
    text = VALID.replace("  lr: 0.001", "  lrr: 0.001")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:{line_of(text, 'lrr:')}:" in message
    assert "unknown key 'training.lrr'" in message
    assert "did you mean 'training.lr'" in message


def test_misspelled_nested_key(tmp_path):
    text = VALID.replace("    r: 8", "    rr: 8")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:{line_of(text, 'rr: 8')}:" in message
    assert "unknown key 'model.lora.rr'" in message
    assert "did you mean 'model.lora.r'" in message


def test_misspelled_key_inside_a_list_item(tmp_path):
    text = VALID.replace("      format: openai", "      foramt: openai")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:{line_of(text, 'foramt')}:" in message
    assert "did you mean 'data.datasets.0.format'" in message


def test_unknown_key_without_close_match_lists_known_keys(tmp_path):
    text = VALID + "saving:\n  zzzzzz: 1\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "unknown key 'saving.zzzzzz'" in message
    assert "known keys here: save_steps, save_total_limit" in message


def test_wrong_type_names_the_key_and_line(tmp_path):
    text = VALID.replace("  lr: 0.001", "  lr: fast")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:{line_of(text, 'lr: fast')}:" in message
    assert "'training.lr'" in message
    assert "'fast'" in message  # the offending value is shown


def test_wrong_type_in_a_union_field_names_the_users_key(tmp_path):
    """target_modules is `list[str] | 'all-linear'`: pydantic reports each union member in the error location;
    the message must still name the key as written in the YAML, not 'model.lora.target_modules.list[str]'."""
    text = VALID.replace("    r: 8", "    r: 8\n    target_modules: 5")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "'model.lora.target_modules'" in message
    assert "list[str]'" not in message and "literal[" not in message


def test_out_of_range_value_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"'model\.lora\.r'"):
        load_config(write(tmp_path, VALID.replace("    r: 8", "    r: 0")))


def test_missing_required_key(tmp_path):
    text = VALID.replace("  path: builtin:tiny-llama\n", "")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "missing required key 'model.path'" in message
    assert f"{path}:{line_of(text, 'model:')}:" in message  # the line of the section that lacks it


def test_missing_required_section():
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        validate_config({"model": {"path": "m"}})


def test_validator_epochs_or_steps():
    raw = {"model": {"path": "m"}, "data": {"datasets": [{"path": "d"}]}, "training": {"epochs": None}}
    with pytest.raises(ConfigError, match="training.epochs or training.max_steps"):
        validate_config(raw)
    raw["training"]["max_steps"] = 10
    assert validate_config(raw).training.max_steps == 10


def test_validator_repeat_or_weight():
    raw = {"model": {"path": "m"}, "data": {"datasets": [{"path": "d", "repeat": 2, "weight": 1}]}}
    with pytest.raises(ConfigError, match="repeat or weight"):
        validate_config(raw)


def test_not_a_mapping_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


def test_unreadable_config_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


# --- --set overrides -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.lr=0.5", 0.5),
        ("training.lr=3", 3),
        ("model.trust_remote_code=true", True),
        ("model.trust_remote_code=false", False),
        ("model.lora.target_modules=[q_proj, v_proj]", ["q_proj", "v_proj"]),
        ("data.system=Be brief.", "Be brief."),
        ("training.max_steps=null", None),
    ],
)
def test_apply_override_parses_the_value_as_yaml(override, expected):
    raw = {"training": {"lr": 1.0}, "model": {"path": "m"}}
    apply_override(raw, override)
    key = override.partition("=")[0].split(".")
    node = raw
    for part in key:
        node = node[part]
    assert node == expected and type(node) is type(expected)


def test_apply_override_creates_missing_sections_and_keeps_siblings():
    raw = {"model": {"path": "m", "method": "full"}}
    apply_override(raw, "model.lora.r=4")
    assert raw == {"model": {"path": "m", "method": "full", "lora": {"r": 4}}}


@pytest.mark.parametrize("override", ["training.lr", "=3", "  =3", ""])
def test_apply_override_bad_syntax(override):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, override)


def test_apply_override_through_a_value_is_rejected():
    raw = {"training": {"lr": 1.0}}
    with pytest.raises(ConfigError, match="'lr' is not a section"):
        apply_override(raw, "training.lr.x=1")


def test_overrides_reach_a_yaml_config(tmp_path):
    path = write(tmp_path, VALID)
    cfg = load_config(path, ["training.lr=1e-4", "model.gradient_checkpointing=true", "evaluation.inputs=[a, b]"])
    assert isinstance(cfg.training.lr, float) and cfg.training.lr == pytest.approx(1e-4)
    assert cfg.model.gradient_checkpointing is True
    assert cfg.evaluation.inputs == ["a", "b"]
    cfg2, name = resolve_config(str(path), ["data.max_length=64"])
    assert cfg2.data.max_length == 64 and name == "cfg"


def test_overrides_reach_a_preset():
    name = "tiny_assistant_lora"
    base, _ = resolve_config(name)
    cfg, work_name = resolve_config(
        name, ["training.lr=1e-4", "data.pack_to_max_length=true", "model.lora.target_modules=[q_proj]"]
    )
    assert work_name == name
    assert isinstance(cfg.training.lr, float) and cfg.training.lr == pytest.approx(1e-4) != base.training.lr
    assert cfg.data.pack_to_max_length is True and base.data.pack_to_max_length is False
    assert cfg.model.lora.target_modules == ["q_proj"]


def test_override_with_invalid_value_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"'training\.batch_size'"):
        resolve_config("tiny_assistant_lora", ["training.batch_size=many"])
    with pytest.raises(ConfigError, match="unknown key 'training.lrr'; did you mean 'training.lr'"):
        resolve_config("tiny_assistant_lora", ["training.lrr=1e-4"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        resolve_config("tiny_assistant_lora", ["training.lr"])


def test_every_key_has_a_description():
    """copy-cfg writes each key's description as its comment (schema.config_yaml): a key without one would be
    written bare."""
    from pydantic import BaseModel

    sections, seen, missing = [Config], set(), []
    while sections:
        section = sections.pop()
        seen.add(section)
        for name, field in section.model_fields.items():
            if not field.description:
                missing.append(f"{section.__name__}.{name}")
            for member in (field.annotation, *getattr(field.annotation, "__args__", ())):
                for inner in (member, *getattr(member, "__args__", ())):
                    if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
                        sections.append(inner)
    assert not missing
    assert len(seen) == 10  # Config and its nine sections, list items (DatasetSettings) included
