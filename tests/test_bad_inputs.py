"""The bad-input corpus: each case gives the CLI a broken file or flag and expects one exact error line, the exit
status, no traceback, and nothing written: no work dir, no tokenized-data cache, nothing in the current directory.

Every case runs `xtune.cli.main` in this process and fails before a model would load (loading one fails the
case), so the whole table takes seconds. Placeholders in argv and expected lines: {inputs} (the folder of the
case's files), {data} (its data file), {work} (the --work-dir).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xtune.assets import resolve_path
from xtune.cli import main

PRESET = "tiny_assistant_lora"
ANSWERED = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
NO_ASSISTANT = {"messages": [{"role": "user", "content": "Anyone there?"}]}
ORPHAN_RESULT = {
    "messages": [
        {"role": "user", "content": "6 times 7?"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
}
MISSING_OUTPUT = {"instruction": "Say hi"}
QUOTED_LOSS_FLAG = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Wrong answer.", "loss": "false"},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "Hello!"},
    ]
}

PREVIOUS_RUN = {  # what a finished run leaves (contents abridged)
    "run/checkpoint-3/manifest.json": b"{}",
    "run/checkpoint-6/manifest.json": b"{}",
    "run/final/adapter_config.json": b"{}",
    "run/metrics.jsonl": b'{"step": 1, "loss": 2.5}\n',
    "run/train.log": b"...",
}


def jsonl(*records: dict) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


ANSWERED_LINE = jsonl(ANSWERED)
LATIN1_PREFIX = b'{"messages": [{"role": "user", "content": "caf'
UTF8_FIX = (
    "data files must be UTF-8 text; re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or fix "
    "data.datasets[].path if it names the wrong file"
)
NO_RECORDS_FIX = (
    "data.datasets[].path must name a file of records (`xtune list-dataset-format` shows an example record of each "
    "format)"
)
MODEL_FIX = (
    "a Hugging Face model directory holds config.json, the tokenizer files and the weights; copy or download the "
    "model again, or point model.path (or the MODEL argument) at another directory"
)
ORPHAN_PROBLEM = (
    "messages[1] is a tool result that answers no call; add the call to the tool_calls of the assistant message "
    "before it, or remove the result (format 'openai', keys present: messages). Fix the record or choose the format "
    "that matches your data (`xtune list-dataset-format`)."
)
QUOTED_LOSS_PROBLEM = (
    "messages[1].loss must be true or false (a JSON boolean), got 'false' (format 'openai', keys present: messages). "
    "Fix the record or choose the format that matches your data (`xtune list-dataset-format`)."
)
MISSING_OUTPUT_PROBLEM = (
    "missing key 'output' (format 'alpaca', keys present: instruction). Fix the record or choose the format that "
    "matches your data (`xtune list-dataset-format`)."
)
NOTHING_TO_TRAIN = (
    "{data}: no record has anything to train (no assistant turn: 3); check that data.datasets[].format matches the "
    "records (`xtune check-dataset` lists the records with file:line)"
)
DPO = ("--set", "training.objective=dpo")
PROMPTS_DIFFER = {
    "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    "rejected": [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "No"}],
}
PROMPTS_DIFFER_PROBLEM = (
    "chosen and rejected differ at message 0, before their final assistant turns: a pair shares its prompt and "
    "differs only in the last reply (format 'preference_conversations', keys present: chosen, rejected). Fix the "
    "record or choose the format that matches your data (`xtune list-dataset-format`)."
)
HH_PROBLEM = (
    "key 'chosen' must be '\\n\\nHuman: ...\\n\\nAssistant: ...' turns (format 'hh_rlhf', keys present: chosen, "
    "rejected). Fix the record or choose the format that matches your data (`xtune list-dataset-format`)."
)
KTO = ("--set", "training.objective=kto")
KTO_REPLY = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
KTO_FIX = (
    "(format 'kto', keys present: messages, label). Fix the record or choose the format that matches your data "
    "(`xtune list-dataset-format`)."
)
KTO_QUOTED_LABEL = f"key 'label' must be true or false (a JSON boolean), got 'yes' {KTO_FIX}"
KTO_NO_LABEL = f"missing key 'label': true if the final reply is desirable, false if not {KTO_FIX}"
CHECK_FAILED = "xtune: error: {n} problem(s) that stop training; see the lines starting with 'error:' above"


@dataclass
class Case:
    id: str
    argv: list[str]
    err: str  # the exact last line of stderr
    files: dict[str, bytes] = field(default_factory=dict)  # written under {inputs}; a name ending in / is a folder
    code: int = 2
    out: list[str] = field(default_factory=list)  # exact lines stdout must hold, in this order
    data: str = "d.jsonl"  # {data}: the data file under {inputs}


def datasets_override(name: str, fmt: str) -> str:
    return f'data.datasets=[{{"path": "{{inputs}}/{name}", "format": "{fmt}"}}]'


def data_cases(id: str, name: str, content: bytes | None, err: str, fmt: str = "openai") -> list[Case]:
    """A bad data file (None: none there) is reported the same way by check-dataset and by train."""
    files = {name: content} if content is not None else {}
    check = ["check-dataset", PRESET, "--set", datasets_override(name, fmt)]
    train = ["train", PRESET, "--work-dir", "{work}", "--set", datasets_override(name, fmt)]
    return [Case(f"{id}-check", check, err, files, data=name), Case(f"{id}-train", train, err, files, data=name)]


def record_cases(
    id: str,
    content: bytes,
    train_err: str,
    check_errors: int,
    check_out: list[str],
    fmt: str = "openai",
    extra: tuple[str, ...] = (),
) -> list[Case]:
    """Bad records: training stops at the first (or refuses the dataset); check-dataset lists them on stdout and
    fails, counting `check_errors` problems. `extra`: more arguments for both commands."""
    check = ["check-dataset", PRESET, *extra, "--set", datasets_override("d.jsonl", fmt)]
    train = ["train", PRESET, "--work-dir", "{work}", *extra, "--set", datasets_override("d.jsonl", fmt)]
    return [
        Case(f"{id}-check", check, CHECK_FAILED.format(n=check_errors), {"d.jsonl": content}, out=check_out),
        Case(f"{id}-train", train, train_err, {"d.jsonl": content}),
    ]


CASES = [
    # 1. binary garbage or a non-UTF-8 byte: file, line and byte offset
    *data_cases(
        "non-utf8-jsonl",
        "d.jsonl",
        ANSWERED_LINE + LATIN1_PREFIX + b'\xe9"}]}\n',  # "café" in Latin-1
        f"xtune: error: {{data}}:2: byte offset {len(ANSWERED_LINE + LATIN1_PREFIX)} (0xe9) is not UTF-8: {UTF8_FIX}",
    ),
    *data_cases(
        "binary-json",
        "d.json",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        f"xtune: error: {{data}}:1: byte offset 0 (0x89) is not UTF-8: {UTF8_FIX}",
    ),
    *data_cases(
        "latin1-csv",
        "d.csv",
        b"prompt,response\nhi,hello\nbye,adi\xf3s\n",
        f"xtune: error: {{data}}:3: byte offset 32 (0xf3) is not UTF-8: {UTF8_FIX}",
        fmt="prompt_response",
    ),
    # 2. no records at all
    *data_cases("empty-jsonl", "d.jsonl", b"", f"xtune: error: {{data}}: the file is empty; {NO_RECORDS_FIX}"),
    *data_cases(
        "whitespace-json",
        "d.json",
        b"  \n\t\n\n",
        f"xtune: error: {{data}}: the file is only whitespace; {NO_RECORDS_FIX}",
    ),
    *data_cases(
        "empty-array-json",
        "d.json",
        b"[]\n",
        f"xtune: error: {{data}}: an empty JSON array, no records; {NO_RECORDS_FIX}",
    ),
    *data_cases(
        "header-only-csv",
        "d.csv",
        b"prompt,response\n",
        f"xtune: error: {{data}}: a header line and no records; {NO_RECORDS_FIX}",
        fmt="prompt_response",
    ),
    *data_cases(
        "missing-data-file",
        "d.jsonl",
        None,
        "xtune: error: data file {data} does not exist; check data.datasets[].path in your config",
    ),
    # 3. bad YAML in an override
    Case(
        "bad-yaml-override",
        ["check-dataset", PRESET, "--set", "data.datasets=[{"],
        "xtune: error: --set 'data.datasets=[{': the value '[{' is not valid YAML (expected the node content, but "
        "found '<stream end>' at column 3); close its brackets and quotes, or quote a plain string: "
        "--set 'data.datasets=\"...\"'",
    ),
    Case(
        "bad-yaml-config",
        ["train", "{inputs}/config.yaml", "--work-dir", "{work}"],
        "xtune: error: {inputs}/config.yaml:4: not valid YAML: expected the node content, but found '<stream end>' "
        "(column 1)",
        {"config.yaml": b"model:\n  path: builtin:tiny-llama\ndata: {datasets: [\n"},
    ),
    Case(
        "missing-config",
        ["train", "{inputs}/nope.yaml", "--work-dir", "{work}"],
        "xtune: error: cannot read config {inputs}/nope.yaml: No such file or directory",
    ),
    # 4. a broken model directory
    *[
        Case(
            f"empty-model-dir-{command}",
            [command, PRESET, *extra, "--set", "model.path={inputs}/model"],
            f"xtune: error: model directory {{inputs}}/model is empty: {MODEL_FIX}",
            {"model/": b""},
        )
        for command, extra in (("check-dataset", []), ("train", ["--work-dir", "{work}"]))
    ],
    Case(
        "model-config-not-json",
        ["train", PRESET, "--work-dir", "{work}", "--set", "model.path={inputs}/model"],
        "xtune: error: {inputs}/model/config.json:1: not valid JSON (Expecting property name enclosed in double "
        "quotes); copy or download the model again, or point model.path (or the MODEL argument) at another directory",
        {"model/config.json": b'{"model_type": "llama",,}', "model/tokenizer.json": b"{}"},
    ),
    Case(
        "model-without-tokenizer",
        ["check-dataset", PRESET, "--set", "model.path={inputs}/model"],
        "xtune: error: model directory {inputs}/model has no tokenizer files (tokenizer.json, tokenizer_config.json, "
        f"tokenizer.model, vocab.json, vocab.txt): {MODEL_FIX}",
        {"model/config.json": b'{"model_type": "llama"}'},
    ),
    Case(
        "model-without-weights",
        ["chat", "builtin:tiny-llama", "--prompt", "hi"],
        "xtune: error: model directory {tiny_llama} has no weights (model.safetensors, pytorch_model.bin, or their "
        f"shards and index): {MODEL_FIX}",
    ),
    Case(
        "serve-without-a-slot",
        ["serve", "builtin:tiny-llama", "--max-queue", "0"],
        "xtune: error: --max-queue 0: admit at least 1 request",
    ),
    # 5. a work dir that is a file
    Case(
        "work-dir-is-a-file",
        ["train", PRESET, "--work-dir", "{inputs}/work.txt"],
        "xtune: error: --work-dir {inputs}/work.txt is a file, not a directory; choose another directory with "
        "--work-dir DIR",
        {"work.txt": b"notes"},
    ),
    Case(
        "work-dir-under-a-file",
        ["train", PRESET, "--work-dir", "{inputs}/work.txt/run1"],
        "xtune: error: --work-dir {inputs}/work.txt/run1: {inputs}/work.txt is a file, not a directory; choose "
        "another directory with --work-dir DIR",
        {"work.txt": b"notes"},
    ),
    Case(
        "copy-cfg-into-a-file",
        ["copy-cfg", PRESET, "{inputs}/work.txt"],
        "xtune: error: copy-cfg DIR {inputs}/work.txt is a file, not a directory; name a directory to write the copy "
        "into",
        {"work.txt": b"notes"},
    ),
    # a second run into a work dir that holds one: refused before the data is read, the earlier run untouched
    Case(
        "work-dir-holds-a-run",
        ["train", PRESET, "--work-dir", "{inputs}/run"],
        "xtune: error: {inputs}/run already holds a run (checkpoint-6, final, metrics.jsonl); pass --resume to "
        "continue it, --overwrite to replace it, or --work-dir to train somewhere else",
        PREVIOUS_RUN,
    ),
    Case(
        "resume-and-overwrite",
        ["train", PRESET, "--work-dir", "{inputs}/run", "--resume", "--overwrite"],
        "xtune: error: --resume continues the run in the work dir and --overwrite replaces it; pass one of them",
        PREVIOUS_RUN,
    ),
    # 6. records with nothing to train, and tool results that answer no call
    *record_cases(
        "no-assistant-turn-anywhere",
        jsonl(NO_ASSISTANT, NO_ASSISTANT, NO_ASSISTANT),
        "xtune: error: " + NOTHING_TO_TRAIN,
        1,
        [
            *[f"skipped: {{data}}:{n}: no assistant turn; training skips this record" for n in (1, 2, 3)],
            "error: " + NOTHING_TO_TRAIN,
        ],
    ),
    *record_cases(
        "tool-result-answers-no-call",
        ANSWERED_LINE + jsonl(ORPHAN_RESULT, ANSWERED, NO_ASSISTANT),
        f"xtune: error: {{data}}:2: {ORPHAN_PROBLEM}",
        1,
        [f"error: {{data}}:2: {ORPHAN_PROBLEM}", "skipped: {data}:4: no assistant turn; training skips this record"],
    ),
    # a quoted flag: bool("false") is True, so the turn it was meant to hide would be trained
    *record_cases(
        "loss-flag-as-a-string",
        ANSWERED_LINE + jsonl(QUOTED_LOSS_FLAG),
        f"xtune: error: {{data}}:2: {QUOTED_LOSS_PROBLEM}",
        1,
        [f"error: {{data}}:2: {QUOTED_LOSS_PROBLEM}"],
    ),
    # 7. a thousand records with one problem: ten listed, the rest counted
    *record_cases(
        "one-problem-1000-times",
        jsonl(*[MISSING_OUTPUT] * 1000),
        f"xtune: error: {{data}}:1: {MISSING_OUTPUT_PROBLEM}",
        1000,
        [
            *[f"error: {{data}}:{n}: {MISSING_OUTPUT_PROBLEM}" for n in range(1, 11)],
            "error: ... and 990 more like it; first at {data}:11",
        ],
        fmt="alpaca",
    ),
    # 8. --resume that cannot be honoured: nothing is loaded or written (a damaged checkpoint's fallback and a
    # damaged work dir are tests/train/test_checkpoint.py's)
    Case(
        "resume-without-a-checkpoint",
        ["train", PRESET, "--work-dir", "{work}", "--resume"],
        "xtune: error: --resume: {work} has no checkpoint; run without --resume to start again, or pass --resume "
        "auto to resume where a checkpoint exists and start otherwise",
    ),
    Case(
        "resume-from-a-missing-checkpoint",
        ["train", PRESET, "--work-dir", "{work}", "--resume", "{inputs}/checkpoint-5"],
        "xtune: error: --resume {inputs}/checkpoint-5: no such checkpoint directory; `--resume` alone takes the "
        "newest one",
    ),
    Case(
        "resume-from-an-unfinished-checkpoint",
        ["train", PRESET, "--work-dir", "{work}", "--resume", "{inputs}/checkpoint-5"],
        "xtune: error: --resume {inputs}/checkpoint-5: cannot resume from it: no manifest.json (an unfinished "
        "write, or a checkpoint of an older xtune)",
        {"checkpoint-5/trainer_state.json": b'{"step": 5}'},
    ),
    Case(
        "llava-stage-2-without-stage-1",
        [
            "train",
            "tiny_llava_lora_finetune",
            "--work-dir",
            "{work}",
            "--set",
            "model.vision.projector_path={inputs}/nope",
        ],
        "xtune: error: model.vision.projector_path: {inputs}/nope does not exist; point it at stage 1's output (final)",
    ),
    # 9. XTuner v0's configs and names
    Case(
        "v0-config-not-python",
        ["train", "{inputs}/v0.py", "--work-dir", "{work}"],
        "xtune: error: {inputs}/v0.py:2: not valid Python: '(' was never closed",
        {"v0.py": b"lr = 2e-4\nmodel = dict(\n"},
    ),
    Case(
        "v0-config-without-model",
        ["check-custom-dataset", "{inputs}/v0.py"],
        "xtune: error: {inputs}/v0.py: cannot convert this XTuner v0 config: model: no model = dict(...) found; "
        "train_dataloader: no train_dataloader = dict(...) found",
        {"v0.py": b"lr = 2e-4\n"},
    ),
    Case(
        "v0-convert-not-python",
        ["convert", "xtuner-config", "{inputs}/c.yaml", "{inputs}/out.yaml"],
        "xtune: error: convert xtuner-config {inputs}/c.yaml: name an XTuner v0 config file (.py)",
        {"c.yaml": b"model: {path: x}\n"},
    ),
    Case(
        "v0-family-missing",
        ["train", "chatglm2_6b_qlora_alpaca_e3", "--work-dir", "{work}"],
        "xtune: error: 'chatglm2_6b_qlora_alpaca_e3' is neither a config file nor a preset name. XTuner v0's "
        "chatglm2_6b family has no xtune preset: ChatGLM2's '[Round N]' prompt format is not an xtune template yet "
        "(ChatGLM3 is: chatglm3_6b). Did you mean: chatglm3_6b_qlora_alpaca_e3, chatglm3_6b_lora_alpaca_e3, "
        "chatglm3_6b_qlora_alpaca_zh_e3?",
    ),
    # 10. GGUF export and lm-eval that cannot be done: refused before any model loads
    Case(
        "gguf-unknown-type",
        ["convert", "gguf", "{tiny_llama}", "{inputs}/m.gguf", "--type", "q4_k_m"],
        "xtune: error: --type q4_k_m: choose one of f32, f16, bf16, q8_0",
    ),
    Case(
        "gguf-out-not-a-gguf-file",
        ["convert", "gguf", "{tiny_llama}", "{inputs}/out"],
        "xtune: error: convert gguf OUT {inputs}/out: name a .gguf file, e.g. {inputs}/out.gguf",
    ),
    Case(
        "gguf-unsupported-architecture",
        ["convert", "gguf", "{inputs}/phi", "{inputs}/m.gguf"],
        "xtune: error: {inputs}/phi: GGUF export does not support the 'phi3' architecture; it supports llama, "
        "mistral, qwen2, qwen3, gemma, internlm2. Merge it (`xtune convert merge`) and use llama.cpp's own "
        "convert_hf_to_gguf.py",
        {"phi/config.json": b'{"model_type": "phi3"}'},
    ),
    Case(
        "eval-missing-task-file",
        ["eval", "{tiny_llama}", "--tasks", "xtune_tiny,{inputs}/mmlu.yaml"],
        "xtune: error: --tasks {inputs}/mmlu.yaml: no such task file {inputs}/mmlu.yaml",
    ),
    # 12. preference pairs: a pair whose conversations do not share their prompt; data that does not suit the objective
    *record_cases(
        "pair-prompts-differ",
        jsonl(PROMPTS_DIFFER),
        f"xtune: error: {{data}}:1: {PROMPTS_DIFFER_PROBLEM}",
        1,
        [f"error: {{data}}:1: {PROMPTS_DIFFER_PROBLEM}"],
        fmt="preference_conversations",
        extra=DPO,
    ),
    *record_cases(
        "hh-rlhf-not-turns",
        jsonl({"chosen": "Hi there", "rejected": "Bye"}),
        f"xtune: error: {{data}}:1: {HH_PROBLEM}",
        1,
        [f"error: {{data}}:1: {HH_PROBLEM}"],
        fmt="hh_rlhf",
        extra=DPO,
    ),
    Case(
        "pairs-with-objective-sft",
        ["train", PRESET, "--work-dir", "{work}", "--set", datasets_override("d.jsonl", "preference")],
        "xtune: error: training.objective sft trains on single conversations but the datasets hold preference pairs; "
        "set training.objective to one of dpo, ipo, hinge, simpo, orpo, reward",
        {"d.jsonl": jsonl({"prompt": "Hi", "chosen": "Hello!", "rejected": "What?"})},
    ),
    Case(
        "conversations-with-objective-dpo",
        ["train", PRESET, "--work-dir", "{work}", "--set", "training.objective=dpo"],
        "xtune: error: training.objective dpo trains on preference pairs but the datasets hold single conversations; "
        "use a preference format (preference, preference_conversations, hh_rlhf) or set training.objective: sft",
    ),
    # KTO's samples: a label that is not a JSON boolean, or none; labelled data for another objective
    *record_cases(
        "kto-label-not-boolean",
        jsonl({**KTO_REPLY, "label": True}, {**KTO_REPLY, "label": "yes"}, KTO_REPLY),
        f"xtune: error: {{data}}:2: {KTO_QUOTED_LABEL}",
        2,
        [f"error: {{data}}:2: {KTO_QUOTED_LABEL}", f"error: {{data}}:3: {KTO_NO_LABEL}"],
        fmt="kto",
        extra=KTO,
    ),
    Case(
        "labelled-replies-with-objective-dpo",
        ["train", PRESET, "--work-dir", "{work}", *DPO, "--set", datasets_override("d.jsonl", "kto")],
        "xtune: error: training.objective dpo trains on preference pairs but the datasets hold labelled replies; use "
        "a preference format (preference, preference_conversations, hh_rlhf) or set training.objective: kto",
        {"d.jsonl": jsonl({**KTO_REPLY, "label": True})},
    ),
    # 11. causes that used to escape as tracebacks
    Case(
        "log-dataset-count-0",
        ["log-dataset", PRESET, "--count", "0"],
        "xtune: error: --count 0: show at least 1 sample",
    ),
    # 13. sequence parallelism the processes cannot hold
    Case(
        "sequence-parallel-without-processes",
        ["train", PRESET, "--work-dir", "{work}", "--sequence-parallel", "2"],
        "xtune: error: training.sequence_parallel 2: 1 process(es) do not split into groups of 2; run a multiple of 2 "
        "processes (--nproc-per-node) or set a sequence_parallel that divides 1",
    ),
    Case(
        "sequence-parallel-0",
        ["train", PRESET, "--work-dir", "{work}", "--sequence-parallel", "0"],
        "xtune: error: --sequence-parallel 0: N is how many processes share each sequence, 1 or more",
    ),
]
assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A fresh tokenized-data cache and current directory inside tmp_path, so that a snapshot of tmp_path sees
    anything a case writes; and no model may load."""
    monkeypatch.setenv("XTUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    def no_model(*args, **kwargs):
        raise AssertionError("a bad-input case loaded a model")

    import xtune.train.task

    monkeypatch.setattr(xtune.train.task, "load_base_model", no_model)
    monkeypatch.setattr(xtune.train.task, "save_random_init", no_model)
    return tmp_path


def fill(text: str, tmp_path: Path, case: Case) -> str:
    """The placeholders filled in; str.format would trip over the braces of the JSON and YAML in the text."""
    inputs = tmp_path / "inputs"
    values = {"inputs": inputs, "data": inputs / case.data, "work": tmp_path / "work"}
    values["tiny_llama"] = resolve_path("builtin:tiny-llama")
    for name, value in values.items():
        text = text.replace(f"{{{name}}}", str(value))
    return text


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_gives_one_line_and_writes_nothing(case, sandbox, capsys):
    inputs = sandbox / "inputs"
    inputs.mkdir()
    for name, content in case.files.items():
        path = inputs / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    argv = [fill(arg, sandbox, case) for arg in case.argv]
    before = snapshot(sandbox)

    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    captured = capsys.readouterr()
    assert exit_info.value.code == case.code, captured.err
    assert "Traceback" not in captured.err
    err_lines = [line for line in captured.err.splitlines() if line.startswith("xtune: ")]
    assert err_lines == [fill(case.err, sandbox, case)]
    # check-dataset's list of records, exactly: a problem shared by 1,000 records is not listed 1,000 times
    listed = [line for line in captured.out.splitlines() if line.startswith(("error: ", "skipped: "))]
    assert listed == [fill(line, sandbox, case) for line in case.out]
    assert snapshot(sandbox) == before  # no work dir, no cache entry, nothing in the current directory


def test_a_bug_prints_one_line_with_its_type_and_exits_1(sandbox, capsys, monkeypatch):
    import xtune.config

    def broken(*args, **kwargs):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(xtune.config, "list_presets", broken)
    with pytest.raises(SystemExit) as exit_info:
        main(["list-cfg"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.splitlines() == [
        "xtune: error: RuntimeError: something unexpected (rerun with --debug for the traceback)"
    ]


@pytest.mark.parametrize("argv", [["--debug", "list-cfg"], ["list-cfg", "--debug"]], ids=["before", "after"])
def test_debug_adds_the_traceback(sandbox, capsys, monkeypatch, argv):
    import xtune.config

    def broken(*args, **kwargs):
        raise RuntimeError("something unexpected")

    monkeypatch.setattr(xtune.config, "list_presets", broken)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.startswith("Traceback (most recent call last):") and "in broken" in err
    assert err.splitlines()[-1] == "xtune: error: RuntimeError: something unexpected"


def test_debug_shows_where_a_user_error_came_from_and_keeps_its_exit_status(sandbox, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--debug", "list-cfg", "-p", "no-such-preset"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" in err and "XtuneError" in err
    assert err.splitlines()[-1] == "xtune: error: no preset matches 'no-such-preset'; `xtune list-cfg` lists all"


def test_a_reader_that_stops_early_is_no_error(xtune_cmd, xtune_env):
    """`xtune list-cfg | head -1`: the output pipe closes before xtune writes; no error line, SIGPIPE's status."""
    import subprocess

    process = subprocess.Popen(
        [*xtune_cmd, "list-cfg"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=xtune_env, text=True
    )
    process.stdout.close()  # before the process has written anything: its first write finds no reader
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141, stderr
    assert stderr == ""
