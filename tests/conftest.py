"""Shared fixtures: the tokenizer shipped with xtune, private caches for every test session, one torch thread."""

import contextlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from transformers import AutoTokenizer

TINY_LLAMA = Path(__file__).resolve().parents[1] / "src" / "xtune" / "assets" / "tiny-llama"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE; specials <s> (bos), <|im_end|> (eos), <|endoftext|> (pad), <|im_start|>. Tests that change
    it (chat_template) must do so through monkeypatch."""
    return AutoTokenizer.from_pretrained(TINY_LLAMA)


@pytest.fixture(scope="session", autouse=True)
def _datasets_cache(tmp_path_factory):
    """`datasets.load_dataset` writes Arrow caches; keep them out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _xtune_cache(tmp_path_factory):
    """Tokenized-data caches go to a temporary folder, not the user's ~/.cache/xtune."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XTUNE_CACHE", str(tmp_path_factory.mktemp("xtune_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The tiny test models train fastest on one thread (measured: two threads were several times slower on a
    loaded 2-core machine); subprocesses get OMP_NUM_THREADS=1 from the test helpers that start them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def two_threads():
    """Two torch threads for a fixture that trains in-process for hundreds of steps: there one thread leaves half of
    a 2-core machine idle (100 steps of the tool-use run: 42 s on two threads, 77 s on one). pytest runs the tests
    one at a time, so nothing of the suite competes for the cores meanwhile."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def one_layer_model_dir(tmp_path_factory) -> Path:
    """A complete model directory (weights, config, tokenizer) of the tiny Llama with one layer, random weights:
    for tests that load a model the way users do, without training one. Read-only: copy it to change it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = tmp_path_factory.mktemp("one_layer") / "tiny-llama"
    config = AutoConfig.from_pretrained(TINY_LLAMA)
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    AutoTokenizer.from_pretrained(TINY_LLAMA).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def save_trained_adapter():
    """save(base, base_dir, adapter_dir, template, config_yaml): a rank-4 LoRA adapter on every linear layer of `base`
    (a model saved in base_dir with its tokenizer) with random non-zero B, so that merging it changes the weights,
    saved the way training saves final/: the tokenizer with the chat template, and xtune_config.yaml."""
    from peft import LoraConfig, get_peft_model

    from xtune.templates import get_template

    def save(base, base_dir: Path, adapter_dir: Path, template: str, config_yaml: str) -> None:
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
        model.peft_config["default"].base_model_name_or_path = str(base_dir)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        model.save_pretrained(adapter_dir)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        tokenizer.chat_template = get_template(template).to_jinja()
        tokenizer.save_pretrained(adapter_dir)
        (adapter_dir / "xtune_config.yaml").write_text(config_yaml)

    return save


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xtune_cache")


@pytest.fixture(scope="session")
def xtune_env(cache_dir) -> dict[str, str]:
    """Environment for `python -m xtune.cli` subprocesses. One thread: the tiny model gains nothing from more, and
    on a busy machine OpenMP threads spinning against other processes make runs several times slower."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", XTUNE_CACHE=str(cache_dir))
    env["HF_DATASETS_CACHE"] = str(cache_dir / "hf_datasets")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="session")
def xtune_cmd() -> list[str]:
    return [sys.executable, "-m", "xtune.cli"]


# --- models trained once per session: their own tests check that they learned; the server's tests talk to them ---

TRAIN_RECORDS = 4000
# Measured: a 4-layer, 256-wide model copies the numbers into its calls for 40/40 held-out questions after 700
# steps, but copies the tool's result into its answer for only 34/40 (two threads); after 900 steps, 40/40 and 40/40.
# 600 steps at lr 2e-3 gave 40/40 calls but 0/40 answers. A 128-wide one needed 1500 steps for 36/40 calls.
WORD_PROBLEMS = [  # (question, expression): the numbers must go from the question into the call
    ("Tom has {a} apples and buys {b} more. How many apples does he have?", "{a} + {b}"),
    ("A box holds {a} pens. How many pens are in {b} boxes?", "{a} * {b}"),
    ("Lily had {a} stickers and gave {b} away. How many are left?", "{a} - {b}"),
    ("A train travels {a} km each hour for {b} hours. How far does it go?", "{a} * {b}"),
]


def problem(rng: random.Random) -> tuple[str, str, dict]:
    """(question, tool, arguments)."""
    if rng.random() < 0.25:
        p, x, q = rng.randint(2, 9), rng.randint(2, 30), rng.randint(1, 50)
        return f"Solve {p}*x + {q} = {p * x + q}.", "solve", {"equation": f"{p}*x + {q} = {p * x + q}"}
    question, expression = rng.choice(WORD_PROBLEMS)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if expression.startswith("{a} - "):
        a, b = max(a, b), min(a, b)
    return question.format(a=a, b=b), "calculate", {"expression": expression.format(a=a, b=b)}


