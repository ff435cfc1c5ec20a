"""`xtune eval`: lm-evaluation-harness benchmarks on a model loaded as `xtune chat` loads it, offline."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model on lm-eval tasks (local task YAMLs, offline): a table and JSON")
    p.add_argument("model", help="a model directory, final/, checkpoint-N, or an adapter directory")
    p.add_argument(
        "--tasks",
        required=True,
        help="comma-separated: lm-eval task YAML files, xtune's shipped tasks (xtune_tiny, xtune_tiny_mc, "
        "xtune_tiny_gen), or lm-eval task names whose datasets are in the local Hugging Face cache",
    )
    p.add_argument("--adapter", help="a PEFT adapter directory to apply to MODEL")
    p.add_argument("--bits", type=int, choices=[4, 8], help="load the base quantised (bitsandbytes)")
    p.add_argument(
        "--chat-template",
        action="store_true",
        help="send each prompt as a chat message in the template the model was trained with (or --template)",
    )
    p.add_argument("--template", help="chat template name for --chat-template; default: the trained one")
    p.add_argument("--system", help="system prompt, with --chat-template")
    p.add_argument("--limit", type=int, help="score only the first N examples of each task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="write the results as JSON here (default: eval_results.json)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> None:
    from xtune.errors import XtuneError
    from xtune.evaluate import check_installed, results_json, run_lm_eval, task_configs
    from xtune.io import write_text_atomically
    from xtune.models.checkpoint_files import trained_template
    from xtune.models.load import load_for_inference

    check_installed("xtune eval")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise XtuneError("--tasks: name at least one task (e.g. --tasks xtune_tiny)")
    task_configs(tasks)  # a missing task file stops here, before the model loads
    model, tokenizer, source = load_for_inference(args.model, args.adapter, args.bits, args.trust_remote_code)
    template = trained_template(source, tokenizer, args.template) if args.chat_template else None
    try:
        results = run_lm_eval(model, tokenizer, tasks, template, args.limit, args.batch_size, args.system)
    except ConnectionError as e:  # datasets, offline: a named lm-eval task whose data was never downloaded
        raise XtuneError(
            f"--tasks {args.tasks}: a task's dataset is not on this machine, and xtune never downloads "
            f"({' '.join(str(e).split())}); download it once into the Hugging Face cache, or give a task YAML "
            "with local data_files"
        ) from None

    from lm_eval.utils import make_table

    print(make_table(results))
    out = write_text_atomically(Path(args.out or "eval_results.json"), results_json(results))
    print(f"results written to {out}")
