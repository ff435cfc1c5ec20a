"""`xtune chat DIR` on a hand-made trained directory (a random one-layer tiny Llama and an xtune_config.yaml): the
code tools that DIR's own config names are offered, not imported, unless the user names them or trusts DIR."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from xtune.chat.session import ChatSession
from xtune.cli import chat as chat_cli
from xtune.cli import main

TINY_LLAMA = Path(__file__).resolve().parents[1] / "src" / "xtune" / "assets" / "tiny-llama"
# A tool file that a downloaded directory's config could name: importing it leaves a marker.
PLANTED_TOOL = '''from pathlib import Path

Path({marker!r}).write_text("imported")


def lookup_order(order: str) -> str:
    """Look up an order.

    Args:
        order: the order number
    """
    return "shipped"
'''


@pytest.fixture(scope="module")
def model_dir(one_layer_model_dir) -> Path:
    return one_layer_model_dir


@pytest.fixture
def sessions(monkeypatch) -> list[ChatSession]:
    """The sessions `xtune chat` opens, to read which tools they offer."""
    opened = []

    class Recorded(ChatSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(chat_cli, "ChatSession", Recorded)
    return opened


def trained_dir(model_dir: Path, root: Path, evaluation: dict) -> Path:
    """A copy of the model with an xtune_config.yaml as training writes it (template, evaluation section)."""
    path = root / "final"
    shutil.copytree(model_dir, path)
    config = {"data": {"template": "qwen_chat"}, "evaluation": evaluation}
    (path / "xtune_config.yaml").write_text(yaml.safe_dump(config))
    return path


def chat(directory: Path, *flags: str) -> None:
    main(["chat", str(directory), "--greedy", "--max-new-tokens", "1", "--prompt", "hi", *flags])


def tool_names(sessions: list[ChatSession]) -> list[str]:
    [session] = sessions
    return [tool.name for tool in session.tools.list()]


@pytest.fixture
def planted(tmp_path) -> tuple[str, Path]:
    """(the tool's spec, the marker its import writes)."""
    marker = tmp_path / "IMPORTED"
    path = tmp_path / "xtune_test_planted_tools.py"
    path.write_text(PLANTED_TOOL.format(marker=str(marker)))
    return f"{path}:lookup_order", marker


def test_chat_offers_but_does_not_import_the_code_tools_its_directory_names(
    model_dir, tmp_path, sessions, planted, capsys
):
    spec, marker = planted
    directory = trained_dir(model_dir, tmp_path, {"tools": ["calculate", spec, "solve"]})
    chat(directory)
    assert not marker.exists()
    assert tool_names(sessions) == ["calculate", "solve"]  # the built-in ones still default from the config
    [line] = [line for line in capsys.readouterr().err.splitlines() if "not loading" in line]
    assert spec in line and str(directory / "xtune_config.yaml") in line
    assert f"--tools calculate,{spec},solve" in line and "--trust-dir-tools" in line


@pytest.mark.parametrize("flags", [["--trust-dir-tools"], ["--tools", "{spec}"]])
def test_chat_loads_the_code_tools_the_user_trusts_or_names(model_dir, tmp_path, sessions, planted, capsys, flags):
    spec, marker = planted
    directory = trained_dir(model_dir, tmp_path, {"tools": ["calculate", spec]})
    chat(directory, *[flag.format(spec=spec) for flag in flags])
    assert marker.read_text() == "imported"
    expected = ["calculate", "lookup_order"] if flags == ["--trust-dir-tools"] else ["lookup_order"]
    assert tool_names(sessions) == expected
    assert "not loading" not in capsys.readouterr().err


def test_chat_says_what_the_search_index_holds_and_left_out(model_dir, tmp_path, sessions, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lora.md").write_text("LoRA trains low-rank adapters.\n")
    (tmp_path / "secret.md").write_text("LoRA hunter2\n")
    (docs / "secret.md").symlink_to(tmp_path / "secret.md")
    directory = trained_dir(model_dir, tmp_path, {"tools": ["search"], "search_docs": str(docs)})
    chat(directory)
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("search: ")]
    assert line.startswith("search: indexed 1 file(s)")
    assert line.endswith(f"in {docs}; skipped 1 link(s) leading out of the folder")
    [session] = sessions
    result = session.tools.call("search", {"query": "LoRA hunter2"})
    assert result.ok and result.text.startswith("[1] lora.md\n") and "hunter2" not in result.text


def test_a_template_other_than_the_trained_one_is_warned(model_dir, tmp_path, capsys):
    directory = trained_dir(model_dir, tmp_path, {})  # trained with qwen_chat
    chat(directory, "--template", "internlm2_chat")
    assert [line for line in capsys.readouterr().err.splitlines() if "warning" in line] == [
        f"xtune: warning: --template internlm2_chat differs from qwen_chat, the template "
        f"{directory / 'xtune_config.yaml'} records for training; answers may be off"
    ]
    chat(directory, "--template", "qwen_chat")
    assert "warning" not in capsys.readouterr().err


class TerminalInput(io.StringIO):
    """Typed lines, as from a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stdin_class, keeps_history", [(TerminalInput, True), (io.StringIO, False)])
def test_interactive_chat_edits_lines_and_keeps_history_at_a_terminal(
    model_dir, tmp_path, monkeypatch, stdin_class, keeps_history
):
    monkeypatch.setenv("XTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "stdin", stdin_class("EXIT\n"))
    monkeypatch.delitem(sys.modules, "readline", raising=False)
    main(["chat", str(model_dir), "--greedy"])
    # input() edits lines (arrow keys, history) once readline is imported; its history outlives the chat
    assert ("readline" in sys.modules) == keeps_history
    assert (tmp_path / "cache" / "chat_history").is_file() == keeps_history
