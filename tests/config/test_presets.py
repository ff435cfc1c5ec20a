"""Presets: every one validates, names say what they contain, list/copy/resolve behave as documented."""

import re

import pytest

from xtune.cli import main
from xtune.config import ConfigError, list_presets, resolve_config
from xtune.config.presets import DATASETS, FAMILIES, METHODS, PRESETS, TINY_METHODS, get_preset, merge
from xtune.config.schema import Config, TrainingSettings, load_config, parse_yaml
from xtune.templates import get_template

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


def test_every_family_method_dataset_combination_is_a_preset():
    expected = {
        f"{f}_{m}_{d}_e{part['training']['epochs']}" for f in FAMILIES for m in METHODS for d, part in DATASETS.items()
    }
    expected |= {f"{f}_{m}_oasst1_512_e3" for f in FAMILIES for m in METHODS}
    expected |= {f"tiny_assistant_{m}" for m in TINY_METHODS}
    expected |= {"tiny_llava_pretrain", "tiny_llava_lora_finetune", *LLAVA_NAMES}
    assert set(PRESETS) == expected
    # the XTuner names users know
    for name in (
        "internlm2_chat_7b_qlora_oasst1_e3",
        "llama3_8b_instruct_full_alpaca_e3",
        "internlm_20b_qlora_oasst1_512_e3",
    ):
        assert name in PRESETS


V0_NAME = re.compile(
    rf"^(?P<family>{'|'.join(FAMILIES)})_(?P<method>{'|'.join(METHODS)})_(?P<dataset>{'|'.join(DATASETS)})"
    r"(?P<short>_512)?_e(?P<epochs>\d+)$"
)


def test_every_preset_validates_resolves_its_template_and_matches_its_name():
    """The walk: every listed preset builds a valid config whose template exists, and its name says what it holds:
    `<family>_<method>_<dataset>[_512]_e<N>` as in XTuner v0; the demos are `tiny_assistant_<method>`, the LLaVA
    stages as XTuner's."""
    for name in PRESETS:
        cfg, work_name = resolve_config(name)
        assert work_name == name
        assert get_template(cfg.data.template).name == cfg.data.template, name
        assert cfg.data.datasets and cfg.model.path
        if name.startswith("tiny_assistant_"):
            assert cfg.model.method == name.removeprefix("tiny_assistant_")
            assert cfg.training.epochs is None and cfg.training.max_steps
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
        match = V0_NAME.match(name)
        assert match, f"{name} does not follow <family>_<method>_<dataset>[_512]_e<N>"
        family, dataset = FAMILIES[match["family"]], DATASETS[match["dataset"]]
        assert cfg.model.method == match["method"]
        assert cfg.training.epochs == int(match["epochs"]) == dataset["training"]["epochs"]
        assert cfg.data.max_length == (512 if match["short"] else 2048)
        assert cfg.data.template == family["data"]["template"]
        assert cfg.model.path == family["model"]["path"]
        assert cfg.model.trust_remote_code == family["model"].get("trust_remote_code", False)
        assert [d.model_dump(include={"path", "format"}) for d in cfg.data.datasets] == dataset["data"]["datasets"]
        if match["method"] == "full":
            assert cfg.training.lr < 1e-4  # full fine-tuning uses a much smaller lr than LoRA
        else:
            assert cfg.model.lora.r == 64


def test_only_families_transformers_lacks_run_remote_code():
    remote = {name for name, part in FAMILIES.items() if part["model"].get("trust_remote_code")}
    assert {n.split("_")[0] for n in remote} == {
        "internlm",
        "qwen",
        "deepseek",
        "chatglm3",
        "baichuan",
        "baichuan2",
        "minicpm",
    }
    assert {n for n in remote if n.startswith("deepseek")} == {"deepseek_moe_16b_base", "deepseek_moe_16b_chat"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("internlm_20b_qlora_oasst1_512_e3", {"max_length": 512, "epochs": 3}),
        ("internlm2_chat_7b_qlora_alpaca_e1", {"epochs": 1}),
        ("internlm2_chat_7b_qlora_msagent_react_e3_gpu8", {"gradient_accumulation": 2}),
        ("llama3_70b_instruct_qlora_alpaca_e3_2k_gpu8", {"max_length": 2048, "gradient_accumulation": 2}),
        ("llama3_70b_qlora_alpaca_e3_z3_8k", {"max_length": 8192, "deepspeed": "zero3"}),
        ("mistral_7b_full_finetune_custom_sft_e1", {"epochs": 1, "format": "openai"}),
        ("deepseekcoder_6_7b_instruct_qlora_custom_sft_e1", {"epochs": 1, "template": "deepseek_coder"}),
        (
            "qwen1_5_7b_chat_full_alpaca_512_e2_gpu8_varlenattn",
            {"max_length": 512, "epochs": 2, "gradient_accumulation": 2, "varlen": True},
        ),
    ],
)
def test_v0_name_options_resolve_by_name(name, expected):
    cfg, _ = resolve_config(name)
    assert cfg.data.max_length == expected.get("max_length", 2048)
    assert cfg.training.epochs == expected.get("epochs", 3)
    assert cfg.training.gradient_accumulation == expected.get("gradient_accumulation", 16)
    assert (cfg.model.attn_implementation == "flash_attention_2") == expected.get("varlen", False)
    assert cfg.training.deepspeed == expected.get("deepspeed")
    assert cfg.data.datasets[0].format == expected.get("format", cfg.data.datasets[0].format)
    assert cfg.data.template == expected.get("template", cfg.data.template)


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
    names = list_presets("qlora_oasst1_e3")
    assert names == sorted(n for n in PRESETS if "qlora_oasst1_e3" in n)
    assert len(names) == len(FAMILIES)


