"""`--deepspeed`'s mistakes are the flag's: an unknown name is refused naming the flag and the choices (not the
config file), XTuner's names (`deepspeed_zero2`) are accepted, and a missing DeepSpeed is reported before any work.
No case trains: the recipe is replaced by one that records the config it was given."""

from __future__ import annotations

import pytest

from xtune.cli import main
from xtune.config.presets import get_preset, merge
from xtune.config.schema import validate_config
from xtune.train import deepspeed_engine, recipe


class Started(BaseException):  # not an Exception: main() would report it as an error
    pass


@pytest.fixture
def started(monkeypatch) -> list:
    """The configs training was started with (it stops right there)."""
    configs = []

    def record(cfg, work_dir, *args, **kwargs):
        configs.append(cfg)
        raise Started

    monkeypatch.setattr(recipe, "FinetuneRecipe", record)
    return configs


def train(tmp_path, *flags: str) -> None:
    main(["train", "tiny_assistant_full", "--work-dir", str(tmp_path / "work"), *flags])


@pytest.mark.parametrize("name, builtin", [("deepspeed_zero2", "zero2"), ("deepspeed_zero3_offload", "zero3_offload")])
def test_xtuner_names_are_accepted(tmp_path, started, name, builtin):
    with pytest.raises(Started):
        train(tmp_path, "--deepspeed", name)
    [cfg] = started
    assert (cfg.training.engine, cfg.training.deepspeed) == ("deepspeed", builtin)


def test_xtuner_names_are_accepted_in_the_config():
    raw = merge(
        get_preset("tiny_assistant_full"), {"training": {"engine": "deepspeed", "deepspeed": "deepspeed_zero1"}}
    )
    assert validate_config(raw).training.deepspeed == "zero1"


def test_an_unknown_name_is_the_flag_s_mistake(tmp_path, started, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path, "--deepspeed", "zero9")
    assert exit_info.value.code == 2 and started == []
    assert capsys.readouterr().err == (
        "xtune: error: --deepspeed zero9: choose zero1, zero2, zero2_offload, zero3, zero3_offload (or XTuner's "
        "deepspeed_zero2 and the like), or a .json file\n"
    )


def test_a_missing_json_file_is_named(tmp_path, started, capsys):
    with pytest.raises(SystemExit):
        train(tmp_path, "--deepspeed", str(tmp_path / "ds.json"))
    assert f"--deepspeed {tmp_path / 'ds.json'}: no such file" in capsys.readouterr().err
    assert started == []


@pytest.fixture
def without_deepspeed(monkeypatch):
    real = deepspeed_engine.find_spec
    monkeypatch.setattr(deepspeed_engine, "find_spec", lambda name: None if name == "deepspeed" else real(name))


@pytest.mark.parametrize(
    "flags, source",
    [
        (["--deepspeed", "zero2"], "--deepspeed"),
        (["--set", "training.engine=deepspeed", "--set", "training.deepspeed=zero2"], "training.engine deepspeed"),
    ],
)
def test_a_missing_deepspeed_is_reported_before_any_work(tmp_path, started, capsys, without_deepspeed, flags, source):
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path, *flags)
    assert exit_info.value.code == 2 and started == []
    assert capsys.readouterr().err == (
        f"xtune: error: {source} needs DeepSpeed, which is not installed: pip install 'xtune[deepspeed]'\n"
    )
    assert not (tmp_path / "work").exists()
