"""XTuner v0's verbs and flags, as a user coming from it types them: each runs as its xtune alias or stops with one
line naming the xtune command to use."""

from __future__ import annotations

from dataclasses import dataclass

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
    "chat --system-template": _V0(
        instead="xtune has no named system prompts; pass the prompt's text with --system 'You are ...' "
        "(the template itself is --template, XTuner's --prompt-template)"
    ),
    "convert split": _V0(
        instead="xtune writes sharded Hugging Face directories itself; choose the shard size when merging: "
        "xtune convert merge BASE ADAPTER OUT --max-shard-size 2GB"
    ),
}


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
