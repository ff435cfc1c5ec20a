"""The `xtune` command line. Thin: it parses arguments and calls the library; user errors print one clear
message and exit 2, any other exception one line with its type and exits 1; `--debug` adds the traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from xtune.cli import evaluate as evaluate_cli
from xtune.cli import gguf as gguf_cli
from xtune.cli.serve import add_parser as add_serve_parsers
from xtune.cli.xtuner_v0 import (
    add_v0_chat_flags,
    add_v0_convert_commands,
    apply_v0_chat_flags,
    check_v0_spelling,
    report_v0_conversion,
    v0_aliases,
)
from xtune.errors import XtuneError
from xtune.io import write_text_atomically


def cmd_list_cfg(args: argparse.Namespace) -> None:
    from xtune.config import list_presets

    names = list_presets(args.pattern)
    if not names:
        from xtune.config.presets import missing_reason

        why = missing_reason(args.pattern or "")
        raise XtuneError(f"no preset matches {args.pattern!r}{f': {why}' if why else ''}; `xtune list-cfg` lists all")
    print("\n".join(names))


def cmd_copy_cfg(args: argparse.Namespace) -> None:
    from xtune.config import preset_yaml
    from xtune.config.presets import PRESETS

    if args.name not in PRESETS:
        from xtune.config import resolve_config

        resolve_config(args.name)  # raises with "did you mean"
    out_dir = Path(args.dir)
    _check_directory(out_dir, "copy-cfg DIR", "name a directory to write the copy into")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.name}_copy.yaml"
    if path.exists() and not args.force:
        raise XtuneError(f"{path} exists; pass --force to overwrite it")
    write_text_atomically(path, preset_yaml(args.name))
    print(f"copied {args.name} to {path}")


def cmd_list_dataset_format(args: argparse.Namespace) -> None:
    import shutil
    import textwrap

    from xtune.data.formats import EXAMPLES, MAP_FUNCTIONS, describe

    width = shutil.get_terminal_size().columns  # $COLUMNS, else the terminal, else 80
    indent = " " * 17
    wrap = textwrap.TextWrapper(width, subsequent_indent=indent, break_on_hyphens=False)  # keep "silk-road" whole
    for name in MAP_FUNCTIONS:
        print(wrap.fill(f"{name:16s} {describe(name)}"))
        # unwrapped: the example is a record to copy, and a line break inside a JSON string would break it
        print(f"{indent}e.g. {json.dumps(EXAMPLES[name], ensure_ascii=False)}")
    own = "Your own: 'my_module:my_map_fn' or 'path/to/file.py:my_map_fn' (record -> {messages} or {text})."
    print(textwrap.fill(own, width))


def _dataset_task(args: argparse.Namespace):
    """The config, and the task that training would run it with: the same tokenizer (its added special tokens, a
    LLaVA's image token) and map functions as training, so that check-dataset and log-dataset see what it sees."""
    from xtune.config import resolve_config
    from xtune.multimodal.train import task_for
    from xtune.train.distributed import World

    cfg, _ = resolve_config(args.config, args.set or [])
    task = task_for(cfg)(cfg, Path(), World())  # no work dir: a preview writes nothing
    return cfg, task.tokenizer(), task


def cmd_check_dataset(args: argparse.Namespace) -> None:
    from rich.console import Console

    from xtune.data.preview import check_dataset

    cfg, tokenizer, task = _dataset_task(args)
    errors = check_dataset(cfg, tokenizer, Console(), map_fn_of=task.map_fn_of)
    if errors:
        raise XtuneError(f"{errors} problem(s) that stop training; see the lines starting with 'error:' above")


def cmd_log_dataset(args: argparse.Namespace) -> None:
    from rich.console import Console

    from xtune.data.preview import log_dataset

    if args.count < 1:
        raise XtuneError(f"--count {args.count}: show at least 1 sample")
    cfg, tokenizer, task = _dataset_task(args)
    log_dataset(
        cfg,
        tokenizer,
        Console(),
        show=args.show,
        index=args.index,
        count=args.count,
        as_json=args.format == "json",
        map_fn_of=task.map_fn_of,
        describe=task.describe_sample,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from xtune.config import resolve_config
    from xtune.multimodal.train import task_for
    from xtune.train.distributed import shutdown
    from xtune.train.recipe import FinetuneRecipe

    if args.fsdp and args.deepspeed:
        raise XtuneError("--fsdp and --deepspeed choose different engines; pass one of them")
    # The flag's own mistakes, named as the flag: as a config override, they would be blamed on the config file.
    choice = _deepspeed_flag(args.deepspeed) if args.deepspeed else None
    if args.sequence_parallel is not None and args.sequence_parallel < 1:
        n = args.sequence_parallel
        raise XtuneError(f"--sequence-parallel {n}: N is how many processes share each sequence, 1 or more")
    if (args.nproc_per_node > 1 or args.nnodes > 1) and "WORLD_SIZE" not in os.environ:
        _relaunch_under_torchrun(args)
    overrides = [*(args.set or []), *(["training.engine=fsdp"] if args.fsdp else [])]
    if args.sequence_parallel is not None:
        overrides.append(f"training.sequence_parallel={args.sequence_parallel}")
    if choice:
        # JSON quoting: the override value is parsed as YAML, and a path may hold ':' or '#'
        overrides += ["training.engine=deepspeed", f"training.deepspeed={json.dumps(choice)}"]
    if args.config.endswith(".py"):
        from xtune.config.xtuner_v0 import convert_v0_config

        report_v0_conversion(convert_v0_config(args.config), "training from")
    cfg, name = resolve_config(args.config, overrides)
    if cfg.training.engine == "deepspeed" and not choice:
        from xtune.train.deepspeed_engine import check_installed

        check_installed("training.engine deepspeed")
    work_dir = Path(args.work_dir or cfg.work_dir or Path("work_dirs") / name)
    source = "--work-dir" if args.work_dir else "work_dir" if cfg.work_dir else "the work dir"
    _check_directory(work_dir, source, "choose another directory with --work-dir DIR")
    recipe = FinetuneRecipe(cfg, work_dir, task=task_for(cfg))
    recipe.setup(resume=args.resume, overwrite=args.overwrite)
    out = recipe.train()
    is_main = recipe.world.is_main
    recipe.close()
    del recipe  # free the engine's wrappers before the process group goes
    shutdown()
    if is_main:
        print(f"done: {out}")


def _deepspeed_flag(value: str) -> str:
    """--deepspeed's value as training.deepspeed records it, once DeepSpeed is known to be installed: that is
    checked before any work (tokenizing, writing the base model), not when the engine starts."""
    from xtune.config.schema import DEEPSPEED_CHOICES, deepspeed_choice
    from xtune.train.deepspeed_engine import check_installed

    choice = deepspeed_choice(value)
    if choice is None:
        raise XtuneError(f"--deepspeed {value}: choose {DEEPSPEED_CHOICES}")
    if choice.endswith(".json"):
        if not Path(choice).is_file():
            raise XtuneError(f"--deepspeed {value}: no such file; name a DeepSpeed JSON file or a built-in config")
        choice = str(Path(choice).resolve())  # the recorded config must find it from any directory
    check_installed("--deepspeed")
    return choice


def _check_directory(directory: Path, source: str, fix: str) -> None:
    """A file where a directory to create (or a folder above it) should be: mkdir would fail with a bare
    FileExistsError or NotADirectoryError, for training only after the tokenizer and the data were read."""
    for path in (directory, *directory.parents):
        if path.exists():
            if not path.is_dir():
                where = f"{source} {directory}" + ("" if path == directory else f": {path}")
                raise XtuneError(f"{where} is a file, not a directory; {fix}")
            return


def _relaunch_under_torchrun(args: argparse.Namespace) -> None:
    """Run this same `xtune train` in N processes per node under torchrun, which sets WORLD_SIZE and RANK."""
    import subprocess

    from xtune.train.distributed import launch_command

    argv = sys.argv[1:]
    for flag in ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port"):
        while flag in argv:
            i = argv.index(flag)
            del argv[i : i + 2]
    command = launch_command(args.nproc_per_node, args.nnodes, args.node_rank, args.master_addr, args.master_port, argv)
    sys.exit(subprocess.call(command))


def cmd_chat(args: argparse.Namespace) -> None:
    from xtune.cli.chat import run_chat

    apply_v0_chat_flags(args)
    run_chat(args)


def cmd_convert_merge(args: argparse.Namespace) -> None:
    from xtune.models.export import merge_adapter

    out = merge_adapter(
        args.base,
        args.adapter,
        args.out,
        trust_remote_code=args.trust_remote_code,
        max_shard_size=args.max_shard_size,
        save_format=args.save_format,
    )
    print(f"merged model written to {out}")


def cmd_convert_checkpoint(args: argparse.Namespace) -> None:
    from xtune.models.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, trust_remote_code=args.trust_remote_code)
    print(f"{args.checkpoint} written as a Hugging Face directory to {out}")


def cmd_eval_mmbench(args: argparse.Namespace) -> None:
    from xtune.multimodal.mmbench import run

    scores = run(args.model, args.tsv, args.max_new_tokens, args.out)
    if "all" not in scores.accuracy:
        print("no question has an answer (a test split?): nothing to score")
    for key, accuracy in sorted(scores.accuracy.items(), key=lambda kv: kv[0] != "all"):
        print(f"{'accuracy' if key == 'all' else key}: {accuracy:.2%}")
    # An accuracy below chance often means replies the scorer could not read, not wrong answers: say how many.
    see = f"; the replies are in {args.out}" if args.out else "; --out FILE keeps the replies"
    rate = scores.unparsed / scores.questions if scores.questions else 0.0
    print(
        f"unparsed: {scores.unparsed} of {scores.questions} replies ({rate:.1%}) name no option and count as wrong"
        + (see if scores.unparsed else "")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtune", description="Fine-tune LLMs with one config file.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list-cfg", help="list built-in presets")
    p.add_argument("-p", "--pattern", help="substring or glob, e.g. internlm2 or '*qlora*'")
    p.set_defaults(func=cmd_list_cfg)

    p = sub.add_parser(
        "copy-cfg", help="write an editable copy of a preset: every key, each with a comment saying what it does"
    )
    p.add_argument("name", help="the preset to copy (xtune list-cfg)")
    p.add_argument("dir", help="the directory to write NAME_copy.yaml into (created if missing)")
    p.add_argument("--force", action="store_true", help="overwrite an existing NAME_copy.yaml")
    p.set_defaults(func=cmd_copy_cfg)

    p = sub.add_parser("list-dataset-format", help="list the built-in dataset map functions")
    p.set_defaults(func=cmd_list_dataset_format)

    p = sub.add_parser(
        "check-dataset",
        aliases=v0_aliases("check-dataset"),
        help="read every record of a config's datasets and report problems",
    )
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_check_dataset)

    p = sub.add_parser("log-dataset", help="show encoded samples with the trained spans highlighted")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--show", choices=["text", "masked", "ids", "labels", "all"], default="masked")
    p.add_argument("--index", type=int, help="the record to show (default: the first)")
    p.add_argument("--count", type=int, default=1, help="how many samples to show")
    p.add_argument("--format", choices=["rich", "json"], default="rich")
    p.set_defaults(func=cmd_log_dataset)

    p = sub.add_parser("train", help="train from a config file or preset name")
    p.add_argument("config", help="a YAML config path or a preset name (xtune list-cfg)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. training.lr=1e-4")
    p.add_argument("--work-dir", help="where checkpoints, logs and the final model go")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs) per node; >1 runs torchrun")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 (default engine: DDP)")
    p.add_argument(
        "--sequence-parallel",
        type=int,
        metavar="N",
        help="split each sequence over N processes (training.sequence_parallel; Ulysses attention)",
    )
    p.add_argument(
        "--deepspeed",
        metavar="CONFIG",
        help="train with DeepSpeed ZeRO: zero1, zero2, zero2_offload, zero3, zero3_offload, or a DeepSpeed JSON file",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from the newest whole checkpoint in the work dir (an error when there is none), from "
        "CHECKPOINT, or with 'auto' from the newest one if there is one and from scratch otherwise",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the work dir (its checkpoints, final/, metrics and logs are removed); "
        "without it or --resume, a work dir that holds a run is refused",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("chat", help="chat with a model, a trained adapter, or a merged model")
    p.add_argument("model", help="a model directory, or an adapter directory (its base is found automatically)")
    p.add_argument("--adapter", help="a PEFT adapter directory to apply to MODEL")
    p.add_argument("--bits", type=int, choices=[4, 8], help="load the base quantised (bitsandbytes)")
    p.add_argument(
        "--template",
        *v0_aliases("chat", "--template"),
        help="chat template name; default: the one the model was trained with",
    )
    p.add_argument("--system", help="system prompt")
    add_v0_chat_flags(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--greedy", action="store_true", help="deterministic decoding (temperature 0)")
    p.add_argument("--stop-words", nargs="+", default=[], help="extra stop words")
    p.add_argument("--prompt", action="append", help="answer this prompt and exit (repeat for several turns)")
    p.add_argument(
        "--tools",
        "--with-plugins",
        action="append",
        metavar="NAMES",
        help="tools the model may call, comma-separated: calculate, solve, search, or your own as "
        "my_tools.py:my_function; default: the built-in tools in the trained config's evaluation.tools",
    )
    p.add_argument(
        "--trust-dir-tools",
        action="store_true",
        help="also load the code tools (file.py:function, module:function) that MODEL's xtune_config.yaml names in "
        "evaluation.tools, not only its built-in ones: this runs their Python code, so only for a directory you trust",
    )
    p.add_argument(
        "--search-docs",
        metavar="DIR",
        help="the folder of .txt and .md files the search tool looks in (offline; regular files inside DIR only, "
        "1 MiB each, 64 MiB in all)",
    )
    p.add_argument("--max-tool-rounds", type=int, default=5, help="tool calls answered per question, at most")
    p.add_argument(
        "--solve-time-limit",
        type=float,
        metavar="SECONDS",
        help="how long one call of the solve tool may take; default: the trained config's evaluation.solve_time_limit "
        "(2 s)",
    )
    p.add_argument(
        "--no-tool-list",
        dest="list_tools",
        action="store_false",
        default=None,
        help="do not describe the tools in the prompt (a model fine-tuned without the list); default: as trained",
    )
    p.add_argument("--image", action="append", help="an image to talk about (LLaVA models; repeat for several)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_chat)
    add_serve_parsers(sub, chat_parser=p)  # serve and web take chat's model flags

    p = sub.add_parser(
        "eval-mmbench",
        aliases=v0_aliases("eval-mmbench"),
        help="score a LLaVA model on a multiple-choice image TSV (MMBench layout)",
    )
    p.add_argument("model", help="a LLaVA output: stage 1 or 2 final directory, or a merged model")
    p.add_argument("tsv", help="index, question, hint, A-D, answer, image (base64), category")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", help="write each question's reply and choice here (JSON lines)")
    p.set_defaults(func=cmd_eval_mmbench)

    evaluate_cli.add_parser(sub)

    p = sub.add_parser("convert", help="convert or merge models")
    convert = p.add_subparsers(dest="convert_command", required=True)
    m = convert.add_parser("merge", help="merge a LoRA adapter into its base model")
    m.add_argument("base")
    m.add_argument("adapter")
    m.add_argument("out")
    m.add_argument("--max-shard-size", default="5GB")
    m.add_argument(
        "--save-format",
        choices=["hf", "original"],
        default="hf",
        help="original: write InternLM2 bases back in their own layout (LMDeploy); default: HF Llama",
    )
    m.add_argument("--trust-remote-code", action="store_true")
    m.set_defaults(func=cmd_convert_merge)
    c = convert.add_parser(
        "checkpoint",
        aliases=["pth_to_hf"],
        help="write a training checkpoint (checkpoint-N) as a Hugging Face directory like final/",
    )
    c.add_argument("checkpoint", help="a work dir's checkpoint-N")
    c.add_argument("out")
    c.add_argument("--trust-remote-code", action="store_true")
    c.set_defaults(func=cmd_convert_checkpoint)
    add_v0_convert_commands(convert)
    gguf_cli.add_parser(convert)

    # before or after the command: `xtune --debug train ...` and `xtune train ... --debug`
    global_flags = {
        "--debug": "print the full traceback of an error",
        "--verbose": "also show the libraries' progress bars, log messages and warnings (hidden by default)",
    }
    for flag, help_text in global_flags.items():
        parser.add_argument(flag, action="store_true", help=help_text)
        # dict.fromkeys: an alias maps to its verb's parser, which takes the flag once
        for command in dict.fromkeys([*sub.choices.values(), *convert.choices.values()]):
            # SUPPRESS: a command that was not given the flag leaves the value the main parser set
            command.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
    return parser


def _prefer_deepspeed_cpu_accelerator() -> None:
    """Where DeepSpeed is installed, transformers and accelerate import it on every save_pretrained, and without a
    GPU its accelerator auto-detection then prints a warning on stdout, which scripts read. Name its CPU
    accelerator up front instead."""
    import importlib.util

    if "DS_ACCELERATOR" in os.environ or importlib.util.find_spec("deepspeed") is None:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # xtune never downloads; fail fast instead of hanging
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_v0_spelling(argv)
    except XtuneError as e:
        print(f"xtune: error: {e}", file=sys.stderr)
        sys.exit(2)
    args = build_parser().parse_args(argv)
    if not args.verbose:
        from xtune.quiet import quiet_libraries

        quiet_libraries()
    if args.command in ("train", "chat", "convert", "eval"):  # the commands that load and save models
        _prefer_deepspeed_cpu_accelerator()
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `xtune list-cfg | head`: the reader has all it wanted; no error, and no second one
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # when Python flushes stdout at exit
        sys.exit(141)  # 128 + SIGPIPE, as a shell tool killed by it
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        if isinstance(e, XtuneError):
            print(f"xtune: error: {e}", file=sys.stderr)
            sys.exit(2)
        # A bug, or a cause no check names yet: one line, as for a user error; --debug shows where it came from.
        message = " ".join(str(e).split())  # one line, whatever the message's own layout
        what = f"{type(e).__name__}: {message}" if message else type(e).__name__
        hint = "" if args.debug else " (rerun with --debug for the traceback)"
        print(f"xtune: error: {what}{hint}", file=sys.stderr)
        sys.exit(1)
