"""Presets: every one validates, names say what they contain, list/copy/resolve behave as documented."""

import fnmatch
import re

import pytest

from xtune.cli import main
from xtune.config import ConfigError, list_presets, resolve_config
from xtune.config.presets import (
    DATASETS,
    FAMILIES,
    METHODS,
    PREFERENCE_PRESETS,
    PRESETS,
    TINY_METHODS,
    get_preset,
    merge,
)
from xtune.config.schema import Config, TrainingSettings, load_config, parse_yaml

EXPECTED_TEMPLATE = {"internlm2": "internlm2_chat", "qwen2": "qwen_chat", "llama3": "llama3_chat"}
EXPECTED_FORMAT = {"alpaca": "alpaca", "oasst1": "oasst1"}


LLAVA_NAMES = {
    "llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain",
    "llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune",
}
LLAVA_STAGE1 = {  # stage 2 preset -> the stage 1 preset whose projector it starts from
    "llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune": (
        "llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain"
    ),
    "tiny_llava_lora_finetune": "tiny_llava_pretrain",
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    cfg, work_name = resolve_config(name)
    assert work_name == name
    assert cfg.data.datasets and cfg.model.path


def test_every_family_method_dataset_combination_is_a_preset():
    expected = {f"{f}_{m}_{d}_e3" for f in FAMILIES for m in METHODS for d in DATASETS}
    expected |= {f"tiny_assistant_{m}" for m in TINY_METHODS} | {"tiny_assistant_dpo", *PREFERENCE_PRESETS}
    expected |= {"tiny_llava_pretrain", "tiny_llava_lora_finetune", *LLAVA_NAMES}
    assert set(PRESETS) == expected
    # the XTuner names users know
    assert "internlm2_chat_7b_qlora_oasst1_e3" in PRESETS
    assert "llama3_8b_instruct_full_alpaca_e3" in PRESETS


def test_preset_names_match_their_contents():
    """`<family>_<method>_<dataset>_e3`: the parts of the name are the model family, the method, the dataset
    and 3 epochs, as in XTuner; the tiny demo presets are `tiny_assistant_<method>` and use max_steps."""
    pattern = re.compile(
        rf"^(?P<family>{'|'.join(FAMILIES)})_(?P<method>{'|'.join(METHODS)})_(?P<dataset>{'|'.join(DATASETS)})_e3$"
    )
    for name in PRESETS:
        cfg, _ = resolve_config(name)
        if name.startswith("tiny_assistant_"):
            kind = name.removeprefix("tiny_assistant_")
            assert kind in (cfg.model.method, cfg.training.objective)
            assert cfg.training.epochs is None and cfg.training.max_steps
            continue
        if cfg.training.objective != "sft":  # <family>_[<method>_]<objective>_<full|dataset...>, as XTuner's
            assert f"_{cfg.training.objective}_" in name and cfg.model.method in name
            assert {d.format for d in cfg.data.datasets} == {"preference_conversations"}
            continue
        if "llava" in name:  # stage 1 trains the projector alone, stage 2 starts from its output
            assert cfg.model.vision is not None and {d.format for d in cfg.data.datasets} == {"llava"}
            pretrain = name.endswith("_pretrain")
            assert cfg.model.method == ("frozen" if pretrain else "qlora" if "qlora" in name else "lora")
            assert (cfg.model.vision.projector_path is None) == pretrain
            if not pretrain:
                assert cfg.model.vision.projector_path == f"work_dirs/{LLAVA_STAGE1[name]}/final"
            assert cfg.model.vision.lora == ("_lora_e1" in name)
            continue
        match = pattern.match(name)
        assert match, f"{name} does not follow <family>_<method>_<dataset>_e3"
        assert cfg.model.method == match["method"]
        assert cfg.training.epochs == 3
        family = match["family"]
        assert cfg.data.template == next(t for prefix, t in EXPECTED_TEMPLATE.items() if family.startswith(prefix))
        assert [d.format for d in cfg.data.datasets] == [EXPECTED_FORMAT[match["dataset"]]]
        if match["method"] == "full":
            assert cfg.training.lr < 1e-4  # full fine-tuning uses a much smaller lr than LoRA
        else:
            assert cfg.model.lora.r == 64


def test_get_preset_returns_an_independent_copy():
    name = "tiny_assistant_full"
    preset = get_preset(name)
    preset["training"]["lr"] = 123.0
    preset["data"]["datasets"].append({"path": "x"})
    assert get_preset(name)["training"]["lr"] != 123.0
    assert len(PRESETS[name]["data"]["datasets"]) == 1


def test_merge_is_deep_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    out = merge(base, {"a": {"c": [3]}}, {"a": {"e": 5}})
    assert out == {"a": {"b": 1, "c": [3], "e": 5}, "d": 0}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 0}  # inputs untouched


def test_list_presets_all_sorted():
    assert list_presets() == sorted(PRESETS)
    assert list_presets(None) == list_presets("")


