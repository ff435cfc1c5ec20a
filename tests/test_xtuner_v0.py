"""XTuner v0's verbs and flags (cli/xtuner_v0.py): each runs as its xtune alias or stops with one line naming the xtune
command to use (exit 2), never with argparse's bare "invalid choice"."""

from __future__ import annotations

import pytest

from xtune.cli import build_parser, main
from xtune.cli.xtuner_v0 import XTUNER_V0, apply_v0_chat_flags, check_v0_spelling
from xtune.config.xtuner_v0 import V0_SYSTEMS
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
            ["convert", "pth_to_hf", "my_cfg.py", "work_dirs/my_cfg/iter_500.pth", "./hf"],
            "`xtune convert pth_to_hf` is XTuner v0's: xtune's training already writes work_dirs/my_cfg/final as a "
            "Hugging Face directory (a PEFT adapter for LoRA/QLoRA), so there is nothing to convert; for a checkpoint: "
            "xtune convert pth_to_hf work_dirs/my_cfg/checkpoint-500 ./hf",
        ),
        (
            ["convert", "pth_to_hf", "work_dirs/my_cfg/iter_40.pth", "./hf"],
            "`xtune convert pth_to_hf` is XTuner v0's: xtune's training already writes work_dirs/my_cfg/final as a "
            "Hugging Face directory (a PEFT adapter for LoRA/QLoRA), so there is nothing to convert; for a checkpoint: "
            "xtune convert pth_to_hf work_dirs/my_cfg/checkpoint-40 ./hf",
        ),
        (
            ["--debug", "mmbench", "internlm2", "--llava", "./llava", "--visual-encoder", "clip", "--data-path=mm.tsv"],
            "`xtune mmbench` is XTuner v0's: xtune eval-mmbench ./llava mm.tsv (the model is one LLaVA directory, "
            "xtune's final/ or a merged LLaVA, which holds its LLM, vision encoder and template)",
        ),
        (
            ["chat", "internlm2", "--visual-encoder", "clip", "--llava", "./llava", "--image", "cat.png"],
            "`xtune chat --llava` is XTuner v0's: xtune chat ./llava --image cat.png (a LLaVA directory holds its LLM "
            "and vision encoder)",
        ),
        (
            ["chat", "model_dir", "--system-template", "poet"],
            "--system-template poet: choose one of alpaca, arxiv_gentile, colorist, coder, lawyer, medical, sql, or "
            "pass --system TEXT",
        ),
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


def test_course_chat_flags_take_v0_names():
    """`xtuner chat MODEL --adapter DIR --prompt-template NAME --system-template NAME --bits 4`, as the course types
    it: v0's template names become xtune's, and the named system prompt its text."""
    args = build_parser().parse_args(
        [
            "chat",
            "base",
            "--adapter",
            "work_dirs/x/final",
            "--prompt-template",
            "wizardlm",
            "--system-template",
            "sql",
            "--bits",
            "4",
        ]
    )
    apply_v0_chat_flags(args)
    assert (args.model, args.adapter, args.bits, args.template) == ("base", "work_dirs/x/final", 4, "vicuna")
    assert args.system == V0_SYSTEMS["sql"] and args.system.startswith("If you are an expert in SQL")


def test_dataset_commands_read_a_v0_config(tmp_path, capsys, one_layer_model_dir):
    """check-custom-dataset and log-dataset take the v0 config as xtuner did, converted as it is read."""
    from .config.test_xtuner_v0_convert import v0_config

    data = tmp_path / "data.json"
    data.write_text('[{"instruction": "Say hi", "output": "hi"}]', encoding="utf-8")
    config = v0_config(tmp_path, quantization="", model_path=str(one_layer_model_dir))
    config.write_text(config.read_text().replace("./data/alpaca.json", str(data)), encoding="utf-8")
    main(["check-custom-dataset", str(config)])
    assert "usable samples" in capsys.readouterr().out
    main(["log-dataset", str(config), "--format", "json"])
    assert "Say hi" in capsys.readouterr().out
