"""XTuner v0's verbs and flags, as a user coming from it types them: each runs as its xtune alias or stops with one
line naming the xtune command to use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from xtune.errors import XtuneError

GLOBAL_FLAGS = ("--debug", "--verbose")  # accepted before the verb too


@dataclass(frozen=True)
class _V0:
    """How xtune answers one of XTuner v0's verbs or flags: `alias` runs the xtune verb (or flag) that does the same;
    otherwise `instead` is the one line saying what to run."""

    alias: str | None = None
    instead: str | None = None


# XTuner v0's spellings, as a user coming from it types them ("verb", "verb subverb" or "verb --flag"), so that none
# ends in a bare argparse "invalid choice". Aliases are registered with argparse (build_parser); the others stop in
# main() with their line and exit status 2.
XTUNER_V0: dict[str, _V0] = {
    "check-custom-dataset": _V0(alias="check-dataset"),
    "mmbench": _V0(alias="eval-mmbench"),
    "chat --prompt-template": _V0(alias="--template"),
    "convert split": _V0(
        instead="xtune writes sharded Hugging Face directories itself; choose the shard size when merging: "
        "xtune convert merge BASE ADAPTER OUT --max-shard-size 2GB"
    ),
}


def _positional(rest: list[str]) -> list[str]:
    return [a for a in rest if not a.startswith("-")]


def _flag(rest: list[str], flag: str) -> str | None:
    for i, word in enumerate(rest):
        if word == flag and i + 1 < len(rest):
            return rest[i + 1]
        if word.startswith(f"{flag}="):
            return word.partition("=")[2]
    return None


def _pth_to_hf(rest: list[str]) -> str | None:
    """v0's `convert pth_to_hf CONFIG PTH OUT` (xtune's takes a checkpoint directory and OUT)."""
    words = _positional(rest)
    if len(words) == 2 and words[0].endswith(".pth"):  # the config left out: the work dir names it
        words = [Path(words[0]).parent.name, *words]
    if len(words) != 3:
        return None
    config, pth, out = words
    name = Path(config).stem if Path(config).suffix in (".py", ".yaml", ".yml") else config
    step = re.search(r"iter_(\d+)\.pth", pth)
    checkpoint = f"work_dirs/{name}/checkpoint-{step[1] if step else 'N'}"
    return (
        f"xtune's training already writes work_dirs/{name}/final as a Hugging Face directory (a PEFT adapter for "
        f"LoRA/QLoRA), so there is nothing to convert; for a checkpoint: xtune convert pth_to_hf {checkpoint} {out}"
    )


def _mmbench(rest: list[str]) -> str | None:
    """v0's `mmbench LLM --llava DIR --visual-encoder VIT --data-path TSV` (xtune's model is one LLaVA directory)."""
    llava, tsv = _flag(rest, "--llava"), _flag(rest, "--data-path")
    if llava is None and tsv is None:
        return None
    return (
        f"xtune eval-mmbench {llava or 'LLAVA_DIR'} {tsv or 'MMBench_DEV_EN.tsv'} (the model is one LLaVA directory, "
        "xtune's final/ or a merged LLaVA, which holds its LLM, vision encoder and template)"
    )


def _chat_llava(rest: list[str]) -> str | None:
    """v0's `chat LLM --visual-encoder VIT --llava DIR --image IMG`."""
    llava = _flag(rest, "--llava")
    if llava is None and _flag(rest, "--visual-encoder") is None:
        return None
    image = _flag(rest, "--image") or "IMAGE"
    return f"xtune chat {llava or 'LLAVA_DIR'} --image {image} (a LLaVA directory holds its LLM and vision encoder)"


# v0 spellings whose xtune command depends on their arguments: the line to print, or None where xtune's own
# parser takes them as they are.
COMPUTED = {"convert pth_to_hf": _pth_to_hf, "mmbench": _mmbench, "chat --llava": _chat_llava}


