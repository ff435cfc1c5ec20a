"""Benchmarks through lm-evaluation-harness (`lm_eval.simple_evaluate`), offline: `xtune eval` on a model directory,
and training's `evaluation.lm_eval` on the model in memory.

Tasks are lm-eval task YAML files, the tasks shipped with xtune (xtune/assets/eval: `xtune_tiny` = a multiple-choice
and a generate-until task on eight questions), or names of lm-eval's own tasks (their datasets must already be in
the local Hugging Face cache: xtune never downloads). A YAML's local `data_files` are found relative to the YAML,
wherever the command runs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from xtune.assets import ASSETS_DIR
from xtune.errors import ConfigError
from xtune.templates import Template

SHIPPED_TASKS = ASSETS_DIR / "eval"
SHIPPED_GROUPS = {"xtune_tiny": ["xtune_tiny_mc", "xtune_tiny_gen"]}


def check_installed(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"{what} needs lm-evaluation-harness: pip install 'xtune[eval]'")


def task_configs(tasks: Sequence[str]) -> list[dict | str]:
    """Each --tasks entry as simple_evaluate takes it: a YAML's config (data paths made absolute) or a task name."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out: list[dict | str] = []
    for entry in tasks:
        names = SHIPPED_GROUPS.get(entry, [entry])
        for name in names:
            path = SHIPPED_TASKS / f"{name}.yaml" if (SHIPPED_TASKS / f"{name}.yaml").is_file() else Path(name)
            if path.suffix not in (".yaml", ".yml"):
                out.append(name)  # one of lm-eval's own tasks
                continue
            if not path.is_file():
                raise ConfigError(f"--tasks {entry}: no such task file {path}")
            config = load_yaml(path, resolve_func=True)
            kwargs = config.get("dataset_kwargs") or {}
            if "data_files" in kwargs:
                kwargs["data_files"] = _beside(path, kwargs["data_files"])
            out.append(config)
    return out


def _beside(yaml_path: Path, files):
    if isinstance(files, str):
        return str((yaml_path.parent / files).resolve())
    if isinstance(files, dict):
        return {split: _beside(yaml_path, f) for split, f in files.items()}
    return [_beside(yaml_path, f) for f in files]


def run_lm_eval(
    model,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    template: Template | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    system: str | None = None,
) -> dict:
    """lm-eval's results for `model` (any torch causal LM, a PEFT model included) on `tasks`; prompts go through
    `template` as chat messages when one is given (the template rendered as the tokenizer's chat_template)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if template is not None:
        tokenizer = _with_chat_template(tokenizer, template.to_jinja())
    configs = task_configs(tasks)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(_device(model)))
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=configs,
        # lm-eval's own task index (thousands of YAML files, seconds to read) only when a task is named from it
        task_manager=TaskManager(include_defaults=any(isinstance(c, str) for c in configs)),
        limit=limit,
        apply_chat_template=template is not None,
        system_instruction=system,
        log_samples=False,
        bootstrap_iters=0,
        verbosity="ERROR",
    )
    return {k: results[k] for k in ("results", "versions", "n-shot", "higher_is_better", "n-samples") if k in results}


def scores(results: dict) -> dict[str, float]:
    """`task/metric` -> value, the numbers a log line or a table needs (lm-eval's keys are `acc,none`)."""
    out = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if isinstance(value, (int, float)) and not metric.endswith("_stderr") and metric != "sample_len":
                out[f"{task}/{metric}" + (f"[{filter_name}]" if filter_name not in ("", "none") else "")] = value
    return out


def results_json(results: dict) -> str:
    return json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n"


def _with_chat_template(tokenizer: PreTrainedTokenizerBase, jinja: str) -> PreTrainedTokenizerBase:
    tokenizer = copy.copy(tokenizer)  # the caller's tokenizer (training's) keeps its own template
    tokenizer.chat_template = jinja
    return tokenizer


def _device(model):
    return next(model.parameters()).device


def log_lm_eval(model, tokenizer, template: Template, settings, step: int, work_dir: Path) -> dict[str, float]:
    """Training's evaluation.lm_eval: score the model in memory, log the scores beside the losses (train.log) and
    append them to work_dir/lm_eval.jsonl."""
    import logging

    was_training = model.training
    model.eval()
    try:
        results = run_lm_eval(
            model,
            copy.copy(tokenizer),  # lm-eval may set padding on it; training's tokenizer stays as it is
            settings.tasks,
            template if settings.chat_template else None,
            settings.limit,
            settings.batch_size,
        )
    finally:
        model.train(was_training)
    values = scores(results)
    logging.getLogger("xtune").info(f"lm_eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    with (work_dir / "lm_eval.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")
    return values
