"""The `xtune` command line. Thin: it parses arguments and calls the library; user errors print one clear
message and exit 2, any other exception one line with its type and exits 1; `--debug` adds the traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from xtune.errors import XtuneError


def cmd_list_cfg(args: argparse.Namespace) -> None:
    from xtune.config import list_presets

    names = list_presets(args.pattern)
    if not names:
        raise XtuneError(f"no preset matches {args.pattern!r}; `xtune list-cfg` lists all")
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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(preset_yaml(args.name), encoding="utf-8")
    tmp.replace(path)
    print(f"copied {args.name} to {path}")


def cmd_list_dataset_format(args: argparse.Namespace) -> None:
    import json

    from xtune.data.formats import EXAMPLES, MAP_FUNCTIONS

    for name, fn in MAP_FUNCTIONS.items():
        print(f"{name:16s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        print(f"{'':16s} e.g. {json.dumps(EXAMPLES[name], ensure_ascii=False)}")
    print("Your own: 'my_module:my_map_fn' or 'path/to/file.py:my_map_fn' (record -> {messages} or {text}).")


def _config_and_tokenizer(args: argparse.Namespace):
    from xtune.config import resolve_config
    from xtune.models import load_tokenizer

    cfg, _ = resolve_config(args.config, args.set or [])
    if cfg.model.vision is not None:  # with the image token
        from xtune.multimodal.model import multimodal_tokenizer

        return cfg, multimodal_tokenizer(cfg.model)
    return cfg, load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)


def cmd_check_dataset(args: argparse.Namespace) -> None:
    from rich.console import Console

    from xtune.data.preview import check_dataset

    errors = check_dataset(*_config_and_tokenizer(args), Console())
    if errors:
        raise XtuneError(f"{errors} problem(s) that stop training; see the lines starting with 'error:' above")


def cmd_log_dataset(args: argparse.Namespace) -> None:
    from rich.console import Console

    from xtune.data.preview import log_dataset

    if args.count < 1:
        raise XtuneError(f"--count {args.count}: show at least 1 sample")
    cfg, tokenizer = _config_and_tokenizer(args)
    log_dataset(
        cfg, tokenizer, Console(), show=args.show, index=args.index, count=args.count, as_json=args.format == "json"
    )


def cmd_train(args: argparse.Namespace) -> None:
    from xtune.config import resolve_config
    from xtune.train.distributed import shutdown
    from xtune.train.recipe import FinetuneRecipe

    if args.fsdp and args.deepspeed:
        raise XtuneError("--fsdp and --deepspeed choose different engines; pass one of them")
    if (args.nproc_per_node > 1 or args.nnodes > 1) and "WORLD_SIZE" not in os.environ:
        _relaunch_under_torchrun(args)
    overrides = [*(args.set or []), *(["training.engine=fsdp"] if args.fsdp else [])]
    if args.deepspeed:
        choice = args.deepspeed
        if choice.endswith(".json"):  # the recorded config must find it from any directory
            choice = str(Path(choice).resolve())
        # JSON quoting: the override value is parsed as YAML, and a path may hold ':' or '#'
        overrides += ["training.engine=deepspeed", f"training.deepspeed={json.dumps(choice)}"]
    cfg, name = resolve_config(args.config, overrides)
    work_dir = Path(args.work_dir or cfg.work_dir or Path("work_dirs") / name)
    source = "--work-dir" if args.work_dir else "work_dir" if cfg.work_dir else "the work dir"
    _check_directory(work_dir, source, "choose another directory with --work-dir DIR")
    recipe = FinetuneRecipe(cfg, work_dir)
    recipe.setup(resume=args.resume, overwrite=args.overwrite)
    out = recipe.train()
    is_main = recipe.world.is_main
    recipe.close()
    del recipe  # free the engine's wrappers before the process group goes
    shutdown()
    if is_main:
        print(f"done: {out}")


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
    from xtune.chat.cli import run_chat

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
    if "all" not in scores:
        print("no question has an answer (a test split?): nothing to score")
        return
    for key, accuracy in sorted(scores.items(), key=lambda kv: kv[0] != "all"):
        print(f"{'accuracy' if key == 'all' else key}: {accuracy:.2%}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtune", description="Fine-tune LLMs with one config file.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list-cfg", help="list built-in presets")
    p.add_argument("-p", "--pattern", help="substring or glob, e.g. internlm2 or '*qlora*'")
    p.set_defaults(func=cmd_list_cfg)

    p = sub.add_parser("copy-cfg", help="write an editable copy of a preset")
    p.add_argument("name")
    p.add_argument("dir")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_copy_cfg)

    p = sub.add_parser("list-dataset-format", help="list the built-in dataset map functions")
    p.set_defaults(func=cmd_list_dataset_format)

    p = sub.add_parser("check-dataset", help="read every record of a config's datasets and report problems")
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
    p.add_argument("--template", help="chat template name; default: the one the model was trained with")
    p.add_argument("--system", help="system prompt")
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

    p = sub.add_parser("eval-mmbench", help="score a LLaVA model on a multiple-choice image TSV (MMBench layout)")
    p.add_argument("model", help="a LLaVA output: stage 1 or 2 final directory, or a merged model")
    p.add_argument("tsv", help="index, question, hint, A-D, answer, image (base64), category")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", help="write each question's reply and choice here (JSON lines)")
    p.set_defaults(func=cmd_eval_mmbench)

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

    # before or after the command: `xtune --debug train ...` and `xtune train ... --debug`
    debug_help = "print the full traceback of an error"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    commands = {id(c): c for c in [*sub.choices.values(), *convert.choices.values()]}  # an alias maps to its command
    for command in commands.values():
        # SUPPRESS: a command that was not given --debug leaves the value the main parser set
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
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
    args = build_parser().parse_args(argv)
    if args.command in ("train", "chat", "convert"):  # the commands that load and save models
        _prefer_deepspeed_cpu_accelerator()
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
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


if __name__ == "__main__":
    main()