def test_list_presets_glob():
    names = list_presets("internlm2_chat_7b_full_*")
    assert names == sorted(n for n in PRESETS if n.startswith("internlm2_chat_7b_full_"))
    assert len(names) == len(DATASETS) + 1  # oasst1 twice: _e3 and _512_e3
    # a glob is anchored: '*qlora' matches only names that end in qlora
    assert list_presets("*qlora") == ["tiny_assistant_qlora"]
    assert list_presets("qwen2_?_5b*") == [n for n in sorted(PRESETS) if n.startswith(("qwen2_0_5b", "qwen2_1_5b"))]
    assert list_presets("no-such-thing") == []


def test_unknown_preset_suggests_close_names_and_says_what_is_unknown():
    with pytest.raises(ConfigError) as info:
        resolve_config("internlm2_chat_7b_qlora_alpacca_e3")
    message = str(info.value)
    assert "neither a config file nor a preset name. no dataset 'alpacca'; datasets: alpaca, " in message
    assert "Did you mean: internlm2_chat_7b_qlora_alpaca_e3" in message


def test_unknown_name_without_close_match_points_to_list_cfg():
    with pytest.raises(ConfigError, match="xtune list-cfg"):
        resolve_config("zzzz")


# --- the CLI: list-cfg and copy-cfg ----------------------------------------------------------------------------


def test_cli_list_cfg_with_pattern(capsys):
    main(["list-cfg", "-p", "tiny"])
    assert capsys.readouterr().out.split() == sorted(n for n in PRESETS if "tiny" in n)


def test_cli_list_cfg_lists_the_course_presets(capsys):
    """The course's `xtuner list-cfg -p internlm_20b`, then `xtuner train internlm_20b_qlora_oasst1_512_e3`."""
    main(["list-cfg", "-p", "internlm_20b"])
    listed = capsys.readouterr().out.split()
    assert "internlm_20b_qlora_oasst1_512_e3" in listed
    assert {"internlm_20b_qlora_oasst1_e3", "internlm_20b_qlora_alpaca_e3", "internlm_20b_qlora_colorist_e5"} < set(
        listed
    )
    assert all(name.startswith("internlm_20b_") for name in listed)
    main(["list-cfg", "-p", "internlm2_chat_7b_qlora_alpaca_e1_gpu8"])  # a v0 name with options the list leaves out
    assert capsys.readouterr().out.split() == ["internlm2_chat_7b_qlora_alpaca_e1_gpu8"]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("chatglm2_6b_qlora_alpaca_e3", "XTuner v0's chatglm2_6b family has no xtune preset: ChatGLM2's '[Round N]'"),
        ("minicpm3_4b", "XTuner v0's minicpm3_4b family has no xtune preset: MiniCPM3's chat format"),
        ("internlm_20b_qlora_moss_sft_all_e1", "XTuner v0's moss_sft dataset has no xtune preset: MOSS-003-SFT"),
        ("internlm2_chat_7b_dpo", "XTuner v0's dpo dataset has no xtune preset: preference training: arriving"),
        ("llama2_70b_int8_lora_open_platypus_e1", "XTuner v0's int8 method has no xtune preset: 8-bit LoRA"),
    ],
)
def test_cli_list_cfg_says_which_v0_family_or_dataset_is_missing(capsys, pattern, reason):
    with pytest.raises(SystemExit) as info:
        main(["list-cfg", "-p", pattern])
    assert info.value.code == 2
    assert f"xtune: error: no preset matches {pattern!r}: {reason}" in capsys.readouterr().err


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
