"""XTuner v0's verbs and flags (cli/xtuner_v0.py): each runs as its xtune alias or stops with one line naming the xtune
command to use (exit 2), never with argparse's bare "invalid choice"."""

from __future__ import annotations

import pytest

from xtune.cli import build_parser, main
from xtune.cli.xtuner_v0 import XTUNER_V0, check_v0_spelling
from xtune.errors import XtuneError

from .data.test_preview import GOOD, write_config


def test_check_custom_dataset_runs_check_dataset(tmp_path, capsys):
    config = write_config(tmp_path, [GOOD, GOOD])
    main(["check-custom-dataset", config])
    v0_out = capsys.readouterr().out
    main(["check-dataset", config])
    assert v0_out == capsys.readouterr().out and "usable samples" in v0_out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["mmbench", "model_dir", "bench.tsv"], ["eval-mmbench", "model_dir", "bench.tsv"]),
        (["chat", "model_dir", "--prompt-template", "qwen_chat"], ["chat", "model_dir", "--template", "qwen_chat"]),
        (["chat", "model_dir", "--prompt-template=internlm2_chat"], ["chat", "model_dir", "--template=internlm2_chat"]),
    ],
)
def test_aliases_parse_as_the_xtune_spelling(argv, expected):
    parser = build_parser()
    v0, xtune = vars(parser.parse_args(argv)), vars(parser.parse_args(expected))
    v0.pop("command"), xtune.pop("command")  # the verb as typed; everything else is the same
    assert v0 == xtune


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["convert", "split", "work_dirs/x/iter_500.pth", "out", "--shard-size-gb", "2"],
            "`xtune convert split` is XTuner v0's: xtune writes sharded Hugging Face directories itself; choose the "
            "shard size when merging: xtune convert merge BASE ADAPTER OUT --max-shard-size 2GB",
        ),
        (
            ["--debug", "chat", "model_dir", "--system-template", "alpaca"],
            "`xtune chat --system-template` is XTuner v0's: xtune has no named system prompts; pass the prompt's text "
            "with --system 'You are ...' (the template itself is --template, XTuner's --prompt-template)",
        ),
        (["chat", "model_dir", "--system-template=alpaca"], "`xtune chat --system-template` is XTuner v0's"),
    ],
)
def test_v0_spellings_without_an_alias_name_the_xtune_command(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xtune: error: {message}") and err.count("\n") == 1


def test_every_v0_entry_is_an_alias_or_a_redirect():
    parser = build_parser()
    for spelling, v0 in XTUNER_V0.items():
        assert (v0.alias is None) != (v0.instead is None), spelling
        if v0.alias is not None and " " not in spelling:  # a verb alias: argparse knows it
            assert parser.parse_known_args([spelling, "x", "y"])[0].func.__name__ == f"cmd_{v0.alias.replace('-', '_')}"


def test_v0_words_elsewhere_are_not_redirected():
    # `split` is XTuner's only as convert's sub-verb, `--system-template` only as chat's flag
    check_v0_spelling(["check-dataset", "split"])
    check_v0_spelling(["train", "cfg.yaml", "--set", "evaluation.system=--system-template"])
    with pytest.raises(XtuneError, match="convert split"):
        check_v0_spelling(["--debug", "convert", "split"])
    with pytest.raises(XtuneError, match="is XTuner v0's"):
        check_v0_spelling(["--verbose", "convert", "split"])
