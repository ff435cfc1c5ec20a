"""Benchmarks through lm-eval, offline: `evaluation.lm_eval` scores the model in memory while it trains on the
shipped tiny task's answers (the scores must rise from the random model's), and `xtune eval` on the trained model's
final/ reproduces the last in-training scores from disk, as a table and JSON.

Training runs in a subprocess whose environment makes the network unreachable (offline flags and proxies that
point at a closed port), so a download lm-eval or datasets attempted would fail the run."""

from __future__ import annotations

import json
import subprocess

import pytest

from xtune.cli import main
from xtune.evaluate import SHIPPED_TASKS

STEPS = 25
UNREACHABLE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    **{k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")},
    "NO_PROXY": "",
    "no_proxy": "",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_layer_model_dir, xtune_env, xtune_cmd):
    """The one-layer random model fully fine-tuned on the task's questions with their right answers (pretrain text in
    the task's own prompt format), scored on xtune_tiny before training and at the end."""
    root = tmp_path_factory.mktemp("lm_eval")
    data = root / "answers.jsonl"
    with data.open("w") as f:
        for line in (SHIPPED_TASKS / "tiny_qa.jsonl").read_text().splitlines():
            doc = json.loads(line)
            text = f"Question: {doc['question']}\nAnswer: {doc['choices'][doc['answer']]}\n"
            f.write(json.dumps({"text": text}) + "\n")
    work = root / "work"
    overrides = {
        "model.path": str(one_layer_model_dir),
        "model.random_init": "false",
        "data.datasets": json.dumps([{"path": str(data), "format": "pretrain"}]),
        "training.max_steps": str(STEPS),
        "training.lr": "3e-3",
        "training.warmup_ratio": "0",
        "saving.save_steps": "1000",
        "evaluation.inputs": "[]",
        "evaluation.freq": "1000",
        "evaluation.lm_eval": json.dumps({"tasks": ["xtune_tiny"]}),
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    command = [*xtune_cmd, "train", "tiny_assistant_full", "--work-dir", str(work), *sets]
    result = subprocess.run(command, env={**xtune_env, **UNREACHABLE}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_scores_rise_while_training_on_the_answers(trained):
    records = [json.loads(line) for line in (trained / "lm_eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, STEPS]
    before, after = records
    assert before["xtune_tiny_mc/acc"] < 1.0 and after["xtune_tiny_mc/acc"] == 1.0
    assert before["xtune_tiny_gen/exact_match"] == 0.0 and after["xtune_tiny_gen/exact_match"] >= 0.5
    assert f"lm_eval step {STEPS}: xtune_tiny_mc/acc 1.0000" in (trained / "train.log").read_text()


def test_eval_cli_reproduces_the_trained_scores_from_disk(trained, tmp_path, capsys, monkeypatch):
    for key, value in UNREACHABLE.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "results.json"
    main(["eval", str(trained / "final"), "--tasks", "xtune_tiny", "--out", str(out)])
    table = capsys.readouterr().out
    assert "xtune_tiny_mc" in table and "xtune_tiny_gen" in table and "exact_match" in table
    results = json.loads(out.read_text())["results"]
    last = json.loads((trained / "lm_eval.jsonl").read_text().splitlines()[-1])
    assert results["xtune_tiny_mc"]["acc,none"] == last["xtune_tiny_mc/acc"]
    assert results["xtune_tiny_gen"]["exact_match,none"] == last["xtune_tiny_gen/exact_match"]
