"""What `xtune train` and `xtune chat` print is xtune's own: the README's demo, run through the command line in
subprocesses (so the libraries' loggers, warnings and progress bars behave as a user sees them), prints no line
that a library wrote, unless --verbose asks for them.

"Foreign" lines, concretely: Python warnings (`SomethingWarning:` and the `warnings.warn(` line under them),
bitsandbytes' and kernels' log messages about the kernels they failed to fetch, and tqdm progress bars (a
percentage followed by `|`, or a rate in it/s or examples/s)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

FOREIGN = re.compile(
    r"\w*Warning: |warnings\.warn\(|Failed to load|Skipping publisher trust check|MatMul8bitLt"
    r"|\d+%\|| \d+(\.\d+)?(it|examples)/s\]"
)


def foreign_lines(*outputs: str) -> list[str]:
    # tqdm redraws with carriage returns: each redraw counts as a line
    return [line for output in outputs for line in re.split(r"[\r\n]", output) if FOREIGN.search(line)]


def test_foreign_lines_are_recognised():
    """The pattern finds what the demo printed before xtune hid it (lines copied from such a run)."""
    seen = [
        "Loading weights:  13%|█▎        | 5/39 [00:00<00:00, 44.40it/s]",
        "Saving the dataset (1/1 shards): 100%|██████████| 144/144 [00:00<00:00, 21340.53 examples/s]",
        ".../transformers/modeling_utils.py:3314: FutureWarning: `is_gradient_checkpointing` is deprecated",
        "  warnings.warn(",
        "Failed to load CPU gemm_4bit_forward from kernels-community: Version 1 of ...",
        "MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization",
    ]
    assert foreign_lines("\n".join(seen)) == seen
    assert foreign_lines("[12/06/26 22:35:51] INFO     data: 144 samples, 5308 tokens, 144 rows") == []


def run_xtune(root: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_DATASETS_CACHE=str(root / "hf_datasets"),
        XTUNE_CACHE=str(root / "xtune_cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    )
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        env.pop(key, None)  # as a user's shell has them: xtune must hide the chatter itself
    result = subprocess.run(
        [sys.executable, "-m", "xtune.cli", *argv], env=env, capture_output=True, text=True, timeout=600, cwd=root
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> SimpleNamespace:
    """Two steps of the demo are enough: every library is loaded, the data is tokenized and cached, the base model
    written, an evaluation and the adapter saved."""
    root = tmp_path_factory.mktemp("quiet")
    train = run_xtune(root, "train", "tiny_assistant_lora", "--work-dir", "work", "--set", "training.max_steps=2")
    return SimpleNamespace(root=root, train=train, final=str(root / "work" / "final"))


def test_training_prints_no_library_lines(demo):
    assert demo.train.stdout.strip().startswith("done: ")
    assert "step 2/2" in demo.train.stderr  # xtune's own log is there
    assert foreign_lines(demo.train.stdout, demo.train.stderr) == []


@pytest.mark.parametrize("bits", [[], ["--bits", "8"]], ids=["full", "8bit"])
def test_chat_prints_only_the_answer(demo, bits):
    chat = run_xtune(
        demo.root, "chat", demo.final, "--greedy", "--max-new-tokens", "8", "--prompt", "请介绍一下你自己", *bits
    )
    assert chat.stdout.strip()
    assert foreign_lines(chat.stdout, chat.stderr) == []
    assert chat.stderr == ""


def test_verbose_shows_the_library_output(demo):
    chat = run_xtune(demo.root, "--verbose", "chat", demo.final, "--greedy", "--max-new-tokens", "1", "--prompt", "hi")
    assert "Loading weights" in chat.stderr  # transformers' progress bar, hidden without --verbose
    assert foreign_lines(chat.stderr)