def record(question: str, tool: str, arguments: dict, registry) -> dict:
    result = registry.call(tool, arguments)
    assert result.ok, result.text
    call = {"type": "function", "function": {"name": tool, "arguments": json.dumps(arguments)}}
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": result.text},
            {"role": "assistant", "content": f"The answer is {result.text}."},
        ]
    }


@pytest.fixture(scope="session")
def tool_use_model(tmp_path_factory):
    """The tool-use model of tests/chat/test_agent_learning.py (see its docstring), fine-tuned once per session: the
    agent tests and the server's tests talk to it: (recipe, final dir, registry, held-out (question, tool, args))."""
    from xtune.assets import resolve_path
    from xtune.chat.tools import build_registry
    from xtune.config.schema import validate_config
    from xtune.train.recipe import FinetuneRecipe

    root = tmp_path_factory.mktemp("agent")
    registry = build_registry(["calculate", "solve"])
    rng = random.Random(0)
    held_out: list[tuple[str, str, dict]] = []
    while len(held_out) < 40:
        candidate = problem(rng)
        if candidate[0] not in {q for q, _, _ in held_out}:
            held_out.append(candidate)
    unseen = {q for q, _, _ in held_out}
    train = [p for p in (problem(rng) for _ in range(TRAIN_RECORDS + 200)) if p[0] not in unseen][:TRAIN_RECORDS]
    data = root / "tool_use.jsonl"
    data.write_text("".join(json.dumps(record(*p, registry)) + "\n" for p in train), encoding="utf-8")

    model_dir = root / "tiny-agent"  # the built-in tokenizer with a smaller, faster model
    shutil.copytree(resolve_path("builtin:tiny-llama"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_size=256, intermediate_size=768, head_dim=32, num_attention_heads=8, num_key_value_heads=4)
    (model_dir / "config.json").write_text(json.dumps(config))

    cfg = validate_config(
        {
            "model": {"path": str(model_dir), "method": "full", "random_init": True},
            "data": {
                "datasets": [{"path": str(data), "format": "openai"}],
                "template": "qwen_chat",
                "system": "",  # no default system prompt: shorter rows
                "max_length": 192,
                "cache": False,
            },
            "training": {
                "max_steps": 900,
                "batch_size": 16,
                "gradient_accumulation": 1,
                "lr": 1e-3,
                "warmup_ratio": 0.05,
                "mixed_precision": "fp32",
                "log_every": 50,
                "compile": True,  # the compiled path learns as eager does, and the steps take less CI time
            },
            "saving": {"save_steps": 10_000},
            "evaluation": {"tools": ["calculate", "solve"], "list_tools": False, "system": "", "max_new_tokens": 128},
        }
    )
    recipe = FinetuneRecipe(cfg, root / "work")
    with two_threads():
        recipe.setup()
        assert recipe.data.truncated == 0  # a cut sample would not teach the final answer
        final = recipe.train()
    return recipe, final, registry, held_out


def train_tiny_llava(stage: str, root: Path, data: Path, **model):
    from xtune.config.presets import get_preset
    from xtune.config.schema import validate_config
    from xtune.multimodal.train import task_for
    from xtune.train.recipe import FinetuneRecipe

    raw = get_preset(f"tiny_llava_{stage}")
    for dataset in raw["data"]["datasets"]:
        dataset.update(path=str(data / Path(dataset["path"]).name), image_folder=str(data))
    raw["data"]["cache_dir"] = str(root / "cache")
    raw["model"]["vision"].update(model)
    cfg = validate_config(raw)
    recipe = FinetuneRecipe(cfg, root / stage, device=torch.device("cpu"), task=task_for(cfg))
    recipe.setup()
    recipe.final = recipe.train()
    return recipe


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """The coloured-shapes LLaVA of tests/multimodal/test_learning.py: stage 1 (projector) and stage 2 (LoRA),
    trained once per session. root, data (the shapes dataset), stage1, stage2 (recipes; .final), heldout records."""
    from xtune.multimodal.shapes import write_dataset

    root = tmp_path_factory.mktemp("llava")
    data = root / "shapes"
    write_dataset(data)
    with two_threads():
        stage1 = train_tiny_llava("pretrain", root, data)
        stage2 = train_tiny_llava("lora_finetune", root, data, projector_path=str(stage1.final))
    heldout = [json.loads(line) for line in (data / "heldout.jsonl").read_text().splitlines()]
    return SimpleNamespace(root=root, data=data, stage1=stage1, stage2=stage2, heldout=heldout)