def apply_v0_chat_flags(args) -> None:
    """v0's chat names: --system-template NAME is v0's named system prompt (its text), and --prompt-template takes
    v0's template names, which --template maps to xtune's where they differ."""
    from xtune.config.xtuner_v0 import V0_SYSTEMS, V0_TEMPLATES

    name = getattr(args, "system_template", None)
    if name is not None:
        if name not in V0_SYSTEMS:
            raise XtuneError(f"--system-template {name}: choose one of {', '.join(V0_SYSTEMS)}, or pass --system TEXT")
        if args.system:
            raise XtuneError("--system-template and --system both set the system prompt; pass one of them")
        args.system = V0_SYSTEMS[name]
    if args.template in V0_TEMPLATES and args.template != V0_TEMPLATES[args.template]:
        args.template = V0_TEMPLATES[args.template]


def add_v0_chat_flags(parser) -> None:
    parser.add_argument(
        "--system-template",
        metavar="NAME",
        help="XTuner v0's named system prompt (alpaca, coder, lawyer, medical, sql, colorist, arxiv_gentile)",
    )


def v0_aliases(command: str, name: str | None = None) -> list[str]:
    """XTuner v0's aliases of an xtune verb (`name` None) or of one of its flags (`name` "--flag")."""
    aliases = []
    for spelling, v0 in XTUNER_V0.items():
        verb, _, word = spelling.partition(" ")
        if name is None and not word and v0.alias == command:
            aliases.append(verb)
        elif name is not None and verb == command and v0.alias == name:
            aliases.append(word)
    return aliases


def check_v0_spelling(argv: list[str]) -> None:
    """Stop with the xtune command to use when argv spells one of XTuner v0's verbs or flags that xtune has no alias
    for (the aliases argparse handles itself)."""
    words = [a for a in argv if a not in GLOBAL_FLAGS]
    for spelling, answer in COMPUTED.items():
        verb, _, word = spelling.partition(" ")
        rest = words[1:]
        if words[:1] != [verb] or (word and not word.startswith("-") and rest[:1] != [word]):
            continue
        line = answer(rest[1:] if word and not word.startswith("-") else rest)
        if line:
            raise XtuneError(f"`xtune {spelling}` is XTuner v0's: {line}")
    for spelling, v0 in XTUNER_V0.items():
        if v0.instead is None:
            continue
        verb, _, word = spelling.partition(" ")
        if words[:1] != [verb]:
            continue
        rest = words[1:]
        given = any(a == word or a.startswith(f"{word}=") for a in rest) if word.startswith("-") else rest[:1] == [word]
        if given:
            raise XtuneError(f"`xtune {spelling}` is XTuner v0's: {v0.instead}")


def report_v0_conversion(conversion, verb: str) -> None:
    """What a v0 config's conversion left out, on stderr, one line each."""
    import sys

    print(f"xtune: {verb} XTuner v0 config {conversion.source} (read as data, never run)", file=sys.stderr)
    for item in conversion.unmapped:
        print(f"xtune: not mapped: {conversion.source}: {item}", file=sys.stderr)


def cmd_convert_xtuner_config(args) -> None:
    from pathlib import Path

    from xtune.config.xtuner_v0 import convert_v0_config
    from xtune.io import write_text_atomically

    source = Path(args.config)
    if source.suffix != ".py":
        raise XtuneError(f"convert xtuner-config {source}: name an XTuner v0 config file (.py)")
    out = Path(args.out) if args.out else source.with_suffix(".yaml")
    if out.exists() and not args.force:
        raise XtuneError(f"{out} exists; pass --force to overwrite it, or name another OUT.yaml")
    conversion = convert_v0_config(source)
    report_v0_conversion(conversion, "converted")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, conversion.yaml())
    left = f"; {len(conversion.unmapped)} setting(s) not mapped, listed at its top" if conversion.unmapped else ""
    print(f"wrote {out}{left}")


def add_v0_convert_commands(convert) -> None:
    """`xtune convert xtuner-config`: the v0 config converter, beside convert's other verbs."""
    c = convert.add_parser(
        "xtuner-config",
        help="convert an XTuner v0 .py config to an xtune YAML config (read with ast, never run)",
    )
    c.add_argument("config", help="the XTuner v0 config (.py)")
    c.add_argument("out", nargs="?", help="the YAML to write (default: CONFIG with .yaml)")
    c.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    c.set_defaults(func=cmd_convert_xtuner_config)
