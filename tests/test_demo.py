"""The built-in demo, end to end through the command line: `xtune train tiny_assistant_lora` teaches a randomly
initialised tiny Llama who it is, and `xtune chat` then answers with the identity sentence of the bundled data,
non-interactively (--prompt) and interactively (RESET, EXIT on stdin); `xtune train tiny_assistant_dpo` then
teaches it, from preference pairs alone, to end its replies with a sign-off.

100 steps instead of the preset's 300 keep it short; 50 steps already give the identity answer for seeds 0-3, so
100 leaves a wide margin."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from xtune.assets import resolve_path
from xtune.chat import session as session_module
from xtune.chat.generate import GenerationSettings
from xtune.cli import main
from xtune.models.load import load_for_inference
from xtune.templates import get_template

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


def greedy_replies(model_dir: Path, prompts: list[str]) -> list[str]:
    model, tokenizer, _ = load_for_inference(str(model_dir))
    model.eval()
    template, settings = get_template("qwen_chat"), GenerationSettings(max_new_tokens=64)
    return [session_module.ChatSession(model, tokenizer, template, settings).ask(p).strip() for p in prompts]


def test_dpo_after_the_demo_prefers_the_sign_off_on_held_out_prompts(demo, tmp_path, xtune_env):
    """DPO on pairs whose chosen reply is the SFT answer plus " :)" and whose rejected reply is the answer alone: on
    prompts held out of the pairs, greedy replies end with the sign-off where the SFT model's never did, and keep
    the SFT answer before it."""
    records = [json.loads(line) for line in resolve_path("builtin:data/tiny_preference.jsonl").open(encoding="utf-8")]
    held_out = [r["prompt"] for r in records[::4]]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(records) if i % 4), encoding="utf-8")
    work_dir = tmp_path / "dpo"
    command = [sys.executable, "-m", "xtune.cli", "train", "tiny_assistant_dpo", "--work-dir", str(work_dir)]
    overrides = [f"model.path={demo.final}", f"data.datasets.0.path={pairs}", "evaluation.inputs=[]"]
    env = {**xtune_env, "OMP_NUM_THREADS": "2"}  # the only process running: use both cores
    result = subprocess.run(
        [*command, *(a for o in overrides for a in ("--set", o))], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before = greedy_replies(demo.final, held_out)
    after = greedy_replies(work_dir / "final", held_out)
    assert sum(r.endswith(":)") for r in before) <= 0.3 * len(held_out)
    assert sum(r.endswith(":)") for r in after) >= 0.9 * len(held_out), after
    assert sum(a.startswith(b) for a, b in zip(after, before, strict=True)) >= 0.75 * len(held_out), after