def test_list_presets_substring():
    names = list_presets("qlora_oasst1")
    assert names == sorted(n for n in PRESETS if "qlora_oasst1" in n)
    assert len(names) == len(FAMILIES)


def test_list_presets_glob():
    names = list_presets("internlm2*_full_*")
    assert names == sorted(n for n in PRESETS if n.startswith("internlm2") and "_full_" in n)
    assert len([n for n in names if n.endswith("_e3")]) == 2 * len(DATASETS)  # two internlm2 sizes (and a reward model)
    # a glob is anchored: '*qlora' matches only names that end in qlora
    assert list_presets("*qlora") == ["tiny_assistant_qlora"]
    assert list_presets("qwen2_?_5b*") == [n for n in sorted(PRESETS) if fnmatch.fnmatch(n, "qwen2_1_5b*")]
    assert list_presets("no-such-thing") == []


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ConfigError) as info:
        resolve_config("internlm2_chat_7b_qlora_alpaca_e2")
    message = str(info.value)
    assert "neither a config file nor a preset name" in message
    assert "Did you mean: internlm2_chat_7b_qlora_alpaca_e3" in message


def test_unknown_name_without_close_match_points_to_list_cfg():
    with pytest.raises(ConfigError, match="xtune list-cfg"):
        resolve_config("zzzz")


# --- the CLI: list-cfg and copy-cfg ----------------------------------------------------------------------------


def test_cli_list_cfg_with_pattern(capsys):
    main(["list-cfg", "-p", "tiny"])
    assert capsys.readouterr().out.split() == sorted(n for n in PRESETS if "tiny" in n)


def test_cli_list_cfg_without_match_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["list-cfg", "-p", "nothing-like-this"])
    assert info.value.code == 2
    assert "no preset matches" in capsys.readouterr().err


COPIED = [
    "internlm2_chat_1_8b_qlora_alpaca_e3",
    "qwen2_7b_instruct_full_oasst1_e3",
    "tiny_assistant_lora",  # max_steps instead of epochs
    "tiny_llava_lora_finetune",
    "llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune",
]


@pytest.mark.parametrize("name", COPIED)
def test_cli_copy_cfg_round_trips(tmp_path, capsys, name):
    out_dir = tmp_path / "configs"
    main(["copy-cfg", name, str(out_dir)])
    written = out_dir / f"{name}_copy.yaml"
    assert str(written) in capsys.readouterr().out
    cfg = resolve_config(name)[0]
    assert load_config(written) == cfg
    cfg_from_file, work_name = resolve_config(str(written))
    assert cfg_from_file == cfg and work_name == f"{name}_copy"
    # every key, defaults included, in the schema's order (model first), not only the keys the preset sets
    raw = parse_yaml(written.read_text(encoding="utf-8"))
    assert raw == cfg.model_dump()
    assert list(raw) == list(Config.model_fields) and list(raw["training"]) == list(TrainingSettings.model_fields)
    assert [p.name for p in out_dir.iterdir()] == [written.name]  # no temporary file left behind


def test_cli_copy_cfg_comments_every_key_with_its_schema_description(tmp_path):
    name = "tiny_assistant_lora"
    main(["copy-cfg", name, str(tmp_path)])
    lines = (tmp_path / f"{name}_copy.yaml").read_text(encoding="utf-8").splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"\s*(- )?\w+:", line)]
    assert len(keys) == len(_schema_keys(Config, resolve_config(name)[0]))  # every key of the resolved config
    for i in keys:
        assert lines[i - 1].lstrip().startswith("# "), lines[i]
    text = "\n".join(lines)
    for section, key, value in [
        ("training", "max_steps", "300"),
        ("data", "system", "null"),
        ("model", "random_init", "true"),
    ]:
        description = Config.model_fields[section].annotation.model_fields[key].description
        assert f"  # {description}\n  {key}: {value}\n" in text


def _schema_keys(model_type, value) -> list[str]:
    """Every key a config's YAML holds: each field, and the fields of the sections and list items below it."""
    keys = []
    for name in model_type.model_fields:
        keys.append(name)
        child = getattr(value, name)
        items = child if isinstance(child, list) else [child]
        for item in items:
            if hasattr(type(item), "model_fields"):
                keys += _schema_keys(type(item), item)
    return keys


def test_copy_cfg_help_explains_its_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["copy-cfg", "--help"])
    out = capsys.readouterr().out
    assert "the preset to copy (xtune list-cfg)" in out and "NAME_copy.yaml" in out and "overwrite" in out


def test_cli_copy_cfg_refuses_to_overwrite_without_force(tmp_path, capsys):
    name = "tiny_assistant_full"
    written = tmp_path / f"{name}_copy.yaml"
    written.write_text("# my edits\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(["copy-cfg", name, str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and str(written) in err
    assert written.read_text(encoding="utf-8") == "# my edits\n"

    main(["copy-cfg", name, str(tmp_path), "--force"])
    assert load_config(written) == resolve_config(name)[0]


def test_cli_copy_cfg_unknown_name_suggests(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["copy-cfg", "tiny_assistant_lroa", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "Did you mean: tiny_assistant_lora" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
