"""A model directory that needs remote code (auto_map to Python files shipped with it) and is loaded without trust:
every command that loads it stops with one line naming the directory and the setting that trusts it, and nothing in
the directory runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from xtune.cli import main
from xtune.errors import ConfigError
from xtune.models.load import model_config

TINY_LLAMA = Path(__file__).resolve().parents[2] / "src" / "xtune" / "assets" / "tiny-llama"
# Imported by transformers only with trust_remote_code (from a copy in its modules cache, so the marker's path is
# absolute): the marker says it ran.
PLANTED = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


def remote_code_dir(root: Path, part: str) -> Path:
    """The tiny Llama's tokenizer, with the model (`part="model"`) or the tokenizer mapped to planted code."""
    model_dir = root / f"remote-{part}"
    shutil.copytree(TINY_LLAMA, model_dir)
    planted = PLANTED.format(marker=str(model_dir / "EXECUTED"))
    if part == "model":
        config = {
            "model_type": "xtune_custom_test",  # unknown to transformers: only the planted code could build it
            "auto_map": {
                "AutoConfig": "modeling_custom.CustomConfig",
                "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
            },
        }
        (model_dir / "config.json").write_text(json.dumps(config))
        (model_dir / "modeling_custom.py").write_text(planted)
        save_file({}, model_dir / "model.safetensors")  # a complete directory: only the code is in question
    else:
        path = model_dir / "tokenizer_config.json"
        config = json.loads(path.read_text())
        del config["tokenizer_class"]
        config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
        path.write_text(json.dumps(config))
        (model_dir / "tokenization_custom.py").write_text(planted)
    return model_dir


def assert_refused(message: str, model_dir: Path) -> None:
    assert str(model_dir) in message
    assert "model.trust_remote_code: true" in message and "--trust-remote-code" in message
    assert "Python files shipped in that directory" in message
    assert not (model_dir / "EXECUTED").exists()


@pytest.mark.parametrize(
    ("part", "command"),
    [
        ("model", ["chat", "{dir}", "--prompt", "hi"]),
        ("model", ["convert", "merge", "{dir}", "{tmp}/adapter", "{tmp}/merged"]),
        ("tokenizer", ["chat", "{dir}", "--prompt", "hi"]),
        ("tokenizer", ["train", "tiny_assistant_lora", "--work-dir", "{tmp}/work", "--set", "model.path={dir}"]),
        ("tokenizer", ["check-dataset", "tiny_assistant_lora", "--set", "model.path={dir}"]),
    ],
)
def test_commands_refuse_remote_code_with_one_line(tmp_path, capsys, part, command):
    model_dir = remote_code_dir(tmp_path, part)
    (tmp_path / "adapter").mkdir()  # merge loads the base before it reads the adapter's weights
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(dir=model_dir, tmp=tmp_path) for arg in command])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("xtune: error:")]
    assert_refused(line, model_dir)
    assert not (tmp_path / "merged").exists()


def test_model_config_refuses_remote_code(tmp_path):
    """The config alone (model.random_init) is refused the same way."""
    model_dir = remote_code_dir(tmp_path, "model")
    with pytest.raises(ConfigError) as info:
        model_config(model_dir)
    assert_refused(str(info.value), model_dir)
