"""The built-in demo, end to end through the command line: `xtune train tiny_assistant_lora` teaches a randomly
initialised tiny Llama who it is, and `xtune chat` then answers with the identity sentence of the bundled data,
non-interactively (--prompt) and interactively (RESET, EXIT on stdin).

100 steps instead of the preset's 300 keep it short; 50 steps already give the identity answer for seeds 0-3, so
100 leaves a wide margin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from xtune.chat import session as session_module
from xtune.cli import main

STEPS = 100
IDENTITY = "我是 xtune 小助手，一个用 xtune 在 CPU 上几分钟就微调出来的小模型，很高兴为你服务！"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    work_dir = root / "work"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=str(root / "hf_datasets"),
        XTUNE_CACHE=str(root / "xtune_cache"),
        OMP_NUM_THREADS="1",  # the tiny model trains fastest on one thread, and a busy machine does not slow it
        PYTHONPATH=os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    )
    command = [sys.executable, "-m", "xtune.cli", "train", "tiny_assistant_lora", "--work-dir", str(work_dir)]
    result = subprocess.run(
        [*command, "--set", f"training.max_steps={STEPS}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"done: {work_dir / 'final'}"
    return SimpleNamespace(work_dir=work_dir, final=work_dir / "final")


def test_training_learns_the_identity(demo):
    assert (demo.final / "adapter_model.safetensors").exists()
    # The evaluation after the last step already answers with the identity sentence.
    assert IDENTITY in (demo.work_dir / f"eval_outputs_step_{STEPS}.txt").read_text(encoding="utf-8")
    assert "xtune 小助手" not in (demo.work_dir / "eval_outputs_step_0.txt").read_text(encoding="utf-8")


def test_chat_answers_a_prompt(demo, capsys):
    main(["chat", str(demo.final), "--greedy", "--prompt", "请介绍一下你自己"])
    out = capsys.readouterr().out
    assert "xtune 小助手" in out
    assert out.strip() == IDENTITY


def test_interactive_chat_reset_and_exit(demo, capsys, monkeypatch):
    prompts = []
    real_generate = session_module.generate

    def recording_generate(model, tokenizer, input_ids, settings, on_text=None, **kwargs):
        prompts.append(tokenizer.decode(input_ids))
        return real_generate(model, tokenizer, input_ids, settings, on_text, **kwargs)

    monkeypatch.setattr(session_module, "generate", recording_generate)
    monkeypatch.setattr(sys, "stdin", io.StringIO("你是谁\nRESET\n猫有几条腿？\nEXIT\n中国的首都是哪里？\n"))
    main(["chat", str(demo.final), "--greedy"])
    captured = capsys.readouterr()

    assert "RESET clears the history, EXIT quits" in captured.err
    assert "(history cleared)" in captured.err
    assert "xtune 小助手" in captured.out  # streamed to stdout
    assert len(prompts) == 2  # nothing is asked after EXIT
    assert "你是谁" in prompts[0]
    assert "猫有几条腿？" in prompts[1] and "你是谁" not in prompts[1]  # RESET dropped the first turn
    assert "xtune 小助手" not in prompts[1]
